"""safetensors writer/reader: round trips, layout, and rejection of corrupt files."""

import json
import struct
import unittest

import _common  # noqa: F401  (sets sys.path)
import torch

from geoloc_train import safetensors as st
from geoloc_train.safetensors import SafetensorsError


def build(header, data: bytes = b"", hlen=None, pad=True) -> bytes:
    """A file image from a header dict and raw data, for crafting bad files."""
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * ((-(8 + len(h))) % 8)
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


class RoundTrip(unittest.TestCase):
    def test_all_dtypes_shapes_and_metadata(self):
        g = torch.Generator().manual_seed(0)
        tensors = {
            "f32": torch.randn(3, 5, generator=g),
            "f64": torch.randn(7, generator=g, dtype=torch.float64),
            "f16": torch.randn(2, 3, generator=g).half(),
            "bf16": torch.randn(5, generator=g).bfloat16(),
            "i64": torch.tensor([1, -2, 3 << 40]),
            "i32": torch.tensor([[1, 2, 3]], dtype=torch.int32),
            "i16": torch.tensor([-5], dtype=torch.int16),
            "i8": torch.tensor([-128, 127], dtype=torch.int8),
            "u8": torch.arange(11, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
            "noncontig": torch.randn(4, 6, generator=g).t(),
        }
        meta = {"format": "geoloc-model", "config": json.dumps({"a": 1})}
        data = st.dumps(tensors, meta)
        back, meta2 = st.loads(data)
        self.assertEqual(meta2, meta)
        self.assertEqual(set(back), set(tensors))
        for k, t in tensors.items():
            self.assertEqual(back[k].dtype, t.dtype, k)
            self.assertEqual(list(back[k].shape), list(t.shape), k)
            self.assertTrue(torch.equal(back[k], t), k)

    def test_layout_is_aligned_and_deterministic(self):
        a = {"b": torch.ones(3), "a": torch.arange(5, dtype=torch.float32), "c": torch.ones(2, 2)}
        b = {k: a[k] for k in ("c", "a", "b")}  # other insertion order
        data = st.dumps(a, {"x": "y"})
        self.assertEqual(data, st.dumps(b, {"x": "y"}))
        (hlen,) = struct.unpack_from("<Q", data)
        self.assertEqual((8 + hlen) % 8, 0, "data section must start 8-aligned")
        header = json.loads(data[8:8 + hlen])
        self.assertTrue(data[8:8 + hlen].rstrip(b" ").endswith(b"}"), "header padding is spaces")
        ends = []
        for name in ("a", "b", "c"):  # written in name order
            begin, end = header[name]["data_offsets"]
            self.assertEqual(begin % 8, 0, f"{name} starts at {begin}")
            ends.append((begin, end))
        self.assertEqual(ends, [(0, 20), (24, 36), (40, 56)])

    def test_reads_gap_free_files_as_upstream_writes_them(self):
        # Upstream safetensors packs tensors without alignment gaps.
        data = struct.pack("<3f", 1, 2, 3) + struct.pack("<2f", 4, 5)
        f = build({"a": entry("F32", [3], 0, 12), "b": entry("F32", [2], 12, 20)}, data)
        t, _ = st.loads(f)
        self.assertEqual(t["b"].tolist(), [4.0, 5.0])

    def test_file_round_trip(self):
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.safetensors")
            st.save(p, {"w": torch.eye(3)}, {"k": "v"})
            t, m = st.load(p)
            self.assertTrue(torch.equal(t["w"], torch.eye(3)))
            self.assertEqual(m, {"k": "v"})

    def test_writer_rejects_bad_input(self):
        with self.assertRaisesRegex(SafetensorsError, "str to str"):
            st.dumps({"a": torch.ones(1)}, {"n": 1})
        with self.assertRaisesRegex(SafetensorsError, "reserved"):
            st.dumps({"__metadata__": torch.ones(1)})
        with self.assertRaisesRegex(SafetensorsError, "unsupported dtype"):
            st.dumps({"c": torch.ones(2, dtype=torch.complex64)})


class Corrupt(unittest.TestCase):
    GOOD_DATA = struct.pack("<4f", 1, 2, 3, 4)

    def assertRejects(self, data, pattern):
        with self.assertRaisesRegex(SafetensorsError, pattern):
            st.loads(data)

    def test_good_baseline(self):
        st.loads(build({"a": entry("F32", [4], 0, 16)}, self.GOOD_DATA))

    def test_too_short(self):
        self.assertRejects(b"\x01\x00", "shorter than the 8-byte")

    def test_header_size_past_end(self):
        f = build({"a": entry("F32", [4], 0, 16)}, self.GOOD_DATA)
        self.assertRejects(struct.pack("<Q", len(f)) + f[8:], "past the end")

    def test_header_size_absurd(self):
        self.assertRejects(struct.pack("<Q", 1 << 60) + b"{}", "exceeds the limit")

    def test_header_size_too_small(self):
        self.assertRejects(struct.pack("<Q", 0) + b"{}", "too small")

    def test_bad_json(self):
        self.assertRejects(build(b'{"a": {"dtype": "F32", ', b""), "not valid JSON")

    def test_header_not_object(self):
        self.assertRejects(build(b'[1, 2]'), "start with '{'")

    def test_not_utf8(self):
        self.assertRejects(build(b'{"\xff": 1}'), "not UTF-8")

    def test_duplicate_key(self):
        h = (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
             b' "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}')
        self.assertRejects(build(h, self.GOOD_DATA), "duplicate key 'a'")

    def test_offsets_out_of_range(self):
        self.assertRejects(build({"a": entry("F32", [4], 0, 16)}, self.GOOD_DATA[:12]),
                           "out of range")
        self.assertRejects(build({"a": entry("F32", [4], 16, 0)}, self.GOOD_DATA), "out of range")
        self.assertRejects(build({"a": entry("F32", [1], -4, 0)}, self.GOOD_DATA), "out of range")

    def test_offsets_malformed(self):
        self.assertRejects(build({"a": entry("F32", [4], 0, None)}, self.GOOD_DATA), "data_offsets")
        self.assertRejects(build({"a": {"dtype": "F32", "shape": [4], "data_offsets": [True, 16]}},
                                 self.GOOD_DATA), "data_offsets")

    def test_overlapping_tensors(self):
        h = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16)}
        self.assertRejects(build(h, self.GOOD_DATA), "overlaps")

    def test_gap_that_is_not_alignment(self):
        h = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 12, 16)}
        self.assertRejects(build(h, self.GOOD_DATA), "gap")

    def test_nonzero_padding(self):
        h = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [2], 8, 16)}
        self.assertRejects(build(h, self.GOOD_DATA), "non-zero padding")

    def test_trailing_bytes(self):
        self.assertRejects(build({"a": entry("F32", [2], 0, 8)}, self.GOOD_DATA), "trailing")

    def test_unknown_dtype(self):
        self.assertRejects(build({"a": entry("F31", [4], 0, 16)}, self.GOOD_DATA), "unknown dtype 'F31'")

    def test_dtype_does_not_match_size(self):
        # F64 x 4 needs 32 bytes, the offsets give 16.
        self.assertRejects(build({"a": entry("F64", [4], 0, 16)}, self.GOOD_DATA), "need 32")

    def test_bad_shape(self):
        self.assertRejects(build({"a": entry("F32", [-4], 0, 16)}, self.GOOD_DATA), "shape")
        self.assertRejects(build({"a": entry("F32", "4", 0, 16)}, self.GOOD_DATA), "shape")

    def test_missing_or_extra_fields(self):
        self.assertRejects(build({"a": {"dtype": "F32", "shape": [4]}}, self.GOOD_DATA), "exactly")
        e = entry("F32", [4], 0, 16)
        e["extra"] = 1
        self.assertRejects(build({"a": e}, self.GOOD_DATA), "exactly")

    def test_bad_metadata(self):
        h = {"__metadata__": {"config": {"nested": 1}}, "a": entry("F32", [4], 0, 16)}
        self.assertRejects(build(h, self.GOOD_DATA), "__metadata__")

    def test_misaligned_element(self):
        h = {"a": entry("U8", [2], 0, 2), "b": entry("F32", [1], 2, 6)}
        self.assertRejects(build(h, self.GOOD_DATA[:6] + b"\0\0"), "not aligned")


class Half(unittest.TestCase):
    """F16 (IEEE binary16), the dtype of half-size model files."""

    # zeros, smallest and largest subnormal, smallest normal, 1, largest
    # finite (both signs), infinities, a quiet NaN
    BITS = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00]

    def test_f16_bits_and_values(self):
        n = len(self.BITS)
        raw = struct.pack(f"<{n}H", *self.BITS)
        t, _ = st.loads(build({"h": entry("F16", [n], 0, 2 * n)}, raw + b"\0" * (-len(raw) % 8)))
        h = t["h"]
        self.assertEqual(h.dtype, torch.float16)
        self.assertEqual([b & 0xFFFF for b in h.view(torch.int16).tolist()], self.BITS)
        # Python's own binary16 decoder ('e') is the reference for the values.
        want = struct.unpack(f"<{n}e", raw)
        got = h.float().tolist()
        for b, w, g in zip(self.BITS, want, got):
            if w != w:
                self.assertNotEqual(g, g, hex(b))
            else:
                self.assertEqual(struct.pack("<f", g), struct.pack("<f", w), hex(b))
        self.assertEqual(st.loads(st.dumps({"h": h}))[0]["h"].view(torch.int16).tolist(),
                         h.view(torch.int16).tolist())

    def test_f16_byte_size_and_alignment(self):
        # Four F16 elements need 8 bytes: 12 (F32-sized or corrupt) is refused.
        data = struct.pack("<6e", 1, 2, 3, 4, 5, 6) + b"\0" * 4
        with self.assertRaisesRegex(SafetensorsError, "12 bytes at data_offsets but dtype F16 "
                                    r"and shape \[4\] need 8"):
            st.loads(build({"a": entry("F16", [4], 0, 12)}, data))
        with self.assertRaisesRegex(SafetensorsError, "not aligned to its 2-byte elements"):
            st.loads(build({"a": entry("U8", [1], 0, 1), "b": entry("F16", [1], 1, 3)},
                           b"\0" * 8))


if __name__ == "__main__":
    unittest.main()
