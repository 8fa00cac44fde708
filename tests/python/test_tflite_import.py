"""Import of the 8-bit TFLite MobileNetV2: does our float model still see a cat?

This is the key check of the import.  Which things each test catches
(measured when the tests were written):
  * top-1 is a cat class: gross errors (wrong permutation, zero points...);
  * P(Egyptian cat) >= 0.80, the threshold Coral's own tests use for this
    model and image: symmetric PyTorch padding instead of TF SAME gives 0.788;
  * activations inside the ranges the file was calibrated with: ReLU
    instead of ReLU6 (values > 6) or a wrongly dequantized layer.
"""

import os
import tempfile
import unittest

import _common
import torch

from geoloc_train import image, model as M, ops, tflite

CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat"}


class ImportedMobileNetV2(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(_common.TFLITE, "rb") as f:
            cls.data = f.read()
        cls.graph = tflite.parse(cls.data)
        cls.model = tflite.import_mobilenet_v2(cls.data)
        with open(_common.LABELS, encoding="utf-8") as f:
            cls.labels = f.read().splitlines()
        cls.cat = image.to_batch(image.load_image(_common.CAT))
        with torch.no_grad():
            cls.probs = torch.softmax(cls.model.classify(cls.cat), dim=1)[0]

    def test_config(self):
        c = self.model.cfg
        self.assertFalse(c.bn)
        self.assertEqual(c.padding, "tf_same")
        self.assertEqual(c.activation, "relu6")
        self.assertEqual(c.input_size, [224, 224])
        # input scale 1/128, zero point 128 -> (q - 128) / 128
        self.assertEqual(c.mean, [128.0] * 3)
        self.assertEqual(c.std, [128.0] * 3)
        self.assertEqual(c.num_classes, 1001)
        self.assertEqual(len(self.labels), 1001)

    def test_cat_is_ranked_first(self):
        top = torch.topk(self.probs, 5)
        names = [self.labels[i] for i in top.indices.tolist()]
        print("\ncat.bmp top-5: " + "; ".join(
            f"{n} {p:.4f}" for n, p in zip(names, top.values.tolist())))
        self.assertIn(names[0], CAT_CLASSES)

    def test_egyptian_cat_score_as_coral_expects(self):
        egyptian = self.labels.index("Egyptian cat")
        self.assertEqual(egyptian, 286)
        self.assertEqual(int(self.probs.argmax()), egyptian)
        self.assertGreaterEqual(float(self.probs[egyptian]), 0.80)

    def test_activations_within_calibrated_ranges(self):
        # The quantized graph can only represent each op's output within
        # [scale * (0 - zp), scale * (255 - zp)] (ReLU6 layers: [0, 6]).
        outs = []
        hooks = [u.register_forward_hook(lambda mod, i, o: outs.append(o.detach()))
                 for u in self.model.modules() if isinstance(u, M.ConvUnit)]
        try:
            with torch.no_grad():
                self.model.classify(self.cat)
        finally:
            for h in hooks:
                h.remove()
        convs = [op for op in self.graph.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        self.assertEqual(len(outs), len(convs) - 1)  # the last conv is the classifier
        for n, (o, op) in enumerate(zip(outs, convs)):
            q = self.graph.tensors[op.outputs[0]].quant
            lo = q.scale[0] * (0 - q.zero_point[0]) - q.scale[0]
            hi = q.scale[0] * (255 - q.zero_point[0]) + q.scale[0]
            self.assertGreaterEqual(float(o.min()), lo, f"conv {n} (op {op.index}) below range")
            self.assertLessEqual(float(o.max()), hi, f"conv {n} (op {op.index}) above range")
            if op.options["activation"] == "RELU6":
                self.assertAlmostEqual(hi - q.scale[0], 6.0, places=2)

    def test_file_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "mnv2.safetensors")
            M.save_model(self.model, p)
            m2 = M.load_model(p)
        self.assertEqual(m2.cfg, self.model.cfg)
        with torch.no_grad():
            self.assertTrue(torch.equal(m2.classify(self.cat), self.model.classify(self.cat)))

    def test_graph_structure(self):
        names = [op.name for op in self.graph.ops]
        self.assertEqual(names.count("CONV_2D") + names.count("DEPTHWISE_CONV_2D"), 53)
        self.assertEqual(names.count("ADD"), 10)
        self.assertEqual(names[-4:], ["AVERAGE_POOL_2D", "CONV_2D", "RESHAPE", "SOFTMAX"])
        stem = self.graph.ops[0]
        self.assertEqual(stem.options["stride"], (2, 2))
        self.assertEqual(stem.options["padding"], "SAME")


class Dequantize(unittest.TestCase):
    def test_per_tensor(self):
        t = tflite.Tensor(0, "w", [3], "UINT8", bytes([0, 128, 255]),
                          tflite.Quant([0.5], [128], 0))
        self.assertEqual(tflite.dequantize(t).tolist(), [-64.0, 0.0, 63.5])

    def test_per_channel(self):
        # int8 [2, 2] with one (scale, zero point) per row (axis 0).
        t = tflite.Tensor(0, "w", [2, 2], "INT8", bytes([1, 2, 0xFF, 4]),
                          tflite.Quant([0.5, 2.0], [0, 1], 0))
        self.assertEqual(tflite.dequantize(t).tolist(), [[0.5, 1.0], [-4.0, 6.0]])

    def test_int32_bias(self):
        t = tflite.Tensor(0, "b", [2], "INT32", (-3).to_bytes(4, "little", signed=True) +
                          (7).to_bytes(4, "little", signed=True), tflite.Quant([0.25], [0], 0))
        self.assertEqual(tflite.dequantize(t).tolist(), [-0.75, 1.75])

    def test_size_mismatch(self):
        t = tflite.Tensor(0, "w", [4], "UINT8", bytes(3), tflite.Quant([1.0], [0], 0))
        with self.assertRaisesRegex(tflite.TFLiteError, "needs 4"):
            tflite.dequantize(t)


class CorruptFiles(unittest.TestCase):
    def setUp(self):
        with open(_common.TFLITE, "rb") as f:
            self.data = f.read()

    def test_not_tflite(self):
        with self.assertRaisesRegex(tflite.TFLiteError, "TFL3"):
            tflite.parse(b"\x10\0\0\0XXXX" + bytes(64))

    def test_truncated(self):
        with self.assertRaises(tflite.TFLiteError):
            tflite.import_mobilenet_v2(self.data[:len(self.data) // 2])

    def test_root_offset_out_of_range(self):
        with self.assertRaisesRegex(tflite.TFLiteError, "outside"):
            tflite.parse(b"\xff\xff\xff\x7fTFL3")


class TfSamePadding(unittest.TestCase):
    def test_pads(self):
        self.assertEqual(ops.same_pads(224, 3, 2, 1), (0, 1))  # odd pixel after
        self.assertEqual(ops.same_pads(113, 3, 2, 1), (1, 1))
        self.assertEqual(ops.same_pads(112, 3, 1, 1), (1, 1))
        self.assertEqual(ops.same_pads(7, 1, 1, 1), (0, 0))
        self.assertEqual(ops.same_pads(20, 3, 1, 2), (2, 2))

    def test_conv_matches_explicit_pad(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 2, 10, 9, generator=g)
        w = torch.randn(3, 2, 3, 3, generator=g)
        y = ops.conv2d(x, w, None, stride=2, padding="tf_same")
        # 10: out 5, total 1 -> (0, 1); 9: out 5, total 2 -> (1, 1)
        want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 0, 1)), w, stride=2)
        self.assertEqual(list(y.shape), [1, 3, 5, 5])
        self.assertTrue(torch.allclose(y, want, atol=1e-6))


if __name__ == "__main__":
    unittest.main()
