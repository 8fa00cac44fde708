"""Model configs: build, descriptor shape and norm, files, determinism."""

import json
import os
import tempfile
import unittest

import _common  # noqa: F401  (sets sys.path)
import torch

from geoloc_train import model as M, ops, safetensors, testvectors
from geoloc_train.config import ConfigError, ModelConfig

CONFIGS = {
    "default": {},
    "resizer": {"resizer": True},
    "hierarchical": {"levels": [6, 13, 18]},
    "two_levels_gem": {"levels": [13, 18], "pool": "gem"},
    "small_folded_torchpad": {"bn": False, "padding": "torch", "osm_dim": 64, "osm_groups": 2,
                              "descriptor_dim": 128, "input_size": [96, 128], "activation": "relu"},
}
# (height, width): square, odd portrait, video frame, tiny.
SIZES = [(224, 224), (517, 333), (720, 1280), (17, 23)]


def image(h, w, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, h, w), generator=g).to(torch.float32)


class Descriptors(unittest.TestCase):
    def test_configs_and_sizes(self):
        for name, d in CONFIGS.items():
            cfg = ModelConfig.from_dict(d)
            torch.manual_seed(0)
            m = M.GeoNet(cfg).eval()
            for h, w in SIZES:
                with self.subTest(config=name, size=(h, w)), torch.no_grad():
                    trace = {}
                    out = m(image(h, w), trace)
                    self.assertEqual(list(out.shape), [1, cfg.descriptor_dim])
                    self.assertAlmostEqual(float(out.norm()), 1.0, places=5)
                    self.assertEqual(list(trace["preprocess"].shape), [1, 3] + cfg.input_size)
                    self.assertTrue(torch.isfinite(out).all())

    def test_batch_equals_single(self):
        m = M.randomize_for_test(M.GeoNet(ModelConfig()), 0)
        x = image(150, 200, batch=2)
        with torch.no_grad():
            both = m(x)
            one = torch.cat([m(x[:1]), m(x[1:])])
        self.assertTrue(torch.allclose(both, one, atol=1e-5))

    def test_trace_points(self):
        m = M.GeoNet(ModelConfig.from_dict({"resizer": True, "levels": [13, 18]})).eval()
        trace = {}
        with torch.no_grad():
            d = m(image(100, 120), trace)
        for name in ["preprocess", "resizer.features", "resizer.residual", "backbone.features.0",
                     "backbone.features.18", "osm.0.proj", "osm.1.groups.3.overlap",
                     "osm.1.groups.0.pooled", "osm.1.embed", "fusion", "descriptor"]:
            self.assertIn(name, trace)
        self.assertTrue(torch.equal(trace["descriptor"], d))
        self.assertEqual(list(trace["backbone.features.0"].shape), [1, 32, 112, 112])
        self.assertEqual(list(trace["osm.0.groups.0.overlap"].shape), [1, 1, 14, 14])
        m_ = trace["osm.0.groups.0.overlap"]
        self.assertTrue(bool(((m_ > 0) & (m_ < 1)).all()), "overlap map is a sigmoid")

    def test_fresh_resizer_is_bilinear(self):
        m = M.GeoNet(ModelConfig.from_dict({"resizer": True})).eval()
        x = image(300, 400)
        with torch.no_grad():
            got = m.preprocess(x)
        want = ops.resize_bilinear(ops.normalize(x, m.mean, m.std), (224, 224))
        self.assertTrue(torch.equal(got, want))

    def test_fusion_initial_weights(self):
        m = M.GeoNet(ModelConfig.from_dict({"levels": [6, 13, 18]}))
        self.assertEqual([round(v, 6) for v in m.fusion.weight.tolist()], [0.1, 0.4, 0.5])
        m = M.GeoNet(ModelConfig.from_dict({"levels": [13, 18]}))
        self.assertEqual([round(v, 6) for v in m.fusion.weight.tolist()], [0.4, 0.6])

    def test_bilinear_is_pytorch_half_pixel(self):
        # OPS.md's formula, written out, against the op the model uses.
        x = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7) ** 1.5
        y = ops.resize_bilinear(x, (3, 11))
        def idx(o, n_in, n_out):
            src = max((n_in / n_out) * (o + 0.5) - 0.5, 0.0)
            i0 = int(src)
            i1 = i0 + 1 if i0 < n_in - 1 else i0
            return i0, i1, src - i0
        for i in range(3):
            h0, h1, lh = idx(i, 5, 3)
            for j in range(11):
                w0, w1, lw = idx(j, 7, 11)
                v = ((1 - lh) * ((1 - lw) * x[0, 0, h0, w0] + lw * x[0, 0, h0, w1])
                     + lh * ((1 - lw) * x[0, 0, h1, w0] + lw * x[0, 0, h1, w1]))
                self.assertAlmostEqual(float(y[0, 0, i, j]), float(v), places=3)

    def test_pools_and_l2(self):
        x = torch.tensor([[[[1.0, 3.0]], [[-2.0, 4.0]]]])  # [1, 2, 1, 2]
        m = torch.tensor([[[[1.0, 0.0]]]])
        self.assertTrue(torch.allclose(ops.weighted_mean_pool(x, m), torch.tensor([[1.0, -2.0]]),
                                       atol=1e-5))
        gem = ops.weighted_gem_pool(x, torch.ones(1, 1, 1, 2), 3.0)
        want = torch.tensor([[((1 + 27) / 2) ** (1 / 3), ((1e-18 + 64) / 2) ** (1 / 3)]])
        self.assertTrue(torch.allclose(gem, want, atol=1e-4))
        self.assertTrue(torch.equal(ops.l2_normalize(torch.zeros(1, 4)), torch.zeros(1, 4)))


class Folding(unittest.TestCase):
    def test_fold_batch_norm_preserves_the_function(self):
        m = M.randomize_for_test(M.GeoNet(ModelConfig()), 3)
        f = M.fold_batch_norm(m)
        self.assertFalse(f.cfg.bn)
        self.assertFalse(any(".bn." in k for k in M.model_tensors(f)))
        x = image(240, 320, seed=5)
        with torch.no_grad():
            a, b = m(x), f(x)
        self.assertGreater(float((a * b).sum()), 0.99999)


class Files(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_save_load_same_descriptor(self):
        m = testvectors.random_model(ModelConfig.from_dict({"levels": [13, 18], "bn": False}), 4)
        M.save_model(m, self.path("m.safetensors"))
        m2 = M.load_model(self.path("m.safetensors"))
        self.assertEqual(m2.cfg, m.cfg)
        x = image(90, 160)
        with torch.no_grad():
            self.assertTrue(torch.equal(m(x), m2(x)))
        tensors, meta = safetensors.load(self.path("m.safetensors"))
        self.assertEqual(meta["format"], "geoloc-model")
        self.assertEqual(meta["format_version"], "1")
        self.assertEqual(json.loads(meta["config"])["levels"], [13, 18])
        self.assertTrue(all(t.dtype == torch.float32 for t in tensors.values()))
        self.assertNotIn("backbone.features.0.bn.num_batches_tracked", tensors)

    def _write(self, tensors, meta):
        safetensors.save(self.path("bad.safetensors"), tensors, meta)
        return self.path("bad.safetensors")

    def test_load_rejects_mismatches(self):
        m = M.GeoNet(ModelConfig())
        good = M.model_tensors(m)
        meta = {"format": "geoloc-model", "format_version": "1", "config": m.cfg.to_json()}
        missing = dict(good)
        del missing["osm.0.embed.bias"]
        with self.assertRaisesRegex(ConfigError, "missing.*osm.0.embed.bias"):
            M.load_model(self._write(missing, meta))
        wrong = dict(good, **{"osm.0.embed.bias": torch.zeros(7)})
        with self.assertRaisesRegex(ConfigError, "osm.0.embed.bias.*shape"):
            M.load_model(self._write(wrong, meta))
        with self.assertRaisesRegex(ConfigError, "format_version"):
            M.load_model(self._write(good, dict(meta, format_version="2")))
        with self.assertRaisesRegex(ConfigError, "unknown config field.*osm_dims"):
            M.load_model(self._write(good, dict(meta, config='{"osm_dims": 3}')))
        with self.assertRaisesRegex(ConfigError, "format"):
            M.load_model(self._write(good, {"config": m.cfg.to_json()}))


class HalfPrecision(unittest.TestCase):
    """Model files stored as F16: half the size, loaded as float32."""

    CFG = {"input_size": [64, 64], "osm_dim": 64, "osm_groups": 2, "descriptor_dim": 128}

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_f16_round_trip(self):
        m = testvectors.random_model(ModelConfig.from_dict(self.CFG), 5)
        M.save_model(m, self.path("m32.safetensors"))
        M.save_model(m, self.path("m16.safetensors"), dtype=torch.float16)
        size32 = os.path.getsize(self.path("m32.safetensors"))
        size16 = os.path.getsize(self.path("m16.safetensors"))
        self.assertLess(size16, 0.52 * size32)

        # The file holds each tensor rounded to nearest float16.
        src = M.model_tensors(m)
        stored, meta = safetensors.load(self.path("m16.safetensors"))
        self.assertEqual(set(stored), set(src))
        self.assertEqual(meta["config"], m.cfg.to_json())
        for k, v in stored.items():
            self.assertEqual(v.dtype, torch.float16, k)
            self.assertTrue(torch.equal(v, src[k].half()), k)

        # Loading gives float32 tensors equal to the half-rounded values.
        m16 = M.load_model(self.path("m16.safetensors"))
        self.assertEqual(m16.cfg, m.cfg)
        for k, v in M.model_tensors(m16).items():
            self.assertEqual(v.dtype, torch.float32, k)
            self.assertTrue(torch.equal(v, src[k].half().float()), k)
        for k, v in m16.state_dict().items():
            if v.is_floating_point():
                self.assertEqual(v.dtype, torch.float32, k)

        # Saving the loaded model as F16 again changes nothing.
        M.save_model(m16, self.path("again.safetensors"), dtype=torch.float16)
        with open(self.path("m16.safetensors"), "rb") as a, \
                open(self.path("again.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())

        # The same function as the float32 model with its weights rounded.
        rounded = M.GeoNet(m.cfg)
        rounded.load_state_dict({k: v.half().float() for k, v in src.items()}, strict=False)
        x = image(80, 100, seed=2, batch=2)
        with torch.no_grad():
            self.assertTrue(torch.equal(m16(x), rounded.eval()(x)))

    def test_f16_rounding_subnormals_and_range(self):
        m = M.GeoNet(ModelConfig.from_dict(self.CFG))
        name = "osm.0.embed.bias"
        w = dict(m.named_parameters())[name]
        with torch.no_grad():
            w.zero_()
            # 1 + 2^-11 is a tie (rounds to even, 1); 1e-6 and -2^-24 are F16
            # subnormals; 65504 is the largest finite F16.
            w[:4] = torch.tensor([1 + 2 ** -11, 1e-6, -2.0 ** -24, 65504.0])
        M.save_model(m, self.path("h.safetensors"), dtype=torch.float16)
        got = M.model_tensors(M.load_model(self.path("h.safetensors")))[name][:4]
        want = torch.tensor([1.0, 1e-6, -2.0 ** -24, 65504.0]).half().float()
        self.assertTrue(torch.equal(got, want), (got, want))
        self.assertEqual(float(got[1]), 17 * 2.0 ** -24)  # the nearest multiple of 2^-24
        with torch.no_grad():
            w[0] = 70000.0
        with self.assertRaisesRegex(ValueError, f"{name}.*beyond the torch.float16 range"):
            M.save_model(m, self.path("big.safetensors"), dtype=torch.float16)
        with self.assertRaisesRegex(ValueError, "float32 or float16"):
            M.save_model(m, self.path("bf.safetensors"), dtype=torch.bfloat16)

    def test_load_refuses_other_dtypes(self):
        m = M.GeoNet(ModelConfig.from_dict(self.CFG))
        meta = {"format": "geoloc-model", "format_version": "1", "config": m.cfg.to_json()}
        tensors = dict(M.model_tensors(m))
        tensors["osm.0.embed.bias"] = tensors["osm.0.embed.bias"].bfloat16()
        safetensors.save(self.path("bf16.safetensors"), tensors, meta)
        with self.assertRaisesRegex(ConfigError, "osm.0.embed.bias.*bfloat16, expected float32 "
                                    "or float16"):
            M.load_model(self.path("bf16.safetensors"))

    def test_to_fp16_cli(self):
        with open(self.path("cfg.json"), "w") as f:
            json.dump(self.CFG, f)
        src, out = self.path("m.safetensors"), self.path("m16.safetensors")
        _common.run_cli("export-random", "--config", self.path("cfg.json"), "--seed", "3",
                        "--out", src)
        p = _common.run_cli("to-fp16", "--model", src, "--out", out)
        self.assertIn(f"wrote {out}: {os.path.getsize(out)} bytes", p.stdout)
        self.assertLess(os.path.getsize(out), 0.52 * os.path.getsize(src))
        line = [s for s in p.stdout.splitlines() if s.startswith("worst descriptor cosine")]
        self.assertEqual(len(line), 1, p.stdout)
        self.assertIn("over 4 test images at 64x64", line[0])
        cos = float(line[0].rsplit(":", 1)[1])
        # The same number, recomputed from the two files.
        a, b = M.load_model(src), M.load_model(out)
        x = torch.stack([testvectors.test_image(64, 64, s).permute(2, 0, 1)
                         for s in range(1, 5)]).float()
        with torch.no_grad():
            want = float(torch.nn.functional.cosine_similarity(
                a(x).double(), b(x).double(), dim=1).min())
        # Random test models amplify small weight changes in their OSM head
        # (a relative 1e-4 perturbation in float32 costs as much), so the
        # value itself is not a measure of float16 here.
        self.assertAlmostEqual(cos, want, places=7)
        self.assertTrue(0 < cos < 1, cos)
        for k, v in safetensors.load(out)[0].items():
            self.assertEqual(v.dtype, torch.float16, k)
        p = _common.run_cli("to-fp16", "--model", src, "--out", src, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--out must name another file", p.stderr)


class Determinism(unittest.TestCase):
    def test_same_seed_same_bytes(self):
        cfg = ModelConfig.from_dict({"osm_dim": 64, "osm_groups": 2, "input_size": [64, 64]})
        a = safetensors.dumps(M.model_tensors(testvectors.random_model(cfg, 7)))
        b = safetensors.dumps(M.model_tensors(testvectors.random_model(cfg, 7)))
        c = safetensors.dumps(M.model_tensors(testvectors.random_model(cfg, 8)))
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_test_image_is_deterministic(self):
        self.assertTrue(torch.equal(testvectors.test_image(33, 21, 1), testvectors.test_image(33, 21, 1)))
        self.assertFalse(torch.equal(testvectors.test_image(33, 21, 1), testvectors.test_image(33, 21, 2)))


class Config(unittest.TestCase):
    def test_defaults(self):
        c = ModelConfig.from_dict({})
        self.assertEqual(c, ModelConfig())
        self.assertEqual((c.input_size, c.descriptor_dim, c.padding, c.activation),
                         ([224, 224], 512, "tf_same", "relu6"))
        self.assertEqual(ModelConfig.from_json(c.to_json()), c)
        self.assertEqual(ModelConfig.from_dict({"input_size": 160}).input_size, [160, 160])

    def test_errors_name_the_field(self):
        for bad, field in [({"padding": "same"}, "padding"), ({"levels": [18, 6]}, "levels"),
                           ({"osm_groups": 3}, "osm_groups"), ({"pool": "max"}, "pool"),
                           ({"branches": "separate"}, "branches"), ({"width": 1}, "width"),
                           ({"fusion_init": [1.0, 2.0]}, "fusion_init"),
                           ({"descriptor": False}, "descriptor"),
                           ({"ref_rotations": 3}, "ref_rotations"),
                           ({"ref_rotations": 2, "input_size": [64, 96]}, "ref_rotations")]:
            with self.subTest(bad=bad), self.assertRaisesRegex(ConfigError, field):
                ModelConfig.from_dict(bad)


if __name__ == "__main__":
    unittest.main()
