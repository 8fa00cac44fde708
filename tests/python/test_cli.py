"""The `python -m geoloc_train` commands, end to end (one process each)."""

import json
import math
import os
import tempfile
import unittest

import _common
import torch

from geoloc_train import model as M


class Cli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_import_tflite_and_classify(self):
        out = self.path("mnv2.safetensors")
        _common.run_cli("import-tflite", "--tflite", _common.TFLITE, "--out", out)
        p = _common.run_cli("classify", "--model", out, _common.CAT)
        lines = p.stdout.strip().splitlines()
        print("\n" + p.stdout)
        self.assertEqual(len(lines), 5)
        prob, idx, label = lines[0].split(None, 2)
        self.assertEqual((idx, label), ("286", "Egyptian cat"))
        self.assertGreaterEqual(float(prob), 0.80)

    def test_export_random_and_encode(self):
        cfg = self.path("c.json")
        with open(cfg, "w") as f:
            json.dump({"descriptor_dim": 256, "osm_dim": 128, "osm_groups": 2}, f)
        a, b = self.path("a.safetensors"), self.path("b.safetensors")
        _common.run_cli("export-random", "--config", cfg, "--seed", "5", "--out", a)
        _common.run_cli("export-random", "--config", cfg, "--seed", "5", "--out", b)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertEqual(fa.read(), fb.read(), "same seed must give the same file")
        p = _common.run_cli("encode", "--model", a, _common.CAT, _common.CAT)
        lines = p.stdout.strip().splitlines()
        self.assertEqual(len(lines), 2)
        vecs = [json.loads(line) for line in lines]
        for v in vecs:
            self.assertEqual(len(v), 256)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in v)), 1.0, places=5)
        self.assertEqual(vecs[0], vecs[1])

    def test_encode_png_and_jpeg(self):
        try:
            from PIL import Image
        except ImportError:
            self.skipTest("Pillow not installed (python3-pil)")
        import numpy as np
        from geoloc_train import image
        cat = image.load_image(_common.CAT).numpy()
        png, jpg = self.path("cat.png"), self.path("cat.jpg")
        Image.fromarray(cat).save(png)
        Image.fromarray(cat).save(jpg, quality=95)
        self.assertTrue(np.array_equal(image.load_image(png).numpy(), cat))
        self.assertEqual(tuple(image.load_image(jpg).shape), cat.shape)

    def test_errors_are_reported(self):
        p = _common.run_cli("encode", "--model", self.path("nope.safetensors"), _common.CAT,
                            check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("nope.safetensors", p.stderr)
        bad = self.path("bad.safetensors")
        with open(bad, "wb") as f:
            f.write(b"\xff" * 16)
        p = _common.run_cli("encode", "--model", bad, _common.CAT, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("header size", p.stderr)

    def test_testvectors(self):
        out = self.path("tv")
        _common.run_cli("testvectors", "--out", out, "--configs", "folded_gem",
                        "--sizes", "64x48,224x224")
        with open(os.path.join(out, "index.json")) as f:
            index = json.load(f)
        self.assertEqual(index["format"], "geoloc-testvectors")
        self.assertEqual(sorted(index["inputs"]), ["224x224", "64x48"])
        self.assertEqual(len(index["cases"]), 2)
        model = M.load_model(os.path.join(out, index["models"]["folded_gem"]["file"]))

        def read_f32(entry):
            with open(os.path.join(out, entry["file"]), "rb") as f:
                t = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
            return t.reshape(entry["shape"])

        for case in index["cases"]:
            inp = index["inputs"][case["input"]]
            with open(os.path.join(out, inp["file"]), "rb") as f:
                raw = f.read()
            self.assertEqual(len(raw), inp["width"] * inp["height"] * 3)
            img = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            img = img.reshape(inp["height"], inp["width"], 3).permute(2, 0, 1)[None].float()
            trace = {}
            with torch.no_grad():
                desc = model(img, trace)[0]
            self.assertTrue(torch.equal(read_f32(case["descriptor"]), desc))
            names = [e["name"] for e in case["intermediates"]]
            for want in ("preprocess", "backbone.features.0", "osm.0.proj",
                         "osm.1.groups.0.overlap", "fusion", "descriptor"):
                self.assertIn(want, names)
            for e in case["intermediates"]:
                self.assertTrue(torch.equal(read_f32(e), trace[e["name"]]), e["name"])


if __name__ == "__main__":
    unittest.main()
