"""What `geoloc locate` reads from a photo's EXIF and XMP (libexiv2), and
what it does with it: JPEGs written here with known tags (Pillow for the
pixels, Debian's `exiv2` tool for the tags), checked through
`geoloc locate --show-meta` on a map of 100 m tiles with drone views of
known position and heading.

Exits 77 (skipped) without the exiv2 tool; needs $GEOLOC_BIN, GDAL's Python
bindings and Pillow."""

import csv
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

EXIV2 = shutil.which("exiv2")
if EXIV2 is None:
    print("skipped: the exiv2 tool is missing (apt-get install exiv2)")
    sys.exit(77)

import numpy as np  # noqa: E402

from _common import REPO  # noqa: E402

try:
    from geoloc_train import views as V
    from PIL import Image
except ImportError as e:  # no GDAL (python3-gdal) or Pillow (python3-pil)
    print(f"skipped: {e}")
    sys.exit(77)

GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")
MODEL = os.path.join(REPO, "data", "models", "geoloc-naip-mnv2-64.safetensors")
RASTER = os.path.join(REPO, "data", "naip", "m_4709963_se_14_1_20200831.tif")
DJI = "http://www.dji.com/drone-dji/1.0/"
TILE_M = 100.0
# The views: a 60-degree camera 138.6 m up sees 160 m (1.6 tiles) of ground.
SCALE, HFOV = 1.6, 60.0
ALT = SCALE * TILE_M / 2 / math.tan(math.radians(HFOV / 2))
F35 = 31  # 2 atan(36 / 62) = 60.3 degrees
X, Y, HEADING = 488197.0, 5207365.0, 37.0  # a point of the raster (EPSG:26914)


def metres(lat1, lon1, lat2, lon2):
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def dms(v):
    """An EXIF rational triple for |v| degrees."""
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = round(((v - d) * 60 - m) * 60 * 1000)
    return f"{d}/1 {m}/1 {s}/1000"


def tag(path, xmp=None, exif=None):
    """Sets XMP drone-dji properties and EXIF tags (name -> (type, value))
    with the exiv2 tool."""
    args = [EXIV2, "-M", f"reg drone-dji {DJI}"]
    for k, v in (xmp or {}).items():
        args += ["-M", f"set Xmp.drone-dji.{k} XmpText {v}"]
    for k, (t, v) in (exif or {}).items():
        args += ["-M", f"set {k} {t} {v}"]
    subprocess.run(args + [path], check=True, capture_output=True)


class PhotoMeta(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(GEOLOC, os.X_OK):
            raise unittest.SkipTest(f"{GEOLOC} is missing (set GEOLOC_BIN)")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.r = V.Raster.open(RASTER)
        lon, lat = cls.r.to_lonlat(np.array([X - 350, X + 350]), np.array([Y - 350, Y + 350]))
        cls.map = os.path.join(cls.tmp.name, "small.map")
        subprocess.run([GEOLOC, "map", "build", "--model", MODEL, "--ortho", RASTER, "--tile-m",
                        str(TILE_M), "--stride-m", "25", "--bbox",
                        f"{lon[0]:.7f},{lat[0]:.7f},{lon[1]:.7f},{lat[1]:.7f}", "--out", cls.map],
                       check=True, capture_output=True)
        lon, lat = cls.r.to_lonlat(X, Y)
        cls.lat, cls.lon = float(lat), float(lon)
        p = V.ViewParams(X, Y, HEADING, SCALE, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)
        cls.view, ok = V.render_view(cls.r, p, 480, tile_m=TILE_M, photometric=False)
        assert ok

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def photo(self, name, rgb=None, **tags):
        path = os.path.join(self.tmp.name, name)
        Image.fromarray(self.view if rgb is None else rgb).save(path, quality=92)
        if tags:
            tag(path, **tags)
        return path

    def dji_tags(self, yaw=HEADING, pitch=-90.0, orientation=1, gps=True, **more):
        xmp = {"RelativeAltitude": f"+{ALT:.2f}", "GimbalYawDegree": f"{yaw:+.1f}",
               "FlightYawDegree": "+3.0", "GimbalPitchDegree": f"{pitch:+.1f}"}
        xmp.update(more)
        exif = {"Exif.Photo.FocalLengthIn35mmFilm": ("Short", F35),
                "Exif.Image.Orientation": ("Short", orientation)}
        if gps:
            exif.update({
                "Exif.GPSInfo.GPSLatitudeRef": ("Ascii", "N" if self.lat >= 0 else "S"),
                "Exif.GPSInfo.GPSLatitude": ("Rational", dms(self.lat)),
                "Exif.GPSInfo.GPSLongitudeRef": ("Ascii", "E" if self.lon >= 0 else "W"),
                "Exif.GPSInfo.GPSLongitude": ("Rational", dms(self.lon))})
        return {"xmp": xmp, "exif": exif}

    def locate(self, path, *args, ok=True):
        p = subprocess.run([GEOLOC, "locate", "--model", MODEL, "--map", self.map, "--format",
                            "csv", "--top-k", "1", "--show-meta", *args, path],
                           capture_output=True, text=True, timeout=300)
        if ok:
            self.assertEqual(p.returncode, 0, p.stderr)
        rows = list(csv.DictReader(io.StringIO(p.stdout)))
        lines = {}
        for line in p.stderr.splitlines():
            m = re.match(r"geoloc locate: [^:]+: (meta|using|footprint) (.*)", line)
            if m:
                lines[m.group(1)] = (dict(re.findall(r"(\w+)=(\S+)", m.group(2))), m.group(2))
        return rows[0], lines, p.stderr

    def near(self, row, within=25.0):
        self.assertEqual(row["status"], "OK", row)
        err = metres(self.lat, self.lon, float(row["lat"]), float(row["lon"]))
        self.assertLess(err, within, row)
        return err

    def test_dji_photo(self):
        """Every tag read; the camera and heading used; the footprint; the
        photo's GPS printed beside the estimate."""
        row, lines, err = self.locate(self.photo("dji.jpg", **self.dji_tags()))
        meta, _ = lines["meta"]
        self.assertEqual(meta["orientation"], "1")
        self.assertEqual(meta["size"], "480x480")
        self.assertAlmostEqual(float(meta["altitude_m"]), round(ALT, 2))
        self.assertEqual(float(meta["yaw_deg"]), HEADING)
        self.assertIn("(drone-dji:GimbalYawDegree)", lines["meta"][1])
        self.assertEqual(float(meta["pitch_deg"]), -90.0)
        self.assertEqual(float(meta["focal35_mm"]), F35)
        lat, lon = map(float, meta["gps"].split(","))
        self.assertLess(metres(lat, lon, self.lat, self.lon), 0.1)
        used, text = lines["using"]
        self.assertEqual(float(used["heading_deg"]), HEADING)
        self.assertAlmostEqual(float(used["altitude_m"]), round(ALT, 2))
        self.assertAlmostEqual(float(used["hfov_deg"]),
                               math.degrees(2 * math.atan(36 / (2 * F35))), places=3)
        self.assertEqual(float(used["tilt_deg"]), 0.0)
        self.assertIn("(from the photo: heading, altitude, hfov, tilt)", text)
        fp, _ = lines["footprint"]
        # Cropped to at most twice the fine stage's input (128 pixels for
        # the shipped model's fused cells: gl_loc_crop_side).
        self.assertEqual(fp["side"], "256")
        self.assertEqual(fp["tile_m"], "100")
        self.near(row)
        self.assertRegex(err, r"the photo's GPS [-0-9.]+,[-0-9.]+ is \d+ m from the estimate")
        self.assertLess(abs((float(row["heading_deg"]) - HEADING + 180) % 360 - 180), 10, row)

    def test_options_win_over_the_photo(self):
        path = self.photo("dji2.jpg", **self.dji_tags())
        row, lines, _ = self.locate(path, "--altitude", "140", "--heading", "40")
        used, text = lines["using"]
        self.assertEqual(used["altitude_m"], "140")
        self.assertEqual(used["heading_deg"], "40")
        self.assertIn("(from the photo: hfov, tilt)", text)
        self.near(row)

    def test_flight_yaw_when_no_gimbal_yaw(self):
        path = self.photo("flight.jpg", xmp={"FlightYawDegree": "-20.5"})
        _, lines, _ = self.locate(path)
        self.assertIn("(drone-dji:FlightYawDegree)", lines["meta"][1])
        self.assertEqual(float(lines["using"][0]["heading_deg"]), 339.5)  # -20.5 clockwise
        self.assertNotIn("altitude_m", lines["using"][0])  # no camera: not cropped
        self.assertNotIn("footprint", lines)

    def test_orientation_turns_the_photo_upright(self):
        """The view stored turned a quarter left, with Orientation 6 (view
        it turned right) and the stored top's yaw: the same estimate."""
        stored = np.ascontiguousarray(np.rot90(self.view, 1))  # counter-clockwise
        tags = self.dji_tags(yaw=HEADING + 90, orientation=6)
        row, lines, _ = self.locate(self.photo("rot6.jpg", stored, **tags))
        self.assertEqual(lines["meta"][0]["orientation"], "6")
        used = lines["using"][0]
        self.assertEqual(used["orientation"], "6")
        self.assertAlmostEqual(float(used["heading_deg"]), HEADING)
        up, _, _ = self.locate(self.photo("up.jpg", **self.dji_tags()))
        self.near(row)
        self.assertLess(metres(float(row["lat"]), float(row["lon"]), float(up["lat"]),
                               float(up["lon"])), 10.0)
        # Without the metadata the stored (turned) image is used as it is.
        _, lines, _ = self.locate(self.photo("rot6b.jpg", stored, **tags), "--no-meta")
        self.assertNotIn("meta", lines)
        self.assertEqual(lines["using"][0]["orientation"], "1")

    def test_a_phone_photo_is_not_cropped(self):
        """A focal length alone (any phone writes one) is no camera."""
        path = self.photo("phone.jpg",
                          exif={"Exif.Photo.FocalLengthIn35mmFilm": ("Short", 26)})
        row, lines, err = self.locate(path)
        self.assertEqual(lines["meta"][0]["focal35_mm"], "26")
        self.assertNotIn("hfov_deg", lines["using"][0])
        self.assertIn("incomplete", err)
        self.assertEqual(row["status"], "OK")
        # ... unless the options complete it.
        row, lines, _ = self.locate(path, "--altitude", "120", "--tilt", "0")
        self.assertAlmostEqual(float(lines["using"][0]["hfov_deg"]),
                               math.degrees(2 * math.atan(36 / 52)), places=3)
        self.assertIn("footprint", lines)

    def test_pitch_near_nadir_and_out_of_range(self):
        row, lines, _ = self.locate(self.photo("p90.jpg", **self.dji_tags(pitch=-90.4)))
        self.assertEqual(lines["using"][0]["tilt_deg"], "0")
        row, lines, _ = self.locate(self.photo("p25.jpg", **self.dji_tags(pitch=-65.0)))
        self.assertEqual(lines["using"][0]["tilt_deg"], "25")
        # Pitch -20: tilt 70, beyond the 60 the footprint serves.
        path = self.photo("p20.jpg", **self.dji_tags(pitch=-20.0))
        row, _, err = self.locate(path, ok=False)
        self.assertEqual(row["status"], "BAD_REQUEST")
        self.assertIn("--tilt 70 is not a tilt from nadir", err)
        self.assertIn("--no-meta", err)
        row, _, _ = self.locate(path, "--no-meta")
        self.assertEqual(row["status"], "OK")

    def test_incomplete_options_are_refused(self):
        row, _, err = self.locate(self.photo("plain.jpg"), "--altitude", "120", ok=False)
        self.assertEqual(row["status"], "BAD_REQUEST")
        self.assertIn("--hfov and --tilt are missing", err)

    def test_footprint_out_of_range_is_refused(self):
        """From 20 m up the camera sees 23 m, far less than a 100 m tile."""
        row, _, err = self.locate(self.photo("low.jpg"), "--altitude", "20", "--hfov", "60",
                                  "--tilt", "0", ok=False)
        self.assertEqual(row["status"], "BAD_REQUEST")
        self.assertIn("23 x 23 m of ground", err)
        self.assertIn("100 m tiles", err)
        self.assertIn("tiles of at most 28 m", err)

    def test_png_without_metadata(self):
        path = os.path.join(self.tmp.name, "plain.png")
        Image.fromarray(self.view).save(path)
        row, lines, _ = self.locate(path, "--heading", str(HEADING))
        self.assertEqual(lines["meta"][0], {"orientation": "1", "size": "480x480"})
        self.assertEqual(row["status"], "OK")


if __name__ == "__main__":
    unittest.main()
