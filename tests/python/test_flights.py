"""The flights protocol (geoloc_train.xtime.make_flights, `make-flights`) on
the real NAIP GeoTIFFs: small sets of simulated flights, checked for their
columns, capture times, one gap and one kidnap per flight, speeds, headings
along the direction of travel, the region, and determinism."""

import csv
import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from _common import REPO, run_cli
from geoloc_train import views as V
from geoloc_train import xtime as X

NAIP = os.path.join(REPO, "data", "naip")
R2020 = os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif")
FLIGHTS, FRAMES, SIZE = 2, 40, 64
COLUMNS = ["file", "lat", "lon", "heading", "date", "scale", "tilt", "flight", "time_us",
           "vel_n", "vel_e", "event"]


def read_labels(out):
    with open(os.path.join(out, "labels.csv"), newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def angle_diff(a, b):
    """|a - b| in degrees, wrapped into 0..180."""
    return np.abs((np.asarray(a) - b + 180) % 360 - 180)


class Flights(unittest.TestCase):
    """Sets of FLIGHTS flights x FRAMES frames at SIZE px: two east sets of
    one seed (one through the CLI), one of another seed, a west set, one over
    the west's north validation band (through the CLI), an east set without
    events in one year."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.r = V.Raster.open(R2020)
        cls.out = {k: os.path.join(cls.tmp.name, k) for k in ("a", "b", "c", "west", "north",
                                                          "quiet")}
        small = dict(flights=FLIGHTS, frames=FRAMES, size=SIZE)
        X.make_flights(NAIP, cls.out["a"], seed=5, **small)
        X.make_flights(NAIP, cls.out["c"], seed=6, **small)
        X.make_flights(NAIP, cls.out["west"], region="west", **small)
        args = ["--naip", NAIP, "--flights", str(FLIGHTS), "--frames", str(FRAMES), "--size",
                str(SIZE)]
        run_cli("make-flights", *args, "--out", cls.out["b"], "--seed", "5")
        cls.north_stdout = run_cli("make-flights", *args, "--out", cls.out["north"],
                                   "--region", "west", "--val-band", "north").stdout
        cls.quiet_stdout = run_cli("make-flights", *args, "--out", cls.out["quiet"],
                                   "--years", "2012", "--no-events").stdout

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def flights(self, name):
        """[(rows, xy (n, 2) CRS metres, t (n,) seconds)] per flight."""
        _, rows = read_labels(self.out[name])
        out = []
        for f in range(FLIGHTS):
            fr = [r for r in rows if r["flight"] == str(f)]
            x, y = self.r.from_lonlat(np.array([float(r["lon"]) for r in fr]),
                                      np.array([float(r["lat"]) for r in fr]))
            t = np.array([int(r["time_us"]) for r in fr], np.int64)
            out.append((fr, np.column_stack([x, y]), (t - t[0]) / 1e6))
        return out

    def check_set(self, name, region="east", events=True, south=None):
        """south: the lowest northing a frame's centre may have (default:
        the region's centre range less the margin)."""
        fields, rows = read_labels(self.out[name])
        self.assertEqual(fields, COLUMNS)
        self.assertEqual(fields, X.LABEL_FIELDS + X.EXTRA_FIELDS + X.FLIGHT_FIELDS)
        self.assertEqual(len(rows), FLIGHTS * FRAMES)
        # consecutive frames of a flight on consecutive rows, flights in order
        self.assertEqual([r["flight"] for r in rows],
                         [str(f) for f in range(FLIGHTS) for _ in range(FRAMES)])
        self.assertEqual([r["file"] for r in rows],
                         [f"frames/{i:06d}.jpg" for i in range(len(rows))])
        for r in rows[::17]:
            with Image.open(os.path.join(self.out[name], r["file"])) as im:
                self.assertEqual((im.format, im.size, im.mode), ("JPEG", (SIZE, SIZE), "RGB"))
        xa, ya, xb, yb = X.centre_range(self.r, region)
        m = X.FLIGHT_MARGIN_M - 0.05                    # labels round to 1e-7 degrees
        for f, (fr, xy, t) in enumerate(self.flights(name)):
            with self.subTest(set=name, flight=f):
                self.assertEqual(int(fr[0]["time_us"]), X.FLIGHT_T0_US + f * X.FLIGHT_DT_US)
                self.assertEqual(len({r["date"] for r in fr}), 1)
                self.assertNotIn(fr[0]["date"][:4], ("2018", "2019", "2020"))
                # every position inside the region's centre range less the margin
                self.assertTrue(np.all((xy[:, 0] >= xa + m) & (xy[:, 0] <= xb - m)), xy)
                lo = ya + m if south is None else south - 0.05
                self.assertTrue(np.all((xy[:, 1] >= lo) & (xy[:, 1] <= yb - m)), xy)
                dt = np.diff(t)
                self.assertTrue(np.all(dt > 0), dt)      # time strictly increasing
                ev = [r["event"] for r in fr]
                self.assertEqual(ev[0], "start")
                if events:
                    self.assertEqual(sorted(e for e in ev[1:] if e), ["gap", "kidnap"])
                    gap, kidnap = ev.index("gap"), ev.index("kidnap")
                    self.assertTrue(FRAMES // 3 <= gap < 2 * FRAMES // 3, gap)
                    self.assertTrue(gap < kidnap <= FRAMES - 20, (gap, kidnap))
                else:
                    self.assertEqual(ev[1:], [""] * (FRAMES - 1))
                    gap = kidnap = -1
                # frame i comes after the interval dt[i - 1]
                normal = np.ones(FRAMES - 1, bool)
                normal[[i - 1 for i in (gap, kidnap) if i > 0]] = False
                base = np.median(dt[normal])
                self.assertTrue(0.5 * 0.9 <= base <= 1.0 * 1.1, base)
                self.assertTrue(np.all(np.abs(dt[normal] / base - 1) < 0.23), dt / base)
                step = np.hypot(*np.diff(xy, axis=0).T)
                speed = step[normal] / dt[normal]
                self.assertTrue(np.all((speed >= 5 * 0.9) & (speed <= 20 * 1.1)), speed)
                # a constant ground speed (chords of turns are a little shorter)
                self.assertLess(np.ptp(speed) / speed.max(), 0.02, speed)
                if events:
                    # the gap: 10..30 s more than a normal interval, flying on
                    self.assertTrue(9.8 <= dt[gap - 1] - base <= 30.2, dt[gap - 1] - base)
                    self.assertLessEqual(step[gap - 1], speed.max() * dt[gap - 1] + 0.1)
                    self.assertGreater(step[gap - 1], 0.0)
                    # the kidnap: at a normal interval, at least 1000 m away
                    self.assertTrue(abs(dt[kidnap - 1] / base - 1) < 0.23, dt[kidnap - 1])
                    self.assertGreaterEqual(step[kidnap - 1], 1000.0)
                    self.assertLess(step[normal].max(), 30.0)
                else:
                    self.assertTrue(np.all(dt < 1.2), dt)
                    self.assertLess(step.max(), 30.0)
                # the view's top looks along the direction of travel (the
                # chord through the neighbours), with a wobble of a few degrees
                heading = np.array([float(r["heading"]) for r in fr])
                self.assertTrue(np.all((heading >= 0) & (heading < 360)))
                vel = np.array([[float(r["vel_n"]), float(r["vel_e"])] for r in fr])
                both = np.flatnonzero(normal[:-1] & normal[1:]) + 1
                d = xy[both + 1] - xy[both - 1]
                course = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 360
                self.assertLess(angle_diff(heading[both], course).max(), 8.0)
                # odometry: the ground velocity plus noise of sigma 0.5 m/s
                chord = d[:, ::-1] / (t[both + 1] - t[both - 1])[:, None]
                res = vel[both] - chord
                self.assertLess(np.abs(res).max(), 3.0, res)
                self.assertTrue(0.25 < np.sqrt(np.mean(res ** 2)) < 0.8, res)
        return rows

    def test_east(self):
        rows = self.check_set("a")
        self.assertEqual(len({r["date"] for r in rows}), FLIGHTS)    # years differ

    def test_west(self):
        self.check_set("west", region="west")

    def test_north_band(self):
        # the band is narrower than the west region's range less the margin
        _, ya, _, _ = X.centre_range(self.r, "west")
        self.assertGreater(X.VAL_NORTH_NORTHING, ya + X.FLIGHT_MARGIN_M)
        self.check_set("north", region="west", south=X.VAL_NORTH_NORTHING)
        self.assertIn("west region, north band", self.north_stdout)

    def test_no_events(self):
        rows = self.check_set("quiet", events=False)
        self.assertEqual({r["date"][:4] for r in rows}, {"2012"})
        self.assertIn(f"wrote {FLIGHTS} flights x {FRAMES} frames", self.quiet_stdout)

    def test_deterministic(self):
        a, b, c = (os.path.join(self.out[k], "labels.csv") for k in "abc")
        self.assertEqual(read_bytes(a), read_bytes(b))
        self.assertNotEqual(read_bytes(a), read_bytes(c))
        for i in (0, FRAMES - 1, FRAMES * FLIGHTS - 1):
            name = os.path.join("frames", f"{i:06d}.jpg")
            self.assertEqual(read_bytes(os.path.join(self.out["a"], name)),
                             read_bytes(os.path.join(self.out["b"], name)), name)

    def test_errors(self):
        out = os.path.join(self.tmp.name, "err")
        p = run_cli("make-flights", "--naip", NAIP, "--out", out, "--frames", "20", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"at least {X.MIN_EVENT_FRAMES} frames", p.stderr)
        p = run_cli("make-flights", "--naip", NAIP, "--out", out, "--years", "2011",
                    check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no NAIP raster of 2011", p.stderr)
        p = run_cli("make-flights", "--naip", NAIP, "--out", out, "--val-band", "north",
                    check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--val-band needs --region west", p.stderr)
        with self.assertRaisesRegex(ValueError, "region west only"):
            X.make_flights(NAIP, out, region="east", band="north")
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
