"""The fine stage's dense descriptor head (config dense_head, model.DenseHead,
OPS.md 3.5) and train-dense (geoloc_train.train_dense): config validation,
the head's math, model files with a head, export-random, fine.py with a
head, and train-dense's determinism, frozen backbone, held-out band and
fused cells.

The train-dense checks need GDAL's Python bindings and skip without them."""

import json
import os
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

from _common import REPO, run_cli
from geoloc_train import fine, safetensors, testvectors
from geoloc_train import model as M
from geoloc_train.config import ConfigError, ModelConfig

try:
    from geoloc_train import train_dense as T
    from geoloc_train import views as V
    from geoloc_train import xtime as X
except ImportError:  # no GDAL (python3-gdal)
    T = V = X = None

NAIP = os.path.join(REPO, "data", "naip")
SHIPPED = os.path.join(REPO, "data", "models", "geoloc-naip-mnv2-64.safetensors")
HEAD = {"layer": 6, "dim": 64, "hidden": 56}
need_gdal = unittest.skipIf(T is None, "GDAL's Python bindings (python3-gdal) not installed")

torch.set_num_threads(2)


def head_cfg(**kw):
    return ModelConfig.from_dict({"input_size": [64, 64], "dense_head": dict(HEAD, **kw)})


class Config(unittest.TestCase):
    def test_good(self):
        c = head_cfg()
        self.assertEqual(c.dense_head, HEAD)
        self.assertEqual(ModelConfig.from_json(c.to_json()), c)
        self.assertEqual(json.loads(c.to_json())["dense_head"], HEAD)
        head_cfg(layer=13, dim=96, hidden=1)                     # dim = the block's channels
        ModelConfig.from_dict({"dense_head": {"layer": 1, "dim": 16, "hidden": 3}})
        # The fine stage's own input size: kept, and written back.
        c = head_cfg(layer=10, size=128)
        self.assertEqual(json.loads(c.to_json())["dense_head"], dict(HEAD, layer=10, size=128))
        self.assertEqual(ModelConfig.from_json(c.to_json()), c)
        # A fused block and its weight: kept, and written back.
        c = head_cfg(fuse_layer=10, fuse_weight=0.5)
        self.assertEqual(json.loads(c.to_json())["dense_head"],
                         dict(HEAD, fuse_layer=10, fuse_weight=0.5))
        self.assertEqual(ModelConfig.from_json(c.to_json()), c)
        head_cfg(fuse_layer=5, fuse_weight=0.25)               # the same stride: k = 1

    def test_none_is_left_out(self):
        # Configs without a head serialise as before the field existed.
        self.assertNotIn("dense_head", json.loads(ModelConfig().to_json()))
        self.assertIsNone(ModelConfig.from_dict({"dense_head": None}).dense_head)

    def test_bad(self):
        bad = [[6], "6", {"layer": 6, "dim": 64}, dict(HEAD, extra=1), dict(HEAD, layer=0),
               dict(HEAD, layer=18), dict(HEAD, layer=6.0), dict(HEAD, dim=31),
               dict(HEAD, hidden=0), dict(HEAD, hidden=True), dict(HEAD, dim="64"),
               dict(HEAD, layer=13, dim=64), dict(HEAD, layer=10, size=120),
               dict(HEAD, size=8), dict(HEAD, size=2048), dict(HEAD, size=True),
               dict(HEAD, size=64.0),
               # A fused block: with its weight, in (0, 1), another block,
               # its stride a multiple of the head's, the input <= 1024.
               dict(HEAD, fuse_layer=10), dict(HEAD, fuse_weight=0.5),
               dict(HEAD, fuse_layer=10, fuse_weight=0), dict(HEAD, fuse_layer=10, fuse_weight=1),
               dict(HEAD, fuse_layer=10, fuse_weight="0.5"),
               dict(HEAD, fuse_layer=10, fuse_weight=True),
               dict(HEAD, fuse_layer=6, fuse_weight=0.5), dict(HEAD, fuse_layer=2, fuse_weight=0.5),
               dict(HEAD, fuse_layer=18, fuse_weight=0.5),
               dict(HEAD, fuse_layer=10.0, fuse_weight=0.5),
               dict(HEAD, size=512, fuse_layer=17, fuse_weight=0.5),
               dict(HEAD, dim=4090, fuse_layer=10, fuse_weight=0.5)]
        for h in bad:
            with self.subTest(dense_head=h), self.assertRaises(ConfigError) as e:
                ModelConfig.from_dict({"dense_head": h})
            self.assertIn("dense_head", str(e.exception))


class HeadMath(unittest.TestCase):
    def test_by_hand(self):
        torch.manual_seed(0)
        c, dim, hid = 3, 5, 4
        h = M.DenseHead(c, dim, hid)
        for p in h.parameters():
            with torch.no_grad():
                p.normal_()
        f = torch.randn(2, c, 4, 5)
        f[0, :, 1, 2] = 0                          # a zero pixel stays zero after l2n
        xn = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        w = lambda conv: conv.weight.detach()
        bias = lambda conv: conv.bias.detach()
        p = torch.einsum("oc,bchw->bohw", w(h.proj)[:, :, 0, 0], xn) + bias(h.proj)[None, :, None, None]
        b = torch.relu(torch.einsum("oc,bchw->bohw", w(h.b1)[:, :, 0, 0], xn)
                       + bias(h.b1)[None, :, None, None])
        bp = F.pad(b, (1, 1, 1, 1))
        b2 = torch.zeros(2, hid, 4, 5) + bias(h.b2)[None, :, None, None]
        for ky in range(3):
            for kx in range(3):
                b2 += torch.einsum("oc,bchw->bohw", w(h.b2)[:, :, ky, kx],
                                   bp[:, :, ky:ky + 4, kx:kx + 5])
        b2 = torch.relu(b2)
        out = p + torch.einsum("oc,bchw->bohw", w(h.b3)[:, :, 0, 0], b2) \
            + bias(h.b3)[None, :, None, None]
        with torch.no_grad():
            torch.testing.assert_close(h(f), out, rtol=1e-5, atol=1e-5)

    def test_identity_start(self):
        h = M.DenseHead(32, 64, 56)
        h.reset_identity(torch.Generator().manual_seed(1))
        f = torch.randn(3, 32, 6, 7) * 5
        with torch.no_grad():
            out = h(f)
        want = F.pad(F.normalize(f, dim=1, eps=1e-12), (0, 0, 0, 0, 0, 32))
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
        self.assertTrue(bool((h.b3.weight == 0).all()) and bool((h.b3.bias == 0).all()))
        self.assertNotEqual(float(h.b1.weight.abs().sum()), 0.0)

    def test_shapes_and_names(self):
        net = M.GeoNet(head_cfg())
        t = {k: list(v.shape) for k, v in M.model_tensors(net).items() if k.startswith("dense_head")}
        self.assertEqual(t, {"dense_head.proj.weight": [64, 32, 1, 1], "dense_head.proj.bias": [64],
                             "dense_head.b1.weight": [56, 32, 1, 1], "dense_head.b1.bias": [56],
                             "dense_head.b2.weight": [56, 56, 3, 3], "dense_head.b2.bias": [56],
                             "dense_head.b3.weight": [64, 56, 1, 1], "dense_head.b3.bias": [64]})
        self.assertNotIn("dense_head", " ".join(M.model_tensors(M.GeoNet(ModelConfig())).keys()))


class Files(unittest.TestCase):
    def test_round_trip_and_random(self):
        cfg = head_cfg()
        m = testvectors.random_model(cfg, 4)
        h = m.dense_head
        self.assertGreater(float(h.b3.weight.abs().min() + h.b3.weight.abs().mean()), 0.0)
        self.assertGreater(float(h.b3.bias.abs().sum()), 0.0)
        eye = torch.zeros_like(h.proj.weight)
        for i in range(32):
            eye[i, i] = 1
        self.assertGreater(float((h.proj.weight - eye).abs().max()), 0.01)
        # Headless random models are unchanged by the head's existence.
        plain = testvectors.random_model(ModelConfig.from_dict({"input_size": [64, 64]}), 4)
        for k, v in M.model_tensors(plain).items():
            torch.testing.assert_close(M.model_tensors(m)[k], v, rtol=0, atol=0)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            M.save_model(m, path)
            back = M.load_model(path)
            self.assertEqual(back.cfg, cfg)
            for k, v in M.model_tensors(m).items():
                torch.testing.assert_close(M.model_tensors(back)[k], v, rtol=0, atol=0)
            _, meta = safetensors.load(path)
            self.assertEqual(json.loads(meta["config"])["dense_head"], HEAD)
            # export-random with a head: same tensors as random_model.
            cpath = os.path.join(d, "c.json")
            with open(cpath, "w") as f:
                f.write(cfg.to_json())
            out = os.path.join(d, "r.safetensors")
            run_cli("export-random", "--config", cpath, "--seed", "4", "--out", out)
            r = M.load_model(out)
            torch.testing.assert_close(r.dense_head.b3.weight, h.b3.weight, rtol=0, atol=0)

    def test_fine_with_head(self):
        m = testvectors.random_model(head_cfg(), 5)
        rng = np.random.default_rng(2)
        img = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        raw = fine.layer_features(m, img, 6, head=False)
        self.assertEqual(list(raw.shape), [1, 8, 8, 32])
        f = fine.layer_features(m, img, 6)
        self.assertEqual(list(f.shape), [1, 8, 8, 64])
        with torch.no_grad():
            want = m.dense_head(raw.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(f, want)
        self.assertEqual(list(fine.layer_features(m, img, 5).shape), [1, 8, 8, 32])
        q = fine.query_features(m, img[0], [0.0, 90.0])
        self.assertEqual(q.shape, (2, 8, 8, 64))
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-5)
        canvas = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        d = fine.dense_features(m, canvas, 6, block=64, margin=64)
        self.assertEqual(d.shape, (12, 16, 64))
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-5)
        # The blocks join exactly with the head too (margin > its receptive field).
        one = fine.dense_features(m, canvas, 6, block=128, margin=64)
        np.testing.assert_allclose(d, one, rtol=0, atol=1e-5)
        # The identity start gives the raw features padded with zeros.
        plain = testvectors.random_model(ModelConfig.from_dict({"input_size": [64, 64]}), 5)
        start = M.GeoNet(head_cfg())
        start.load_state_dict(M.model_tensors(plain), strict=False)
        start.eval()
        a = fine.dense_features(plain, canvas, 6)
        b = fine.dense_features(start, canvas, 6)
        np.testing.assert_allclose(b[..., :32], a, atol=1e-6)
        np.testing.assert_allclose(b[..., 32:], 0.0, atol=1e-6)


    def test_fused_cells(self):
        """A fused block (dense_head.fuse_layer 10, fuse_weight w): the cells
        of an F = 128 pixel input are the head's cells of its 2 x 2 means
        times sqrt(1 - w) joined with block 10's raw cells times sqrt(w), so
        a cosine of two cells is (1 - w) times the head's plus w times block
        10's; the map's cells of a canvas are made the same way, and join
        across tiled blocks."""
        w = 0.3
        m = testvectors.random_model(head_cfg(fuse_layer=10, fuse_weight=w), 6)
        self.assertEqual((fine.fused(m, 6), fine.model_size(m, 6), fine.cell_stride(m, 6),
                          fine.cell_channels(m, 6)), ((10, w, 2), 128, 16, 64 + 64))
        self.assertIsNone(fine.fused(m, 10))                   # only the head's block fuses
        rng = np.random.default_rng(3)
        imgs = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
        # The means: rounded half up.
        self.assertEqual(fine.box(np.array([[[[1] * 3, [2] * 3], [[2] * 3, [2] * 3]]], np.uint8),
                                  2).ravel().tolist(), [2, 2, 2])
        self.assertEqual(fine.box(np.array([[[[1] * 3, [1] * 3], [[1] * 3, [2] * 3]]], np.uint8),
                                  2).ravel().tolist(), [1, 1, 1])
        c = fine.cells(m, imgs, 6)
        self.assertEqual(c.shape, (2, 8, 8, 128))
        np.testing.assert_allclose(np.linalg.norm(c, axis=-1), 1.0, rtol=1e-5)
        a = fine.l2n(fine.layer_features(m, fine.box(imgs, 2), 6)).numpy()
        b = fine.l2n(fine.layer_features(m, imgs, 10, head=False)).numpy()
        cos = lambda x: (x[0] * x[1]).sum(-1)                 # noqa: E731
        np.testing.assert_allclose(cos(c), (1 - w) * cos(a) + w * cos(b), atol=1e-5)
        q = fine.query_features(m, imgs[0], [0.0, 90.0])
        self.assertEqual(q.shape, (2, 8, 8, 128))
        canvas = rng.integers(0, 256, (224, 256, 3), dtype=np.uint8)
        d = fine.dense_features(m, canvas, 6)
        self.assertEqual(d.shape, (14, 16, 128))
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(d, fine.dense_features(m, canvas, 6, block=128), atol=1e-5)
        with self.assertRaises(ValueError):                    # each block takes its own margin
            fine.dense_features(m, canvas, 6, margin=64)
        with self.assertRaises(ValueError):                    # not a multiple of 16
            fine.dense_features(m, canvas[:216], 6)


@need_gdal
class CrossScores(unittest.TestCase):
    def test_against_brute_force(self):
        # train-dense --batch-negatives: view i at placement (r, c) of
        # window j is the mean over the disc's cells of the cosines (here
        # plain dot products) of its cells with the window's, and windows
        # that overlap view i's own (itself included) are left out.
        g = torch.Generator().manual_seed(4)
        n, d, b, W = 8, 5, 3, T.WIN
        mask = torch.from_numpy(fine.disc_mask(n, 8, 64)).float()
        q = torch.randn(b, d, n, n, generator=g, dtype=torch.float64)
        win = torch.randn(b, d, W, W, generator=g, dtype=torch.float64)
        cells = np.array([[3, 3], [3 + W - 1, 3 + W - 1], [3 + 2 * W, 3]])  # 0, 1 overlap
        got = T.cross_scores(q, win, mask, cells)
        P = W - n + 1
        self.assertEqual(tuple(got.shape), (b, b * P * P))
        for i in range(b):
            for j in range(b):
                blk = got[i, j * P * P:(j + 1) * P * P].reshape(P, P)
                if {i, j} in ({0}, {1}, {2}, {0, 1}):
                    self.assertTrue(bool(torch.isneginf(blk).all()), (i, j))
                    continue
                want = torch.empty(P, P, dtype=torch.float64)
                for r in range(P):
                    for c in range(P):
                        want[r, c] = (q[i] * win[j, :, r:r + n, c:c + n] * mask).sum() / mask.sum()
                torch.testing.assert_close(blk, want, rtol=0, atol=1e-12)


class YearDraws(unittest.TestCase):
    YEARS = [2009, 2010, 2012, 2014, 2015, 2016, 2017, 2018, 2019, 2020]

    def draws(self, how, n=6000):
        rng = np.random.default_rng(5)
        return np.array([T.draw_years(rng, self.YEARS, how) for _ in range(n)])

    def test_default_is_the_shipped_recipes(self):
        # The draw the shipped head was trained with, written out: the same
        # random numbers give the same years.
        def shipped(rng, years):
            q = years[rng.integers(len(years))]
            others = [y for y in years if y != q]
            if q != 2020 and rng.uniform() < 0.5:
                return q, 2020
            return q, others[rng.integers(len(others))]
        rng = np.random.default_rng(5)
        want = np.array([shipped(rng, self.YEARS) for _ in range(6000)])
        np.testing.assert_array_equal(self.draws(T.YearDraw()), want)

    def test_reference_years(self):
        d = self.draws(T.YearDraw(ref_years=(2018, 2019, 2020)))
        self.assertTrue(np.all(np.isin(d[:, 1], (2018, 2019, 2020))))
        self.assertTrue(np.all(d[:, 0] != d[:, 1]))
        self.assertEqual(set(d[:, 0]), set(self.YEARS))
        # A query of 2019 has 2018 or 2020 as its reference, evenly.
        r = d[d[:, 0] == 2019, 1]
        self.assertAlmostEqual(np.mean(r == 2018), 0.5, delta=0.1)

    def test_focus_years(self):
        d = self.draws(T.YearDraw(focus_years=(2009, 2010), focus_share=0.4))
        # 0.4 from the focus years, and 2 in 10 of the rest.
        self.assertAlmostEqual(np.mean(np.isin(d[:, 0], (2009, 2010))), 0.4 + 0.6 * 0.2,
                               delta=0.03)
        self.assertTrue(np.all(d[:, 0] != d[:, 1]))
        self.assertAlmostEqual(np.mean(d[:, 0] == 2009), np.mean(d[:, 0] == 2010), delta=0.04)


@need_gdal
class TrainDense(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Two years only, to keep the feature cache small.
        cls.tmp = tempfile.TemporaryDirectory()
        cls.naip = os.path.join(cls.tmp.name, "naip")
        os.makedirs(cls.naip)
        for y in (2009, 2020):
            p = X.rasters(NAIP)[y]
            os.symlink(p, os.path.join(cls.naip, os.path.basename(p)))
        # The base: the shipped model without its dense head (train-dense
        # refuses a model that has one).
        tensors, meta = safetensors.load(SHIPPED)
        cfg = json.loads(meta["config"])
        cfg.pop("dense_head", None)
        meta = dict(meta, config=json.dumps(cfg))
        cls.base = os.path.join(cls.tmp.name, "base.safetensors")
        safetensors.save(cls.base, {k: v for k, v in tensors.items()
                                    if not k.startswith("dense_head.")}, meta)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_once(self, out, steps=2, **kw):
        kw = {"ckpt_every": 2, **kw}
        return T.train_dense(self.base, self.naip, out, steps=steps, batch=2, seed=3, threads=2,
                             val_count=4, log=lambda *a: None, **kw)

    def test_deterministic_and_frozen(self):
        a = self.run_once(os.path.join(self.tmp.name, "a"))
        b = self.run_once(os.path.join(self.tmp.name, "b"))
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertEqual(fa.read(), fb.read())
        base, bmeta = safetensors.load(self.base)
        out, meta = safetensors.load(a)
        cfg = json.loads(meta["config"])
        self.assertEqual(cfg.pop("dense_head"), HEAD)
        self.assertEqual(cfg, json.loads(bmeta["config"]))
        self.assertEqual(set(out) - set(base), {k for k in out if k.startswith("dense_head.")})
        self.assertEqual(len(set(out) - set(base)), 8)
        for k, v in base.items():
            self.assertTrue(torch.equal(out[k], v), k)
        # The head trained: b3 moved from zero.
        self.assertGreater(float(out["dense_head.b3.weight"].abs().max()), 0.0)
        # Resume: stop after step 1, resume to step 2: the same bytes.
        c = os.path.join(self.tmp.name, "c")
        self.run_once(c, ckpt_every=1, stop_after=1)
        self.assertFalse(os.path.exists(os.path.join(c, "model.safetensors")))
        self.assertEqual(torch.load(os.path.join(c, "checkpoint.pt"))["step"], 1)
        self.run_once(c, ckpt_every=1, resume=True)
        with open(os.path.join(c, "model.safetensors"), "rb") as fc, open(a, "rb") as fa:
            self.assertEqual(fc.read(), fa.read())
        with open(os.path.join(c, "train.log.jsonl"), encoding="utf-8") as f:
            log = [json.loads(line) for line in f]
        self.assertIn("val_raw", log[0])
        self.assertIn("val_head", log[-1])
        self.assertEqual(log[-1]["step"], 2)

    def test_position_error(self):
        # A paraboloid peaked at a fractional placement: refined exactly.
        geo = T.Geometry(M.load_model(self.base), 6)
        p = geo.places
        i, j = torch.meshgrid(torch.arange(p, dtype=torch.float64),
                              torch.arange(p, dtype=torch.float64), indexing="ij")
        frac = torch.tensor([[6.3, 5.8], [2.0, 9.45]], dtype=torch.float64)
        sc = torch.stack([1 - (i - f[0]) ** 2 - (j - f[1]) ** 2 for f in frac])
        err = T.position_error(sc, frac, geo)
        torch.testing.assert_close(err, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
        far = T.position_error(sc, frac + torch.tensor([[3.0, 4.0]], dtype=torch.float64), geo)
        torch.testing.assert_close(far, torch.full((2,), 5.0 * geo.cell_m, dtype=torch.float64))

    def test_band_scan(self):
        # Views of 2020 against the band's own 2020 cells (the raw cells):
        # all but found, which checks the scan's placements; views of 2009
        # against them: fewer.
        same = T.band_scan(self.base, self.naip, map_years=(2020,), query_years=(2020,),
                           count=12, raw=True)
        self.assertEqual(sorted(same), ["compass", "unknown", "year"])
        self.assertTrue(np.all(same["year"] == 2020))
        self.assertGreaterEqual(same["compass"].mean(), 11 / 12)
        self.assertGreaterEqual(same["unknown"].mean(), 10 / 12)
        old = T.band_scan(self.base, self.naip, map_years=(2020,), count=12, raw=True)
        self.assertTrue(np.all(old["year"] == 2009))
        self.assertLess(old["compass"].mean() + old["unknown"].mean(),
                        same["compass"].mean() + same["unknown"].mean())
        with self.assertRaisesRegex(ValueError, "no dense head"):
            T.band_scan(self.base, self.naip, count=1)
        with self.assertRaisesRegex(ValueError, "year 2018: no raster"):
            T.band_scan(self.base, self.naip, count=1, raw=True)
        p = run_cli("dense-scan", "--model", self.base, "--naip", self.naip, "--map-years",
                    "2020", "--count", "3", "--raw", "--val-band", "north")
        lines = p.stdout.splitlines()
        self.assertTrue(lines[0].startswith("3 views of 2009 (3 of 2009-2010) in the north band"),
                        lines[0])
        self.assertTrue(lines[1].startswith("compass  all ") and lines[2].startswith("unknown  all "))

    def test_fused(self):
        # Trained within fused cells (--fuse-layer 10): the model carries
        # the fuse config, and the cells it trains and scans are the fine
        # stage's (fine.cells, fine.dense_features), queries and canvas.
        out = self.run_once(os.path.join(self.tmp.name, "f"), fuse_layer=10, fuse_weight=0.25)
        m = M.load_model(out)
        self.assertEqual(m.cfg.dense_head, dict(HEAD, fuse_layer=10, fuse_weight=0.25))
        self.assertGreater(float(m.dense_head.b3.weight.abs().max()), 0.0)
        geo = T.Geometry(m, 6)
        self.assertEqual((geo.fuse, geo.k, geo.size, geo.stride, geo.n, geo.px_m),
                         ((10, 0.25, 2), 2, 128, 16, 8, 2.5))
        imgs = np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
        with torch.no_grad():
            mine = T.cells_of(m.dense_head, geo, *T.query_inputs(m, geo, 6, imgs))
        ref = torch.from_numpy(fine.cells(m, imgs, 6)).permute(0, 3, 1, 2)
        self.assertEqual(mine.shape, (2, 128, 8, 8))
        torch.testing.assert_close(mine, ref, atol=2e-5, rtol=0)
        rasters, _, v = T._grounds(out, self.naip, m, 6, geo, "south")
        canvas = T.render_canvas(rasters[2009], v.x0, v.y_top, v.cols * 16, v.rows * 16, 2.5)
        with torch.no_grad():
            mine = T.cells_of(m.dense_head, geo, v.feats[2009][None], v.fused[2009][None])[0]
        ref = torch.from_numpy(fine.dense_features(m, canvas, 6)).permute(2, 0, 1)
        # Inside the canvas's border cells (the head's zero padding differs there).
        torch.testing.assert_close(mine[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=2e-5, rtol=0)
        # The band scan of fused cells: views of 2020 found on 2020's cells.
        same = T.band_scan(out, self.naip, map_years=(2020,), query_years=(2020,), count=8)
        self.assertGreaterEqual(same["compass"].mean(), 7 / 8)
        # --init: the head starts from another model's head of the same sizes.
        net = T.with_head(M.load_model(self.base), 6, 64, 56, 0, None, 10, 0.25)
        got = T.init_head(out, net)
        for k, t in m.dense_head.state_dict().items():
            self.assertTrue(torch.equal(got[k], t), k)
        with self.assertRaisesRegex(ValueError, "--init .* is not one of"):
            T.init_head(self.base, net)
        with self.assertRaisesRegex(ValueError, "--init .* is not one of"):
            T.init_head(out, T.with_head(M.load_model(self.base), 6, 32, 56, 0))

    def test_held_out_band(self):
        base = M.load_model(self.base)
        geo = T.Geometry(base, 6)
        for band in X.VAL_BANDS:
            rasters, g, v = T._grounds(self.base, self.naip, base, 6, geo, band)
            self.assertEqual((g.part, v.part, g.band, v.band), ("train", "val", band, band))
            # The canvases: training imagery outside the band and its
            # buffer, validation imagery inside the band, both on training
            # ground.
            tlo, thi = X.dense_northings("train", band)
            vlo, vhi = X.dense_northings("val", band)
            self.assertGreaterEqual(max(vlo - thi, tlo - vhi), X.VAL_BUFFER_M, band)
            self.assertTrue(g.y_bottom >= tlo and g.y_top <= thi, band)
            self.assertTrue(v.y_bottom >= vlo and v.y_top <= vhi, band)
            self.assertLessEqual(max(g.x1, v.x1), X.X_SPLIT - X.BUFFER_M)
            # Both parts are three tenths and the rest of the range, less the buffer.
            self.assertEqual(v.rows, 27, band)
            self.assertGreaterEqual(g.rows, 58, band)
            for ground, lo, hi in ((g, tlo, thi), (v, vlo, vhi)):
                s = T.draw_samples(np.random.default_rng(0), ground, rasters, 40)
                fp = s["footprint"]
                self.assertTrue(np.all((fp[:, :, 1] >= lo) & (fp[:, :, 1] < hi)),
                                (band, ground.part))
                self.assertTrue(np.all([X.dense_ok(f, ground.part, band) for f in fp]))
                self.assertFalse(np.any([X.dense_ok(f, "val" if ground.part == "train"
                                                    else "train", band) for f in fp]))
                self.assertTrue(np.all(fp[:, :, 0] <= X.X_SPLIT - X.BUFFER_M))
                # The windows with their context cell lie on the canvas.
                r, c = s["cell"][:, 0], s["cell"][:, 1]
                self.assertTrue(np.all(r >= 1) and np.all(r + T.WIN + 1 <= ground.rows))
                self.assertTrue(np.all(c >= 1) and np.all(c + T.WIN + 1 <= ground.cols))
                self.assertEqual(tuple(s["win"].shape[2:]), (T.WIN + 2, T.WIN + 2))
        with self.assertRaisesRegex(ValueError, "band 'east'"):
            X.dense_northings("val", "east")
        with self.assertRaisesRegex(ValueError, "--focus-share"):
            T.train_dense(self.base, self.naip, os.path.join(self.tmp.name, "x"), steps=1, batch=1,
                          seed=0, how=T.YearDraw(focus_years=(2009,), focus_share=1.5))
        with self.assertRaisesRegex(ValueError, "two years or more"):
            T.train_dense(self.base, self.naip, os.path.join(self.tmp.name, "x"), steps=1, batch=1,
                          seed=0, how=T.YearDraw(ref_years=(2020,)))
        with self.assertRaisesRegex(ValueError, "year 2012: no raster"):
            T.train_dense(self.base, self.naip, os.path.join(self.tmp.name, "x"), steps=1, batch=1,
                          seed=0, how=T.YearDraw(ref_years=(2012, 2020)))
        with self.assertRaisesRegex(ValueError, "--val-band"):
            T.train_dense(self.base, self.naip, os.path.join(self.tmp.name, "x"), steps=1, batch=1,
                          seed=0, val_band="east")

if __name__ == "__main__":
    unittest.main()
