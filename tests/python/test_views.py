"""Tiles, simulated drone views and the naip-xtime protocol
(geoloc_train.views, geoloc_train.xtime) on the real NAIP GeoTIFFs and on
small synthetic rasters.

The map builder cross-check runs `geoloc map build` from $GEOLOC_BIN (else
build/tools/geoloc) and skips when that binary is missing or was built
without map support."""

import csv
import math
import os
import sqlite3
import subprocess
import tempfile
import unittest

import numpy as np
from osgeo import gdal, osr
from PIL import Image

from _common import REPO, run_cli
from geoloc_train import views as V
from geoloc_train import xtime as X

NAIP = os.path.join(REPO, "data", "naip")
R2020 = os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif")
GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")


def write_tif(path, arr, gt=(480000.0, 2.0, 0.0, 5210000.0, 0.0, -2.0), epsg=26914,
              dtype=gdal.GDT_Byte):
    """A GeoTIFF from a (bands, H, W) array; gt/epsg None leave them out."""
    ds = gdal.GetDriverByName("GTiff").Create(path, arr.shape[2], arr.shape[1], arr.shape[0],
                                              dtype)
    if gt:
        ds.SetGeoTransform(gt)
    if epsg:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetSpatialRef(srs)
    for b in range(arr.shape[0]):
        ds.GetRasterBand(b + 1).WriteArray(arr[b])
    ds = None
    return path


def plain(cx, cy, heading=0.0, scale=1.0, tilt=0.0):
    return V.ViewParams(cx, cy, heading, scale, tilt, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def red_centroid(img):
    """(row, col) in pixel-centre coordinates (pixel i spans i..i+1) of the
    red marker's centre of mass."""
    w = np.clip(img[..., 0].astype(float) - img[..., 1], 0, None)
    r, c = np.indices(w.shape)
    return (w * (r + 0.5)).sum() / w.sum(), (w * (c + 0.5)).sum() / w.sum()


class SyntheticViews(unittest.TestCase):
    """A grey 2 m/px raster with a red 3x3-pixel marker north of the view
    centre: where the marker lands fixes the camera geometry."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        arr = np.full((3, 400, 400), 100, np.uint8)
        arr[:, 99:102, 199:202] = [[[255]], [[0]], [[0]]]   # marker centre pixel (200, 100)
        cls.r = V.Raster.open(write_tif(os.path.join(cls.tmp.name, "syn.tif"), arr))
        # marker centre: x = 480000 + 200.5 * 2, y = 5210000 - 100.5 * 2
        cls.mx, cls.my = 480401.0, 5209799.0
        cls.cx, cls.cy = cls.mx, cls.my - 80.0             # view centre 80 m south of it

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_headings(self):
        # 320 m footprint on 160 px = 2 m/px: the marker is 40 px from the centre.
        expect = {0: (40.0, 80.0), 90: (80.0, 40.0), 180: (120.0, 80.0), 270: (80.0, 120.0)}
        for heading, (row, col) in expect.items():
            img, valid = V.render_view(self.r, plain(self.cx, self.cy, heading), 160,
                                       photometric=False)
            self.assertTrue(valid)
            got = red_centroid(img)
            self.assertAlmostEqual(got[0], row, delta=0.5, msg=f"heading {heading}: {got}")
            self.assertAlmostEqual(got[1], col, delta=0.5, msg=f"heading {heading}: {got}")

    def test_tilt(self):
        # Scalar geometry: the camera sits dist back along the centre ray,
        # pitched by t towards north; the marker d north of the centre is
        # seen at atan((d + dist sin t) / (dist cos t)) - t above the axis.
        size, d = 160, 80.0
        half = math.tan(math.radians(V.FOV_DEG / 2))
        dist = V.TILE_M / 2 / half
        for tilt in (10.0, 25.0):
            t = math.radians(tilt)
            up = math.atan((d + dist * math.sin(t)) / (dist * math.cos(t))) - t
            row = size / 2 - math.tan(up) / half * size / 2
            img, valid = V.render_view(self.r, plain(self.cx, self.cy, 0.0, 1.0, tilt), size,
                                       photometric=False)
            self.assertTrue(valid)
            got = red_centroid(img)
            self.assertAlmostEqual(got[0], row, delta=0.5, msg=f"tilt {tilt}")
            self.assertAlmostEqual(got[1], size / 2, delta=0.5, msg=f"tilt {tilt}")
            self.assertGreater(row, 40.0)          # the far side is compressed

    def test_outside_is_invalid(self):
        _, valid = V.render_view(self.r, plain(480050.0, 5209700.0), 64, photometric=False)
        self.assertFalse(valid)
        _, valid = V.render_view(self.r, plain(480400.0, 5209600.0), 64, photometric=False)
        self.assertTrue(valid)

    def test_sample_at_pixel_centres(self):
        v, ok = self.r.sample(np.array([self.mx, self.mx + 2.0, self.mx + 1.0]),
                              np.array([self.my, self.my, self.my]))
        np.testing.assert_allclose(v, [[255, 0, 0], [255, 0, 0], [255, 0, 0]])
        v, ok = self.r.sample(np.array([self.mx + 3.0]), np.array([self.my]))
        np.testing.assert_allclose(v, [[177.5, 50, 50]])
        self.assertTrue(ok.all())
        _, ok = self.r.sample(np.array([480000.5, 480001.0]), np.array([5209500.0] * 2))
        self.assertEqual(ok.tolist(), [False, True])

    def test_open_errors(self):
        d = self.tmp.name
        cases = {
            "nogeo.tif": dict(arr=np.zeros((3, 8, 8), np.uint8), gt=None, epsg=None),
            "oneband.tif": dict(arr=np.zeros((1, 8, 8), np.uint8)),
            "u16.tif": dict(arr=np.zeros((3, 8, 8), np.uint16), dtype=gdal.GDT_UInt16),
            "lonlat.tif": dict(arr=np.zeros((3, 8, 8), np.uint8),
                               gt=(-99.0, 1e-4, 0.0, 47.0, 0.0, -1e-4), epsg=4326),
        }
        for name, kw in cases.items():
            path = write_tif(os.path.join(d, name), **kw)
            with self.assertRaises(ValueError, msg=name):
                V.Raster.open(path)


class Footprints(unittest.TestCase):
    def test_nadir_square_and_scale(self):
        for scale in (0.8, 1.0, 1.25):
            fp = V.footprint(plain(1000.0, 2000.0, 0.0, scale))
            s = scale * V.TILE_M / 2
            np.testing.assert_allclose(fp, [[1000 - s, 2000 + s], [1000 + s, 2000 + s],
                                            [1000 + s, 2000 - s], [1000 - s, 2000 - s]],
                                       atol=1e-9)

    def test_render_matches_footprint(self):
        rng = np.random.default_rng(3)
        for _ in range(5):
            p = V.random_view(rng, 5000.0, 7000.0)
            fp = V.footprint(p)
            # A homography keeps incidence: the image diagonals meet at the
            # centre, so the footprint's diagonals meet at (cx, cy).
            (x1, y1), (x2, y2), (x3, y3), (x4, y4) = fp
            den = (x1 - x3) * (y2 - y4) - (y1 - y3) * (x2 - x4)
            u = ((x1 - x2) * (y2 - y4) - (y1 - y2) * (x2 - x4)) / den
            np.testing.assert_allclose([x1 + u * (x3 - x1), y1 + u * (y3 - y1)],
                                       [p.cx, p.cy], atol=1e-6)
            # Corner pixel centres lie half a pixel (of at most side / n) in.
            n = 2000
            x, y = V.ground_coords(p, n)
            corners = np.array([[x[0, 0], y[0, 0]], [x[0, -1], y[0, -1]],
                                [x[-1, -1], y[-1, -1]], [x[-1, 0], y[-1, 0]]])
            side = np.max(np.hypot(*(fp - np.roll(fp, 1, axis=0)).T))
            np.testing.assert_allclose(corners, fp, atol=2 * side / n)


class Naip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = V.Raster.open(R2020)
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_raster(self):
        self.assertEqual(self.r.date, "2020-08-31")
        self.assertEqual(self.r.rgb.shape, (723, 934, 3))
        self.assertEqual(self.r.extent(), (485899.0, 5205631.0, 490569.0, 5209246.0))
        lon, lat = self.r.to_lonlat(np.array([488000.0]), np.array([5207000.0]))
        x, y = self.r.from_lonlat(lon, lat)
        self.assertAlmostEqual(float(x[0]), 488000.0, places=5)
        self.assertAlmostEqual(float(y[0]), 5207000.0, places=5)

    def test_grid(self):
        c = V.grid_corners(self.r.extent())
        self.assertEqual(len(c), 55 * 41)
        np.testing.assert_array_equal(c[0], [485920.0, 5208880.0])     # north-west first
        np.testing.assert_array_equal(c[1], [486000.0, 5208880.0])     # then east
        np.testing.assert_array_equal(c[55], [485920.0, 5208800.0])    # next row south
        np.testing.assert_array_equal(c[-1], [490240.0, 5205680.0])

    def test_render_tile_matches_gdal(self):
        # The map builder's read (src/map/grid.c): a floating-point window,
        # GDAL's RasterIO bilinear.
        ds = gdal.Open(R2020)
        g = ds.GetGeoTransform()
        corners = V.grid_corners(self.r.extent())
        for size in (64, 128, 224):
            for x0, y0 in corners[[0, 54, 700, 1500, -1]]:
                px, py = (x0 - g[0]) / g[1], (y0 + V.TILE_M - g[3]) / g[5]
                buf = ds.ReadRaster(px, py, V.TILE_M / g[1], V.TILE_M / -g[5], size, size,
                                    band_list=[1, 2, 3], resample_alg=gdal.GRIORA_Bilinear)
                want = np.frombuffer(buf, np.uint8).reshape(3, size, size).transpose(1, 2, 0)
                got = V.render_tile(self.r, x0, y0, size)
                diff = np.abs(got.astype(int) - want)
                self.assertLessEqual(diff.max(), 1, f"{size} px tile at {x0},{y0}")
                self.assertLess((diff > 0).mean(), 0.01, f"{size} px tile at {x0},{y0}")

    def test_xtime_split(self):
        self.assertEqual(X.split_easting(self.r), X.X_SPLIT)
        centres = V.grid_corners(self.r.extent()) + V.TILE_M / 2
        self.assertGreaterEqual(np.abs(centres[:, 0] - X.X_SPLIT).min(), 20.0)
        west, south, east, north = X.east_bbox(self.r)
        lon, lat = self.r.to_lonlat(centres[:, 0], centres[:, 1])
        in_box = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
        np.testing.assert_array_equal(in_box, centres[:, 0] > X.X_SPLIT)
        ref = X.reference_corners(self.r)
        self.assertEqual(len(ref), int(in_box.sum()))
        self.assertEqual(X.bbox_string(NAIP), ",".join(
            f"{v:.7f}" for v in (west, south, east, north)))

    def test_train_ok(self):
        edge = X.X_SPLIT - X.BUFFER_M
        self.assertTrue(X.train_ok(V.tile_corners(edge - V.TILE_M, 5206000.0)))
        self.assertFalse(X.train_ok(V.tile_corners(edge - V.TILE_M + 1, 5206000.0)))
        p = plain(edge - 200.0, 5207000.0, 45.0)     # the rotated square reaches 226 m east
        self.assertFalse(X.train_ok(V.footprint(p)))
        p.cx -= 30.0
        self.assertTrue(X.train_ok(V.footprint(p)))
        self.assertTrue(all(X.train_ok(V.tile_corners(*c)) for c in X.train_corners(self.r)))
        self.assertFalse(any(X.train_ok(V.tile_corners(*c)) for c in X.reference_corners(self.r)))

    def test_render_view_deterministic(self):
        p = V.random_view(np.random.default_rng(11), 489000.0, 5207500.0)
        a, ok = V.render_view(self.r, p, 64)
        b, _ = V.render_view(self.r, p, 64)
        self.assertTrue(ok)
        self.assertEqual(a.shape, (64, 64, 3))
        np.testing.assert_array_equal(a, b)

    def test_eval_set(self):
        outs = [os.path.join(self.tmp.name, f"eval{i}") for i in range(2)]
        for out in outs:
            X.make_eval_set(NAIP, out, count=20, seed=5, size=96)
        with open(os.path.join(outs[0], "labels.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(list(rows[0])[:4], ["file", "lat", "lon", "heading"])
        self.assertEqual(len(rows), 20)
        xa, ya, xb, yb = X.centre_range(self.r)
        for row in rows:
            with Image.open(os.path.join(outs[0], row["file"])) as im:
                self.assertEqual((im.format, im.size, im.mode), ("JPEG", (96, 96), "RGB"))
            x, y = self.r.from_lonlat(float(row["lon"]), float(row["lat"]))
            self.assertTrue(xa - 0.1 <= x <= xb + 0.1 and ya - 0.1 <= y <= yb + 0.1, row)
            self.assertTrue(0 <= float(row["heading"]) < 360)
            self.assertNotEqual(row["date"][:4], "2020")
        self.assertGreater(len({row["date"] for row in rows}), 3)
        for name in ["labels.csv"] + [row["file"] for row in rows]:
            with open(os.path.join(outs[0], name), "rb") as a, \
                    open(os.path.join(outs[1], name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)

    def test_cli(self):
        p = run_cli("xtime-bbox", "--naip", NAIP)
        self.assertEqual(p.stdout.strip(), X.bbox_string(NAIP))
        out = os.path.join(self.tmp.name, "flight")
        run_cli("make-flight", "--naip", NAIP, "--out", out, "--frames", "12", "--size", "64")
        with open(os.path.join(out, "labels.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 12)
        pts = np.array([self.r.from_lonlat(float(r["lon"]), float(r["lat"])) for r in rows])
        steps = np.hypot(*np.diff(pts, axis=0).T)
        self.assertTrue(np.all((steps > 39) & (steps < 61)), steps)
        self.assertTrue(np.all(pts[:, 0] > X.X_SPLIT))
        for r, d in zip(rows[:-1], np.diff(pts, axis=0)):     # heading along the path
            course = math.degrees(math.atan2(d[0], d[1])) % 360
            self.assertLess(abs((float(r["heading"]) - course + 180) % 360 - 180), 0.5)

    def test_water(self):
        # A 4-band raster whose near-infrared band is dark (water) west of
        # column 60: the mask finds it, a disc on the edge is half water.
        nir = np.full((100, 100), 180, np.uint8)
        nir[:, :60] = 20
        bands = np.stack([np.full((100, 100), 90, np.uint8)] * 3 + [nir])
        path = write_tif(os.path.join(self.tmp.name, "water.tif"), bands)
        mask, gt = X.water_mask(path)
        self.assertEqual(int(mask.sum()), 6000)
        self.assertTrue(mask[:, :60].all())
        x_edge = gt[0] + 60 * gt[1]
        self.assertAlmostEqual(X.water_share((mask, gt), x_edge, 5209900.0, 30.0), 0.5, delta=0.03)
        self.assertEqual(X.water_share((mask, gt), gt[0] + 20, 5209900.0, 10.0), 1.0)
        self.assertEqual(X.water_share((mask, gt), gt[0] + 180, 5209900.0, 10.0), 0.0)
        with self.assertRaisesRegex(ValueError, "near-infrared"):
            X.water_mask(write_tif(os.path.join(self.tmp.name, "rgb.tif"), bands[:3]))

    def test_water_change(self):
        # 2020: water on the west half (x < 488000), none on the east;
        # 2009: water south of the validation line (y < 5206720) everywhere.
        # 10 m pixels over x 487000..489500, y 5206000..5208500.
        d = os.path.join(self.tmp.name, "change")
        os.makedirs(d)
        gt = (487000.0, 10.0, 0.0, 5208500.0, 0.0, -10.0)
        xs = 487000.0 + 10.0 * (np.arange(250) + 0.5)
        ys = 5208500.0 - 10.0 * (np.arange(250) + 0.5)
        for name, water in (("20200831", np.broadcast_to(xs < 488000.0, (250, 250))),
                            ("20090818", np.broadcast_to((ys < 5206720.0)[:, None], (250, 250)))):
            nir = np.where(water, 20, 180).astype(np.uint8)
            bands = np.stack([np.full_like(nir, 90)] * 3 + [nir])
            write_tif(os.path.join(d, f"m_4709963_se_14_1_{name}.tif"), bands, gt=gt)
        rows = X.water_change(d, 2020, step_m=10.0)
        self.assertEqual(sorted(rows), [2009, 2020])
        head, band, north, ev = (rows[2009][k] for k in X.CHANGE_PARTS)
        # Head ground (west, north of the band): land in 2009, water in 2020.
        self.assertEqual(head, (0.0, 1.0))
        # Band: water both years, inside x < 488000; land in 2020 up to 487900.
        self.assertEqual(band, (1.0, 0.0))
        # North band (y >= 5208160): like the head's ground.
        self.assertEqual(north, (0.0, 1.0))
        # Evaluation half: 2009 water on its southern 720 of 2500 m, none in 2020.
        self.assertAlmostEqual(ev[0], 0.288, delta=0.006)
        self.assertAlmostEqual(ev[1], 0.288, delta=0.006)
        self.assertEqual([v[1] for v in rows[2020].values()], [0.0] * 4)
        self.assertEqual([v[0] for v in rows[2020].values()], [1.0, 1.0, 1.0, 0.0])
        p = run_cli("xtime-change", "--naip", d)
        lines = p.stdout.strip().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[1].startswith("2009 ") and "100.0%" in lines[1], lines[1])
        with self.assertRaisesRegex(ValueError, "no NAIP raster of 2019"):
            X.water_change(d, 2019)

    def test_water_breakdown(self):
        # Three 2009 queries and one 2015 query; the results say which were
        # found within 100 m; the CLI prints the counts per water bin.
        pts = [(486500.0, 5208000.0), (489000.0, 5207000.0), (490500.0, 5206000.0),
               (489500.0, 5208500.0)]
        d = self.tmp.name
        with open(os.path.join(d, "wl.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "lat", "lon", "heading", "date", "scale", "tilt"])
            for i, (x, y) in enumerate(pts):
                lon, lat = self.r.to_lonlat(x, y)
                w.writerow([f"q{i}.jpg", lat, lon, 0, "2015-09-26" if i == 3 else "2009-08-18",
                            1.0, 0])
        with open(os.path.join(d, "wr.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "status", "error_m"])
            for i, err in enumerate(["50.0", "150.0", "", "99.9"]):
                w.writerow([f"q{i}.jpg", "OK" if err else "ERROR", err])
        rows = X.water_breakdown(NAIP, os.path.join(d, "wl.csv"), os.path.join(d, "wr.csv"))
        self.assertEqual(len(rows), 2 * len(X.WATER_BINS))
        self.assertEqual(sum(r[3] for r in rows if r[2]), 3)
        self.assertEqual(sum(r[4] for r in rows if r[2]), 1)
        self.assertEqual([r[3:] for r in rows if not r[2] and r[3]], [(1, 1)])
        masks = X.water_mask(os.path.join(NAIP, "m_4709963_se_14_1_20090818.tif"))
        share = X.water_share(masks, *pts[0], X.TILE_M / 2)
        (bin_of_q0,) = [r for r in rows if r[2] and r[0] <= share < r[1] + 1e-9]
        self.assertGreaterEqual(bin_of_q0[3], 1)
        p = run_cli("xtime-water", "--naip", NAIP, "--labels", os.path.join(d, "wl.csv"),
                    "--results", os.path.join(d, "wr.csv"))
        lines = p.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1 + len(X.WATER_BINS))
        self.assertIn("100.0%", p.stdout)       # the 2015 query, found


def geoloc_map_help():
    try:
        p = subprocess.run([GEOLOC, "map", "build", "--help"], capture_output=True, text=True,
                           timeout=30)
    except OSError:
        return None
    text = p.stdout + p.stderr
    return text if "--ortho" in text else None


class MapBuilder(unittest.TestCase):
    """Python's grid against the tiles `geoloc map build` writes."""

    @classmethod
    def setUpClass(cls):
        cls.help = geoloc_map_help()
        if cls.help is None:
            raise unittest.SkipTest(f"{GEOLOC} is missing or has no `map build` "
                                    "(set GEOLOC_BIN to a build with map support)")
        cls.tmp = tempfile.TemporaryDirectory()
        cfg = os.path.join(cls.tmp.name, "small.json")
        with open(cfg, "w") as f:
            f.write('{"input_size": [64, 64]}')
        cls.model = os.path.join(cls.tmp.name, "m.safetensors")
        run_cli("export-random", "--config", cfg, "--seed", "1", "--out", cls.model)
        cls.r = V.Raster.open(R2020)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def build(self, name, *extra):
        out = os.path.join(self.tmp.name, name)
        subprocess.run([GEOLOC, "map", "build", "--model", self.model, "--ortho", R2020,
                        "--out", out, "--tile-m", "320", "--stride-m", "80", *extra],
                       check=True, capture_output=True, timeout=600)
        with sqlite3.connect(os.path.join(out, "tiles.sqlite")) as db:
            return np.array(db.execute(
                "SELECT id, lat, lon, grid_x, grid_y FROM tiles ORDER BY id").fetchall())

    def check(self, rows, corners):
        self.assertEqual(len(rows), len(corners))
        np.testing.assert_array_equal(rows[:, 0], np.arange(1, len(corners) + 1))
        centres = corners + V.TILE_M / 2
        np.testing.assert_array_equal(rows[:, 3:5], centres)
        lon, lat = self.r.to_lonlat(centres[:, 0], centres[:, 1])
        np.testing.assert_allclose(rows[:, 1], lat, rtol=0, atol=1e-7)
        np.testing.assert_allclose(rows[:, 2], lon, rtol=0, atol=1e-7)

    def test_grid_matches_builder(self):
        self.check(self.build("all.map"), V.grid_corners(self.r.extent()))

    def test_east_bbox_matches_builder(self):
        if "--bbox" not in self.help:
            self.skipTest(f"{GEOLOC} has no map build --bbox")
        self.check(self.build("east.map", "--bbox", X.bbox_string(NAIP)),
                   X.reference_corners(self.r))

    def test_west_bbox_matches_builder(self):
        if "--bbox" not in self.help:
            self.skipTest(f"{GEOLOC} has no map build --bbox")
        self.check(self.build("west.map", "--bbox", X.bbox_string(NAIP, "west")),
                   X.train_corners(self.r))


if __name__ == "__main__":
    unittest.main()
