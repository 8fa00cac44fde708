"""The camera footprint in C (src/img/footprint.c, through the test_footprint
binary's --crop mode) against the Python reference
(geoloc_train.footprint): the plan (side, samples per pixel, scales) and the
refusals agree, and the crops agree pixel for pixel, over random frames,
cameras and tile sizes; the EXIF orientation of decoded pixels against
Pillow's exif_transpose.

Needs $TEST_FOOTPRINT (the test binary) and Pillow."""

import os
import subprocess
import tempfile
import unittest

import numpy as np

from geoloc_train import footprint as FP

try:
    from PIL import Image
except ImportError:  # no python3-pil
    Image = None

TOOL = os.environ.get("TEST_FOOTPRINT", "")


def smooth_noise(rng, w, h):
    """An image with structure at every scale: smooth gradients, blobs and
    pixel noise, so that a sampling offset shows."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.01, 0.3, 2)
        img[..., c] = 128 + 60 * np.sin(fx * x + c) * np.cos(fy * y) + rng.normal(0, 20, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@unittest.skipIf(Image is None, "Pillow not installed")
@unittest.skipUnless(os.access(TOOL, os.X_OK), "set TEST_FOOTPRINT to the test_footprint binary")
class FootprintParity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def c_crop(self, png, alt, hfov, tilt, tile_m, min_side, max_side):
        out = os.path.join(self.tmp.name, "crop.rgb")
        p = subprocess.run([TOOL, "--crop", png, repr(alt), repr(hfov), repr(tilt), repr(tile_m),
                            str(min_side), str(max_side), out], capture_output=True, text=True)
        if p.returncode == 3:
            return p.stdout.strip(), None
        self.assertEqual(p.returncode, 0, p.stderr)
        f = p.stdout.split()
        side = int(f[0])
        return [int(v) for v in f[:3]] + [float(v) for v in f[3:]], \
            np.fromfile(out, np.uint8).reshape(side, side, 3)

    def check(self, rgb, alt, hfov, tilt, tile_m, min_side=32, max_side=128):
        png = os.path.join(self.tmp.name, "frame.png")
        Image.fromarray(rgb).save(png)
        h, w = rgb.shape[:2]
        plan, c = self.c_crop(png, alt, hfov, tilt, tile_m, min_side, max_side)
        case = f"{w}x{h} alt {alt} hfov {hfov} tilt {tilt} tile {tile_m}"
        try:
            fp = FP.plan(w, h, alt, hfov, tilt, tile_m, min_side, max_side)
        except FP.FootprintError as e:
            self.assertIsNone(c, f"{case}: C served what the reference refused ({e})")
            return "refused"
        self.assertIsNotNone(c, f"{case}: C refused what the reference serves: {plan}")
        self.assertEqual(plan[:3], [fp.side, fp.aa_x, fp.aa_y], case)
        for a, b in zip(plan[3:], [fp.gsd_x, fp.gsd_y, fp.crop_w, fp.crop_h]):
            self.assertAlmostEqual(a, b, delta=1e-12 * max(1.0, abs(b)), msg=case)
        p = FP.crop(rgb, fp)
        diff = np.abs(p.astype(int) - c.astype(int))
        # Identical arithmetic in the same order: equal, bar a rare rounding
        # of a value within 1e-12 of a half.
        self.assertLessEqual(diff.max(), 1, case)
        self.assertLessEqual((diff > 0).mean(), 1e-3, case)
        self.max_diff = max(getattr(self, "max_diff", 0), int(diff.max()))
        return "served"

    def test_known_cases(self):
        rng = np.random.default_rng(1)
        rgb = smooth_noise(rng, 400, 300)
        # Nadir 400 px over 0.5 m a pixel (200 m); a 100 m tile: 200 px to 128.
        self.assertEqual(self.check(rgb, 100.0, 90.0, 0.0, 100.0), "served")
        # Tilted: shorter along.
        self.assertEqual(self.check(rgb, 60.0, 90.0, 35.0, 100.0), "served")
        # Between 0.8 and 1 of a tile: reflected borders.
        self.assertEqual(self.check(rgb, 100.0, 90.0, 0.0, 180.0), "served")
        # Less than 0.8 of a tile, and too coarse.
        self.assertEqual(self.check(rgb, 100.0, 90.0, 0.0, 190.0), "refused")
        self.assertEqual(self.check(rgb, 1000.0, 90.0, 0.0, 150.0), "refused")
        # Enlarging: a crop smaller than the output side it gets.
        self.assertEqual(self.check(rgb, 300.0, 90.0, 0.0, 100.0, 16, 128), "served")

    def test_random_frames_and_cameras(self):
        rng = np.random.default_rng(7)
        outcomes = {"served": 0, "refused": 0}
        for _ in range(40):
            w, h = int(rng.integers(24, 640)), int(rng.integers(24, 480))
            rgb = smooth_noise(rng, w, h)
            alt = float(rng.uniform(20, 150))
            hfov = float(rng.uniform(30, 100))
            tilt = float(rng.choice([0.0, rng.uniform(0, 60)]))
            # Tiles around what the frame sees, so that both refusals and
            # both directions of scale come up.
            f = w / 2 / np.tan(np.radians(hfov) / 2)
            ct = np.cos(np.radians(tilt))
            seen = min(w * alt / (f * ct), h * alt / (f * ct * ct))
            tile_m = float(seen * rng.uniform(0.1, 1.4))
            outcomes[self.check(rgb, alt, hfov, tilt, tile_m, int(rng.integers(8, 40)),
                                int(rng.choice([64, 128, 200])))] += 1
        print(outcomes, "largest difference", getattr(self, "max_diff", 0))
        # The draw covers both.
        self.assertGreater(outcomes["served"], 10, outcomes)
        self.assertGreater(outcomes["refused"], 3, outcomes)

    def test_orientation_matches_pillow(self):
        rng = np.random.default_rng(3)
        rgb = smooth_noise(rng, 7, 5)
        png = os.path.join(self.tmp.name, "o.png")
        Image.fromarray(rgb).save(png)
        # Pillow's ImageOps.exif_transpose, orientation by orientation.
        ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
        out = os.path.join(self.tmp.name, "o.rgb")
        for o, op in ops.items():
            p = subprocess.run([TOOL, "--orient", png, str(o), out], capture_output=True,
                               text=True, check=True)
            w, h = map(int, p.stdout.split())
            want = np.asarray(Image.fromarray(rgb).transpose(op))
            self.assertEqual((h, w), want.shape[:2], o)
            np.testing.assert_array_equal(np.fromfile(out, np.uint8).reshape(h, w, 3), want,
                                          err_msg=f"orientation {o}")


if __name__ == "__main__":
    unittest.main()
