"""Training (geoloc_train.train): the losses on hand-checkable cases, the
pair sampler on the real NAIP rasters (training region only, positives
turned to the view's heading as the map builder turns its tiles), and short
runs that must be deterministic for a seed and export a model the C engine
loads."""

import hashlib
import math
import os
import subprocess
import tempfile
import unittest

import numpy as np
import torch

from _common import REPO
from geoloc_train import model as M
from geoloc_train import train as T
from geoloc_train import views as V
from geoloc_train import xtime as X

NAIP = os.path.join(REPO, "data", "naip")
TFLITE = os.path.join(REPO, "data", "backbone", "mobilenet_v2_1.0_224_quant.tflite")
GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Losses(unittest.TestCase):
    def test_infonce_by_hand(self):
        # Orthogonal unit descriptors, q == r: every positive scores 1, every
        # negative 0, so each row's cross-entropy is
        # -log(e^(1/t) / (e^(1/t) + (n - 1))).
        n, t = 4, 0.5
        q = torch.eye(n)
        want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + n - 1))
        self.assertAlmostEqual(float(T.pair_loss(q, q, "infonce", temperature=t)), want, places=5)
        # Swapping two references makes those rows' positives score 0: the
        # loss grows.
        r = q[[1, 0, 2, 3]]
        self.assertGreater(float(T.pair_loss(q, r, "infonce", temperature=t)), want + 1)

    def test_triplet_and_soft_margin_by_hand(self):
        # Two pairs in the plane: positives at cosine c, the negatives at s.
        a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        th = math.radians(30)
        b = torch.tensor([[math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
        c, s = math.cos(th), math.sin(th)  # pos 0.866, neg 0.5
        self.assertAlmostEqual(float(T.pair_loss(a, b, "triplet", margin=0.5)),
                               max(0.0, 0.5 + s - c), places=5)
        self.assertEqual(float(T.pair_loss(a, b, "triplet", margin=0.3)), 0.0)
        # log(1 + exp(alpha (d_p - d_n))), d = 2 - 2 cos.
        want = math.log1p(math.exp(10 * ((2 - 2 * c) - (2 - 2 * s))))
        self.assertAlmostEqual(float(T.pair_loss(a, b, "soft-margin", alpha=10)), want, places=5)

    def test_unknown_loss(self):
        with self.assertRaisesRegex(ValueError, "unknown loss 'hinge'"):
            T.pair_loss(torch.eye(2), torch.eye(2), "hinge")


class Schedule(unittest.TestCase):
    def test_one_cycle_any_length(self):
        # Every run length steps through (torch's OneCycleLR alone fails at
        # 20 steps: a warm-up of 5 % is one step); the recipes' lengths
        # keep exactly pct_start 0.05; the rate peaks after the warm-up and
        # ends far below it.
        for steps in list(range(1, 61)) + [1000, 1500]:
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=0.1)
            sched = T.one_cycle(opt, 0.1, steps)
            rates = []
            for _ in range(steps):
                rates.append(sched.get_last_lr()[0])  # this step's rate
                opt.step()
                sched.step()
            if steps >= 3:
                self.assertAlmostEqual(max(rates), 0.1, places=9, msg=steps)
                self.assertLess(rates[-1], 1e-4, steps)
        for steps in (600, 1000, 1500, 5000):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
            self.assertEqual(T.one_cycle(opt, 0.1, steps)._schedule_phases[0]["end_step"],
                             0.05 * steps - 1, steps)


class Sampler(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = T.PairSampler(NAIP, 64, seed=5, ref_rotations=4)

    def test_tiles_and_views_stay_west(self):
        t = V.TILE_M
        for x0, y0 in self.s.corners:
            self.assertTrue(X.train_ok(np.array([[x0, y0], [x0 + t, y0 + t]])))
        self.assertTrue((self.s.corners[:, 0] + t <= X.X_SPLIT - X.BUFFER_M).all())
        for _ in range(20):
            x0, y0 = self.s.corners[self.s.rng.integers(len(self.s.corners))]
            img, p = self.s._view(self.s.rasters[0], x0 + t / 2, y0 + t / 2)
            self.assertIsNotNone(img)
            self.assertTrue(X.train_ok(V.footprint(p)))

    def test_reference_turned_like_a_view(self):
        # A nadir view at heading h without photometric changes is the tile
        # turned to h: the positive for a view at heading h +- 40 degrees is
        # the tile turned to the nearest quarter.
        r = self.s.rasters[0]
        x0, y0 = self.s.corners[len(self.s.corners) // 2]
        tile = V.render_tile(r, x0, y0, 64)
        for h in (0, 90, 180, 270):
            p = V.ViewParams(cx=x0 + 160, cy=y0 + 160, heading_deg=h, scale=1, tilt_deg=0,
                             brightness=1, contrast=1, hue_deg=0, saturation=1, blur_sigma=0,
                             noise_sigma=0)
            view, ok = V.render_view(r, p, 64, photometric=False)
            self.assertTrue(ok)
            for d in (-40, 0, 40):
                ref = self.s.reference(tile, (h + d) % 360)
                self.assertLess(np.abs(view.astype(float) - ref).mean(), 0.01, (h, d))
        one = T.PairSampler(NAIP, 64, seed=5, ref_rotations=1)
        self.assertTrue((one.reference(tile, 90) == tile).all())

    def test_batch_tiles_apart_and_grouped(self):
        s = T.PairSampler(NAIP, 64, seed=6, near=4)
        it = s._tiles()
        idx = [next(it) for _ in range(48)]
        p = s.corners[idx]
        d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
        np.fill_diagonal(d, np.inf)
        self.assertGreaterEqual(d.min(), T.PairSampler.MIN_SEP_M)
        # Groups of four within NEAR_M of their first tile (with this seed
        # every group is full).
        for g in range(0, 48, 4):
            self.assertLessEqual(d[g, g + 1:g + 4].max(), T.PairSampler.NEAR_M)

    def test_batch(self):
        q, r = self.s.batch(6)
        self.assertEqual((tuple(q.shape), tuple(r.shape)), ((6, 3, 64, 64), (6, 3, 64, 64)))
        self.assertEqual(q.dtype, torch.float32)
        self.assertTrue(0 <= float(q.min()) and float(q.max()) <= 255)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "ref_rotations"):
            T.PairSampler(NAIP, 64, seed=1, ref_rotations=3)
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, "at least two years"):
                T.PairSampler(d, 64, seed=1)


class Runs(unittest.TestCase):
    def run_train(self, out, **kw):
        args = dict(steps=2, batch=4, seed=3, loss="infonce", lr=1e-4, tflite_path=TFLITE,
                    threads=1, ckpt_every=1, log=lambda *_: None)
        args.update(kw)
        return T.train(NAIP, out, **args)

    def test_deterministic_and_loadable(self):
        with tempfile.TemporaryDirectory() as d:
            a = self.run_train(os.path.join(d, "a"))
            b = self.run_train(os.path.join(d, "b"))
            self.assertEqual(sha256(a), sha256(b))
            c = self.run_train(os.path.join(d, "c"), seed=4)
            self.assertNotEqual(sha256(a), sha256(c))
            for f in ("checkpoint.pt", "config.json", "model-000001.safetensors",
                      "model-000002.safetensors", "train.log.jsonl"):
                self.assertTrue(os.path.exists(os.path.join(d, "a", f)), f)
            net = M.load_model(a)
            self.assertEqual((net.cfg.input_size, net.cfg.ref_rotations), ([64, 64], 4))
            # Trained weights differ from the ImageNet start.
            u = self.run_train(os.path.join(d, "u"), steps=0)
            self.assertNotEqual(sha256(a), sha256(u))
            if os.path.exists(GEOLOC):
                out = subprocess.run([GEOLOC, "inspect", a], capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stderr)

    def test_resume_restores_the_state(self):
        # Resuming a finished run restores its last checkpoint and trains no
        # further: the exported model is the same file.
        with tempfile.TemporaryDirectory() as d:
            a = self.run_train(os.path.join(d, "a"))
            first = sha256(a)
            os.remove(a)
            self.assertEqual(torch.load(os.path.join(d, "a", "checkpoint.pt"))["step"], 2)
            self.assertEqual(sha256(self.run_train(os.path.join(d, "a"), resume=True)), first)

    def test_bad_arguments(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, "unknown loss"):
                self.run_train(d, loss="hinge")
            with self.assertRaisesRegex(ValueError, "batch of at least 2"):
                self.run_train(d, batch=1)


if __name__ == "__main__":
    unittest.main()
