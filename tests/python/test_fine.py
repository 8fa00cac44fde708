"""The fine stage's reference (geoloc_train.fine, steps 1-4 of src/loc/fine.h):
the warp's geometry, rounding and antialiasing, dense features by blocks
against one pass, query features, the disc mask and the score; the CLI
commands; the naip-xtime validation region (xtime --region west).

The NAIP checks need GDAL's Python bindings and skip without them."""

import csv
import os
import tempfile
import unittest

import numpy as np
import torch

from _common import REPO, run_cli
from geoloc_train import fine, ops, testvectors
from geoloc_train import model as M
from geoloc_train.config import ConfigError, ModelConfig

try:
    from geoloc_train import views as V
    from geoloc_train import xtime as X
except ImportError:  # no GDAL (python3-gdal)
    V = X = None
try:
    from PIL import Image
except ImportError:
    Image = None

NAIP = os.path.join(REPO, "data", "naip")
R2020 = os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif")
need_gdal = unittest.skipIf(V is None, "GDAL's Python bindings (python3-gdal) not installed")
need_pil = unittest.skipIf(Image is None, "Pillow not installed (python3-pil)")


def noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def picture(h, w, seed):
    """Smooth structure plus noise, uint8 (h, w, 3)."""
    return testvectors.test_image(w, h, seed).numpy()


def plain(cx, cy, heading):
    return V.ViewParams(cx, cy, heading, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def small_model(seed=3, **cfg):
    return testvectors.random_model(ModelConfig.from_dict({"input_size": [64, 64], **cfg}), seed)


class Warp(unittest.TestCase):
    def test_identity(self):
        for size in (64, 17):
            img = noise(size, size, size)
            np.testing.assert_array_equal(fine.warp(img, 0.0, size), img)
            np.testing.assert_array_equal(fine.warp(img, 360.0, size), img)

    def test_quarter_turns(self):
        # The output is north-up: a frame whose top looks east (90) is
        # turned clockwise, its top row becoming the right column.
        img = noise(64, 64, 1)
        for heading, k in ((90, -1), (180, 2), (270, 1), (-90, 1), (450, -1)):
            np.testing.assert_array_equal(fine.warp(img, heading, 64), np.rot90(img, k),
                                          err_msg=f"heading {heading}")
        self.assertEqual(fine.warp(img, 90, 64)[5, -1].tolist(), img[0, 5].tolist())

    def test_scaling_and_rounding(self):
        # A 2x (4x) larger frame: n = 2 (4) samples per axis fall exactly on
        # the source pixel centres, so each output pixel is the box average,
        # rounded half up.
        for k in (2, 4):
            big = noise(64 * k, 64 * k, k)
            box = big.reshape(64, k, 64, k, 3).astype(np.float64).mean(axis=(1, 3))
            np.testing.assert_array_equal(fine.warp(big, 0.0, 64), np.floor(box + 0.5))
            self.assertEqual(fine.aa_factor(64 * k, 64 * k, 64), k)
        self.assertEqual(fine.aa_factor(65, 10, 64), 2)
        self.assertEqual(fine.aa_factor(64, 64, 64), 1)
        self.assertEqual(fine.aa_factor(1000, 720, 64), 4)
        # Non-square, upsampled: x = (j + 1/2) W/S - 1/2 by hand.
        img = noise(3, 5, 9)
        out = fine.warp(img, 0.0, 10)
        j, i = 3, 7
        x, y = (j + 0.5) * 5 / 10 - 0.5, (i + 0.5) * 3 / 10 - 0.5
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        f = img.astype(float)
        want = (1 - fy) * ((1 - fx) * f[y0, x0] + fx * f[y0, x0 + 1]) + \
            fy * ((1 - fx) * f[y0 + 1, x0] + fx * f[y0 + 1, x0 + 1])
        np.testing.assert_array_equal(out[i, j], np.floor(want + 0.5))

    def test_reflection(self):
        # Integer indices: numpy's pad mode 'reflect', also far beyond one period.
        for n in (1, 2, 5):
            idx = fine.reflect(np.arange(-13, n + 13), n)
            np.testing.assert_array_equal(idx, np.pad(np.arange(n), 13, mode="reflect"))
        np.testing.assert_allclose(fine.reflect(np.array([-0.25, 4.5, 9.0, 11.5]), 5),
                                   [0.25, 3.5, 1.0, 3.5])
        # Heading 45: the output's corners fall outside the frame and are
        # mirrored, never clamped or filled. On a horizontal ramp (3 levels
        # a column) pixel (0, 0) samples x = 31.5 - 31.5 sqrt(2) < 0, y = 31.5.
        ramp = np.repeat(np.repeat(3 * np.arange(64, dtype=np.uint8)[None, :, None], 64, 0), 3, 2)
        x = 31.5 - 31.5 * np.sqrt(2)
        out = fine.warp(ramp, 45.0, 64)
        self.assertEqual(out[0, 0].tolist(), [int(np.floor(3 * -x + 0.5))] * 3)
        x = 31.5 + 31.5 * np.sqrt(2)                  # pixel (63, 63): x > 63
        self.assertEqual(out[63, 63].tolist(), [int(np.floor(3 * (126 - x) + 0.5))] * 3)
        x = np.full((1, 1, 3), 77, np.uint8)         # a one-pixel frame: constant
        self.assertTrue((fine.warp(x, 33.0, 8) == 77).all())

    @need_gdal
    def test_north_up_on_naip(self):
        # A drone view at heading h warped with h matches the north-up view
        # of the same ground; warped with h + 90 it does not.
        r = V.Raster.open(R2020)
        cx, cy, size = 488000.0, 5207400.0, 64
        north, ok = V.render_view(r, plain(cx, cy, 0.0), size, photometric=False)
        self.assertTrue(ok)
        disc = fine.disc_mask(size, 1, size)

        def corr(a, b):
            a = a[disc].astype(float).ravel()
            b = b[disc].astype(float).ravel()
            return float(np.corrcoef(a, b)[0, 1])

        for h in (90.0, 30.0, 200.0, 317.0):
            view, ok = V.render_view(r, plain(cx, cy, h), size, photometric=False)
            self.assertTrue(ok)
            good = corr(fine.warp(view, h, size), north)
            self.assertGreater(good, 0.98, f"heading {h}")
            for wrong in (h + 90, -h):                  # a quarter off; turned the other way
                bad = corr(fine.warp(view, wrong, size), north)
                self.assertGreater(good, bad + 0.3, f"heading {h} vs {wrong}: {good} vs {bad}")


class Features(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(min(2, torch.get_num_threads()))
        cls.model = small_model()

    def test_strides(self):
        self.assertEqual(fine.layer_strides(),
                         [2, 2, 4, 4, 8, 8, 8] + [16] * 7 + [32] * 5)
        self.assertEqual(fine.layer_stride(self.model, 6), 8)
        self.assertEqual(fine.layer_channels(self.model, 6), 32)
        for bad in (-1, 19):
            with self.assertRaises(ValueError):
                fine.layer_stride(self.model, bad)

    def test_layer_features_are_the_backbone(self):
        # At the model's input size the resize is the identity, so the
        # features are the traced backbone output of the full model.
        imgs = np.stack([picture(64, 64, 1), picture(64, 64, 2)])
        f = fine.layer_features(self.model, imgs, 6)
        self.assertEqual(list(f.shape), [2, 8, 8, 32])
        trace = {}
        with torch.no_grad():
            self.model(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(), trace)
        want = trace["backbone.features.6"].permute(0, 2, 3, 1)
        self.assertTrue(torch.allclose(f, want, atol=1e-5))

    def test_l2n(self):
        x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
        np.testing.assert_allclose(fine.l2n(x), [[0.6, 0.8], [0.0, 0.0]])
        t = torch.randn(2, 3, 4, 5)
        want = ops.l2_normalize(t.reshape(-1, 5)).reshape(2, 3, 4, 5)
        self.assertTrue(torch.equal(fine.l2n(t), want))

    def test_blocks_equal_one_pass(self):
        canvas = picture(576, 640, 5)
        got = fine.dense_features(self.model, canvas, 6, block=256, margin=64)
        self.assertEqual(got.shape, (72, 80, 32))
        self.assertEqual(got.dtype, np.float32)
        padded = np.pad(canvas, ((64, 64), (64, 64), (0, 0)), mode="reflect")
        one = fine.l2n(fine.layer_features(self.model, padded[None], 6)[0, 8:-8, 8:-8]).numpy()
        self.assertLess(float(np.abs(got - one).max()), 1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)

    def test_blocks_equal_one_pass_on_a_deeper_block(self):
        """Block 10 (stride 16, receptive field 171 pixels): its default
        margin (layer_margin: 112) joins blocks exactly, 64 does not."""
        self.assertEqual([fine.layer_margin(k) for k in (1, 6, 7, 10, 13)], [64, 64, 64, 112, 160])
        canvas = picture(320, 352, 8)
        got = fine.dense_features(self.model, canvas, 10, block=128)
        self.assertEqual(got.shape, (20, 22, 64))
        padded = np.pad(canvas, ((112, 112), (112, 112), (0, 0)), mode="reflect")
        one = fine.l2n(fine.layer_features(self.model, padded[None], 10)[0, 7:-7, 7:-7]).numpy()
        self.assertLess(float(np.abs(got - one).max()), 1e-5)
        short = fine.dense_features(self.model, canvas, 10, block=128, margin=64)
        self.assertGreater(float(np.abs(short - one).max()), 1e-3)

    def test_canvas_smaller_than_margin(self):
        canvas = picture(40, 48, 6)
        got = fine.dense_features(self.model, canvas, 6, block=32, margin=64)
        rows, cols = fine.reflect(np.arange(-64, 104), 40), fine.reflect(np.arange(-64, 112), 48)
        padded = canvas[np.ix_(rows, cols)]
        one = fine.l2n(fine.layer_features(self.model, padded[None], 6)[0, 8:13, 8:14]).numpy()
        self.assertEqual(got.shape, (5, 6, 32))
        self.assertLess(float(np.abs(got - one).max()), 1e-5)

    def test_shift_by_one_cell(self):
        s, n = 8, 192
        big = picture(n + s, n + s, 7)
        a = fine.dense_features(self.model, big[:n, :n], 6, block=128, margin=64)
        b = fine.dense_features(self.model, big[s:, s:], 6, block=128, margin=64)
        e = 5                                   # cells near the edges see reflected pixels
        cos = (a[e + 1:-e, e + 1:-e] * b[e:-e - 1, e:-e - 1]).sum(-1)
        self.assertGreater(float(cos.min()), 0.999)

    def test_refusals(self):
        with self.assertRaisesRegex(ValueError, "multiples"):
            fine.dense_features(self.model, picture(100, 96, 1), 6)
        with self.assertRaisesRegex(ValueError, "multiples"):
            fine.dense_features(self.model, picture(96, 96, 1), 6, block=100)
        resizer = M.GeoNet(ModelConfig.from_dict({"input_size": [64, 64], "resizer": True}))
        with self.assertRaisesRegex(ConfigError, "resizer"):
            fine.dense_features(resizer, picture(64, 64, 1), 6)
        with self.assertRaisesRegex(ConfigError, "resizer"):
            fine.query_features(resizer, picture(64, 64, 1), [0.0], 6)

    def test_query_features(self):
        frame = picture(128, 128, 8)
        q = fine.query_features(self.model, frame, [0.0, 10.0, 90.0], 6)
        self.assertEqual(q.shape, (3, 8, 8, 32))
        self.assertEqual(q.dtype, np.float32)
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-5)
        w = fine.warp(frame, 90.0, 64)
        want = fine.l2n(fine.layer_features(self.model, w[None], 6)).numpy()[0]
        np.testing.assert_allclose(q[2], want, atol=1e-6)


class Scores(unittest.TestCase):
    def test_disc_mask(self):
        m = fine.disc_mask(8, 8, 64)
        self.assertEqual(int(m.sum()), 52)
        self.assertFalse(m[0, 0] or m[0, 1] or m[1, 0] or m[7, 7])
        self.assertTrue(m[0, 2] and m[1, 1] and m[3, 0])
        np.testing.assert_array_equal(m, m.T)
        np.testing.assert_array_equal(m, m[::-1])

    def test_brute_force(self):
        rng = np.random.default_rng(0)
        q = rng.standard_normal((3, 4, 4, 5))
        d = rng.standard_normal((9, 7, 5))
        mask = rng.random((4, 4)) < 0.6
        got = fine.scores(q, d, mask)
        self.assertEqual(got.shape, (3, 6, 4))
        want = np.zeros_like(got)
        for h in range(3):
            for r in range(6):
                for c in range(4):
                    want[h, r, c] = sum(q[h, a, b] @ d[r + a, c + b] for a in range(4)
                                        for b in range(4) if mask[a, b]) / mask.sum()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    def test_self_match(self):
        rng = np.random.default_rng(1)
        d = fine.l2n(rng.standard_normal((20, 24, 32)).astype(np.float32))
        mask = fine.disc_mask(8, 8, 64)
        q = np.stack([d[5:13, 9:17], d[0:8, 0:8]])
        s = fine.scores(q, d, mask)
        self.assertAlmostEqual(float(s[0, 5, 9]), 1.0, places=6)
        self.assertAlmostEqual(float(s[1, 0, 0]), 1.0, places=6)
        self.assertEqual(np.unravel_index(np.argmax(s[0]), s[0].shape), (5, 9))
        self.assertLess(float(np.delete(s[0].ravel(), 5 * s.shape[2] + 9).max()), 0.5)
        with self.assertRaises(ValueError):
            fine.scores(q, d[:7], mask)


@need_pil
class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model_path = os.path.join(cls.tmp.name, "m.safetensors")
        M.save_model(small_model(seed=4), cls.model_path)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def png(self, name, arr):
        Image.fromarray(arr).save(self.path(name))
        return self.path(name)

    def test_warp(self):
        frame = picture(96, 80, 2)
        run_cli("warp", "--image", self.png("f.png", frame), "--heading", "30", "--size", "64",
                "--out", self.path("w.png"))
        with Image.open(self.path("w.png")) as im:
            np.testing.assert_array_equal(np.asarray(im), fine.warp(frame, 30.0, 64))

    def test_dense_and_query_features(self):
        model = M.load_model(self.model_path)
        canvas = picture(64, 128, 3)
        p = run_cli("dense", "--model", self.model_path, "--image", self.png("c.png", canvas),
                    "--layer", "6", "--block", "64", "--margin", "32", "--out", self.path("d.f32"))
        self.assertEqual(p.stdout.split(), ["8", "16", "32"])
        got = np.fromfile(self.path("d.f32"), "<f4").reshape(8, 16, 32)
        np.testing.assert_array_equal(got, fine.dense_features(model, canvas, 6, 64, 32))
        frame = picture(100, 100, 4)
        p = run_cli("query-features", "--model", self.model_path, "--image",
                    self.png("q.png", frame), "--headings", "0,10,20", "--out", self.path("q.f32"))
        self.assertEqual(p.stdout.split(), ["3", "8", "8", "32"])
        got = np.fromfile(self.path("q.f32"), "<f4").reshape(3, 8, 8, 32)
        np.testing.assert_array_equal(got, fine.query_features(model, frame, [0, 10, 20], 6))
        p = run_cli("dense", "--model", self.model_path, "--image", self.png("bad.png", frame),
                    "--out", self.path("bad.f32"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("multiples", p.stderr)


@need_gdal
class WestRegion(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = V.Raster.open(R2020)

    def test_bbox_holds_exactly_the_validation_tiles(self):
        centres = V.grid_corners(self.r.extent()) + V.TILE_M / 2
        west, south, east, north = X.west_bbox(self.r)
        lon, lat = self.r.to_lonlat(centres[:, 0], centres[:, 1])
        in_box = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
        tiles = X.train_corners(self.r) + V.TILE_M / 2
        self.assertGreater(len(tiles), 100)
        np.testing.assert_array_equal(centres[in_box], tiles)     # same tiles, map order
        # The edge keeps a clear gap to every centre (meridian convergence
        # is metres): at least 20 m both ways along the middle northing.
        self.assertGreaterEqual(np.abs(centres[:, 0] - X.WEST_EDGE).min(), 20.0)
        self.assertEqual(X.bbox_string(NAIP, "west"),
                         ",".join(f"{v:.7f}" for v in (west, south, east, north)))
        self.assertEqual(X.bbox_string(NAIP), X.bbox_string(NAIP, "east"))
        with self.assertRaises(ValueError):
            X.bbox_string(NAIP, "north")

    def test_eval_set_and_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            X.make_eval_set(NAIP, tmp, count=6, size=48, region="west")
            with open(os.path.join(tmp, "labels.csv"), newline="") as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(len(rows), 6)
            xa, ya, xb, yb = X.centre_range(self.r, "west")
            self.assertLessEqual(xb, X.WEST_EDGE)
            for row in rows:
                x, y = self.r.from_lonlat(float(row["lon"]), float(row["lat"]))
                self.assertTrue(xa - 0.1 <= x <= xb + 0.1 and ya - 0.1 <= y <= yb + 0.1, row)
                self.assertNotEqual(row["date"][:4], "2020")
            # The default seed of the west region is 7.
            out7 = os.path.join(tmp, "seed7")
            X.make_eval_set(NAIP, out7, count=6, seed=7, size=48, region="west")
            with open(os.path.join(out7, "labels.csv"), "rb") as a, \
                    open(os.path.join(tmp, "labels.csv"), "rb") as b:
                self.assertEqual(a.read(), b.read())
        p = run_cli("xtime-bbox", "--naip", NAIP, "--region", "west")
        self.assertEqual(p.stdout.strip(), X.bbox_string(NAIP, "west"))


if __name__ == "__main__":
    unittest.main()
