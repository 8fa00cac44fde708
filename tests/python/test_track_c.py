"""The tracker's measurement on real imagery: the fine stage's windowed scan
(gl_loc_fine_scan) against brute force from the query cells and the pack's
dense layer, and the tracker locking on a frame seen in place
(tests/track/test_scan.c), on a pack built here from the shipped model and
a view rendered from the 2017 imagery.

Needs $TEST_SCAN and $GEOLOC_BIN, GDAL's Python bindings and Pillow."""

import os
import subprocess
import tempfile
import unittest

from _common import REPO

try:
    from geoloc_train import views as V
    from PIL import Image
except ImportError:  # no GDAL (python3-gdal) or Pillow (python3-pil)
    V = None

GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")
SCAN = os.environ.get("TEST_SCAN") or os.path.join(REPO, "build", "tests", "track", "test_scan")
MODEL = os.path.join(REPO, "data", "models", "geoloc-naip-mnv2-64.safetensors")
NAIP = os.path.join(REPO, "data", "naip")
BOX = (486400.0, 5206200.0, 487700.0, 5207500.0)  # EPSG:26914


@unittest.skipIf(V is None, "needs GDAL's Python bindings and Pillow")
class Scan(unittest.TestCase):
    def test_scan_against_brute_force(self):
        with tempfile.TemporaryDirectory(prefix="geoloc-scan-") as tmp:
            r = V.Raster.open(os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif"))
            lon, lat = r.to_lonlat([BOX[0], BOX[2]], [BOX[1], BOX[3]])
            pack = os.path.join(tmp, "box.map")
            subprocess.run([GEOLOC, "map", "build", "--model", MODEL, "--bbox",
                            "%.7f,%.7f,%.7f,%.7f" % (lon[0], lat[0], lon[1], lat[1]),
                            "--ortho", os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif"),
                            "--ortho", os.path.join(NAIP, "m_4709963_se_14_1_20190904.tif"),
                            "--out", pack], check=True, capture_output=True)
            r17 = V.Raster.open(os.path.join(NAIP, "m_4709963_se_14_1_20170827.tif"))
            p = V.ViewParams(487050.0, 5206850.0, 123.0, 1.0, 5.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)
            img, ok = V.render_view(r17, p, 128, photometric=False)
            self.assertTrue(ok)
            frame = os.path.join(tmp, "frame.png")
            Image.fromarray(img).save(frame)
            out = subprocess.run([SCAN, MODEL, pack, frame], capture_output=True, text=True,
                                 timeout=300)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            print(out.stdout, end="")
            self.assertIn("worst |difference|", out.stdout)
            for way in (1, 2):  # both ways of scoring were held to the chosen one
                self.assertIn("scoring way %d: worst |difference|" % way, out.stdout)


if __name__ == "__main__":
    unittest.main()
