"""`geoloc eval` and `geoloc query --labels` end to end on real imagery.

A small random model is exported with the PyTorch reference and a map pack is
built from the real 2020 NAIP GeoTIFF over the east half of the raster with
`geoloc map build --bbox` (the naip-xtime reference area). The labelled
frames are tiles of that pack cut again from the same raster with GDAL, so a
frame has its tile's descriptor: every frame must be found (R@1 100 %, error
of a few metres at most), in-process and through geolocd on loopback.

usage: test_eval.py BUILD_DIR SOURCE_DIR   (exit 77 without torch or GDAL)
"""
import csv
import io
import math
import os
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import torch  # noqa: F401  (needed by the exporter)
    from osgeo import gdal, osr
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(77)

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
sys.path.insert(0, os.path.join(SRC, "tests", "serving"))
import common  # noqa: E402  (free_port)
del sys.argv[1:3]
GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")
GEOLOC = os.path.join(BUILD, "tools", "geoloc")
RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
TILE_M, STRIDE_M, PX = 320, 320, 64
SUMMARY = re.compile(
    r"^eval: (\d+) frames, R@1 (n/a|[\d.]+%), R@5 (n/a|[\d.]+%), R@10 (n/a|[\d.]+%), "
    r"median ([\d.]+|inf|n/a) m, p90 ([\d.]+|inf|n/a) m, success@100m ([\d.]+)%, "
    r"([\d.]+) frames/s$")


def png_size(path):
    """Width and height from the IHDR chunk, after checking the signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise AssertionError("%s is not a PNG" % path)
    return struct.unpack(">II", head[16:24])


class Fixture:
    """Model, east-half map pack, labelled frames; made once."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="geoloc-eval-")
        gdal.UseExceptions()
        env = dict(os.environ, PYTHONPATH=os.path.join(SRC, "python"))
        cfg = os.path.join(self.dir, "small.json")
        with open(cfg, "w") as f:
            f.write('{"input_size": [%d, %d]}' % (PX, PX))
        self.model = os.path.join(self.dir, "m.safetensors")
        subprocess.run([sys.executable, "-m", "geoloc_train", "export-random", "--config", cfg,
                        "--seed", "1", "--out", self.model], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        # The raster's extent in WGS84; the box keeps its east half.
        ds = gdal.Open(RASTER)
        gt = ds.GetGeoTransform()
        self.srs = osr.SpatialReference(wkt=ds.GetProjection())
        self.srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        wgs = osr.SpatialReference()
        wgs.ImportFromEPSG(4326)
        wgs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self.to_raster = osr.CoordinateTransformation(wgs, self.srs)
        to_wgs = osr.CoordinateTransformation(self.srs, wgs)
        xs = (gt[0], gt[0] + ds.RasterXSize * gt[1])
        ys = (gt[3] + ds.RasterYSize * gt[5], gt[3])
        corners = [to_wgs.TransformPoint(x, y)[:2] for x in xs for y in ys]
        west = min(c[0] for c in corners)
        east = max(c[0] for c in corners)
        self.bbox = ((west + east) / 2, min(c[1] for c in corners), east,
                     max(c[1] for c in corners))
        self.map = os.path.join(self.dir, "east.map")
        subprocess.run([GEOLOC, "map", "build", "--model", self.model, "--ortho", RASTER,
                        "--tile-m", str(TILE_M), "--stride-m", str(STRIDE_M),
                        "--bbox", ",".join("%.9f" % v for v in self.bbox), "--out", self.map],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = sqlite3.connect(os.path.join(self.map, "tiles.sqlite"))
        self.tiles = db.execute(
            "select id, lat, lon, min_lat, max_lat, min_lon, max_lon, grid_x, grid_y from tiles "
            "order by id").fetchall()
        db.close()
        # Frames in a directory of their own, named relative to the labels.
        self.set = os.path.join(self.dir, "set")
        os.makedirs(os.path.join(self.set, "frames"))
        self.truth = {}
        h = TILE_M / 2
        with open(os.path.join(self.set, "labels.csv"), "w") as f:
            f.write("heading,file,lat,source,lon\n")  # any order, an extra column
            for (tid, lat, lon, *_b, x, y) in self.tiles[3::6][:10]:
                name = "frames/q_%04d.png" % tid
                gdal.Translate(os.path.join(self.set, name), RASTER, format="PNG",
                               projWin=[x - h, y + h, x + h, y - h], width=PX, height=PX,
                               resampleAlg="bilinear", bandList=[1, 2, 3])
                f.write("%d,%s,%.9f,naip2020,%.9f\n" % (tid % 360, name, lat, lon))
                self.truth[name] = (tid, lat, lon)
        self.labels = os.path.join(self.set, "labels.csv")

    def expected_png(self, points):
        """The report's size: the tiles and points in the raster's CRS, a
        margin of 4 % of the larger side (at least 50 m), 1000 px wide (the
        5 m raster covers the area in fewer pixels)."""
        pts = [(t[5], t[3]) for t in self.tiles] + [(t[6], t[4]) for t in self.tiles]
        pts += [(t[5], t[4]) for t in self.tiles] + [(t[6], t[3]) for t in self.tiles]
        pts += points
        xy = [self.to_raster.TransformPoint(lon, lat)[:2] for lon, lat in pts]
        w = max(p[0] for p in xy) - min(p[0] for p in xy)
        h = max(p[1] for p in xy) - min(p[1] for p in xy)
        m = max(0.04 * max(w, h), 50)
        w, h = w + 2 * m, h + 2 * m
        self.assertLess(w / 5, 1000)
        return 1000, math.ceil(h / (w / 1000) - 1e-9)

    @staticmethod
    def assertLess(a, b):
        if not a < b:
            raise AssertionError("%r >= %r" % (a, b))


FIX = None


def run(*args, timeout=300):
    return subprocess.run([GEOLOC, *args], capture_output=True, text=True, timeout=timeout)


class Daemon:
    def __init__(self):
        self.port = common.free_port()
        conf = os.path.join(FIX.dir, "geolocd-%d.conf" % self.port)
        with open(conf, "w") as f:
            f.write("[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\nmax_batch = 4\n"
                    "[map east]\npath = %s\n" % (self.port, FIX.model, FIX.map))
        self.log = open(os.path.join(FIX.dir, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", conf], stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("geolocd exited %d:\n%s" % (self.proc.returncode,
                                                                  self.log_text()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("geolocd did not listen:\n" + self.log_text())

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc


class Eval(unittest.TestCase):
    def summary(self, stdout):
        last = stdout.rstrip("\n").split("\n")[-1]
        m = SUMMARY.match(last)
        self.assertIsNotNone(m, "last line: %r" % last)
        return m

    def check_rows(self, rows, ranked=True):
        self.assertEqual(sorted(r["file"] for r in rows), sorted(FIX.truth))
        for r in rows:
            tid, lat, lon = FIX.truth[r["file"]]
            self.assertEqual(r["status"], "OK")
            self.assertAlmostEqual(float(r["truth_lat"]), lat, places=6)
            self.assertAlmostEqual(float(r["truth_lon"]), lon, places=6)
            self.assertLess(float(r["error_m"]), 25, r)
            if ranked:
                self.assertEqual(int(r["true_tile"]), tid)
                self.assertEqual(r["rank"], "1")
            else:
                self.assertEqual(r["true_tile"], "")
            self.assertGreater(float(r["latency_ms"]), 0)

    def test_in_process_finds_every_frame_and_draws_the_report(self):
        png = os.path.join(FIX.dir, "report.png")
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                "--batch", "3", "--threads", "2", "--report", png)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = self.summary(r.stdout)
        self.assertEqual(int(m.group(1)), len(FIX.truth))
        self.assertEqual(m.group(2), "100.0%")
        self.assertEqual(m.group(4), "100.0%")
        self.assertLess(float(m.group(5)), 25)
        self.assertEqual(m.group(7), "100.0")
        self.assertGreater(float(m.group(8)), 0)
        for line in ("frames                 10", "answers not OK         0",
                     "success@250m           100.0%", "within 2500 km         100.0%"):
            self.assertIn(line, r.stdout)
        size = png_size(png)
        self.assertIn("wrote %s (%d x %d px)" % (png, *size), r.stderr)
        truths = [(lon, lat) for (_t, lat, lon) in FIX.truth.values()]
        ew, eh = FIX.expected_png(truths)
        self.assertEqual(size[0], ew)
        self.assertLessEqual(abs(size[1] - eh), 1, (size, eh))
        self.assertNotIn("grey background", r.stderr)  # the raster was found
        # GDAL decodes it: a true position is drawn in green or covered by
        # its estimate's red dot; the background is the raster, not grey.
        ds = gdal.Open(png)
        self.assertEqual((ds.RasterXSize, ds.RasterYSize, ds.RasterCount), (*size, 3))
        pix = ds.ReadAsArray()
        grey = ((pix[0] == 128) & (pix[1] == 128) & (pix[2] == 128)).mean()
        self.assertLess(grey, 0.5)

    def test_per_frame_csv(self):
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                "--per-frame", "--format", "csv", "--top-k", "5")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_rows(list(csv.DictReader(io.StringIO(r.stdout))))
        self.summary(r.stderr)  # with CSV on stdout, the summary line is on stderr

    def test_by_year(self):
        # The frames in three groups by the date column: 2009 (their truth
        # moved about 1 km north, so none is found within 100 m), 2020, and
        # no date; a row per year in order, the undated last.
        path = os.path.join(FIX.set, "labels_dated.csv")
        with open(FIX.labels) as f:
            rows = list(csv.DictReader(f))
        with open(path, "w") as f:
            f.write("file,lat,lon,heading,date\n")
            for i, row in enumerate(rows):
                lat = float(row["lat"]) + (0.009 if i < 4 else 0)
                date = "2009-08-18" if i < 4 else "2020-08-31" if i < 7 else ""
                f.write("%s,%.9f,%s,%s,%s\n" % (row["file"], lat, row["lon"], row["heading"], date))
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", path, "--by-year",
                "--per-frame", "--format", "csv")
        self.assertEqual(r.returncode, 0, r.stderr)
        per = list(csv.DictReader(io.StringIO(r.stdout)))  # CSV only on stdout
        self.assertEqual(len(per), len(rows))
        table = r.stderr.split("\nby year ")[1].splitlines()[1:]
        got = [line.split() for line in table]
        self.assertEqual([g[0] for g in got], ["2009", "2020", "-"], r.stderr)
        self.assertEqual([int(g[1]) for g in got], [4, 3, 3])
        self.assertEqual([g[3] for g in got], ["0.0%", "100.0%", "100.0%"])
        for g, (lo, hi) in zip(got, ((0, 4), (4, 7), (7, 10))):
            errs = sorted(float(p["error_m"]) for p in per[lo:hi])
            self.assertAlmostEqual(float(g[4]), errs[math.ceil(len(errs) / 2) - 1], delta=0.051)
        # The table goes to stdout beside a table summary.
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", path, "--by-year")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\nby year ", r.stdout)
        # Without dates, or with a wrong one: a clear error.
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                "--by-year")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--by-year: the labels have no date column", r.stderr)
        bad = os.path.join(FIX.set, "labels_baddate.csv")
        with open(bad, "w") as f:
            f.write("file,lat,lon,heading,date\n%s,%s,%s,0,18/08/2009\n"
                    % (rows[0]["file"], rows[0]["lat"], rows[0]["lon"]))
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("labels_baddate.csv:2: date '18/08/2009' is not a date YYYY-MM-DD", r.stderr)

    def test_prior_around_the_truth(self):
        r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                "--prior-m", "700")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.summary(r.stdout).group(2), "100.0%")

    def test_malformed_labels(self):
        cases = {
            "nocol.csv": ("file,lat,lon\nframes/q.png,47,-99\n",
                          "nocol.csv:1: the header has no column 'heading'"),
            "badlat.csv": ("file,lat,lon,heading\n%s,47.0,-99.1,0\n%s,north,-99.1,0\n"
                           % (next(iter(FIX.truth)), next(iter(FIX.truth))),
                           "badlat.csv:3: lat 'north' is not a latitude"),
            "short.csv": ("file,lat,lon,heading\n%s,47.0,-99.1\n" % next(iter(FIX.truth)),
                          "short.csv:2: 3 field(s), the header has 4"),
            "missing.csv": ("file,lat,lon,heading\nframes/none.png,47.0,-99.1,0\n",
                            "missing.csv:2: frame "),
        }
        for name, (text, needle) in cases.items():
            path = os.path.join(FIX.set, name)
            with open(path, "w") as f:
                f.write(text)
            r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", path)
            self.assertEqual(r.returncode, 1, name)
            self.assertIn(needle, r.stderr, name)
            self.assertEqual(r.stdout, "", name)
            r = run("query", "--connect", "127.0.0.1:1", "--labels", path)
            self.assertEqual(r.returncode, 1, name)
            self.assertIn(needle, r.stderr, name)

    def test_usage_errors(self):
        for args in (["eval"], ["eval", "--labels", FIX.labels],
                     ["eval", "--model", FIX.model, "--map", FIX.map],
                     ["eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                      "--top-k", "0"],
                     ["eval", "--connect", "127.0.0.1:1", "--model", FIX.model,
                      "--labels", FIX.labels],
                     ["eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                      "--format", "geojson"],
                     ["query", "--connect", "127.0.0.1:1", "--labels", FIX.labels, "x.png"],
                     ["query", "--connect", "127.0.0.1:1", "--labels", FIX.labels, "--format",
                      "nmea"]):
            self.assertEqual(run(*args).returncode, 2, args)
        r = run("eval", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("R@k", r.stdout)

    def test_numbers_are_parsed_strictly(self):
        """A number that does not parse or is out of range is wrong usage,
        named in the message (`--threads abc` used to be 0, all cores);
        numbers in range still run."""
        name = sorted(FIX.truth)[0]
        frame = os.path.join(FIX.set, name)
        common = {"locate": ["--model", FIX.model, "--map", FIX.map],
                  "eval": ["--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels]}
        for cmd, args, needle in (
                ("locate", ["--threads", "abc", frame], '--threads: "abc" is not an integer'),
                ("locate", ["--threads", "1025", frame], '--threads: "1025"'),
                ("locate", ["--top-k", "101", frame], '--top-k: "101"'),
                ("locate", ["--tiles", "0", frame], '--tiles: "0"'),
                ("locate", ["--heading", "nan", frame], '--heading: "nan"'),
                ("eval", ["--threads", "abc"], '--threads: "abc"'),
                ("eval", ["--batch", "8x"], '--batch: "8x"'),
                ("eval", ["--heading-noise", "-1"], '--heading-noise: "-1"')):
            r = run(cmd, *common[cmd], *args)
            self.assertEqual(r.returncode, 2, (cmd, args, r.stderr))
            self.assertIn(needle, r.stderr, (cmd, args))
            self.assertEqual(r.stdout, "", (cmd, args))
        r = run("locate", *common["locate"], "--threads", "2", "--top-k", "3", "--tiles", "32",
                "--format", "csv", frame)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        self.assertTrue(1 <= len(rows) <= 3, rows)
        self.assertEqual(rows[0]["status"], "OK")
        tid, lat, lon = FIX.truth[name]
        self.assertEqual(int(rows[0]["tile_id"]), tid)
        r = run("eval", *common["eval"], "--threads", "1", "--batch", "4", "--tiles", "32")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.summary(r.stdout).group(2), "100.0%")

    def test_through_geolocd(self):
        d = Daemon()
        try:
            # With the local pack: R@k, and the same estimates as in-process.
            r = run("eval", "--connect", d.addr, "--pack", FIX.map, "--labels", FIX.labels,
                    "--per-frame", "--format", "csv", "--window", "4")
            self.assertEqual(r.returncode, 0, r.stderr)
            remote = list(csv.DictReader(io.StringIO(r.stdout)))
            self.check_rows(remote)
            self.assertEqual(self.summary(r.stderr).group(2), "100.0%")
            r = run("eval", "--model", FIX.model, "--map", FIX.map, "--labels", FIX.labels,
                    "--per-frame", "--format", "csv")
            local = {row["file"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
            for row in remote:
                for k in ("est_lat", "est_lon"):
                    self.assertAlmostEqual(float(row[k]), float(local[row["file"]][k]),
                                           places=5)
            # Without it R@k is n/a; a prior around the truth is sent.
            r = run("eval", "--connect", d.addr, "--map", "east", "--labels", FIX.labels,
                    "--prior-m", "700")
            self.assertEqual(r.returncode, 0, r.stderr)
            m = self.summary(r.stdout)
            self.assertEqual(m.group(2), "n/a")
            self.assertEqual(m.group(7), "100.0")
            # geoloc query --labels: rows with the truth, a summary, a picture.
            png = os.path.join(FIX.dir, "query.png")
            r = run("query", "--connect", d.addr, "--labels", FIX.labels, "--pack", FIX.map,
                    "--report", png)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.rstrip("\n").split("\n")
            self.assertTrue(lines[0].startswith("file "), lines[0])
            self.assertIn("truth_lat", lines[0])
            self.assertIn("error_m", lines[0])
            self.assertIn("latency_ms", lines[0])
            self.assertRegex(lines[-1], r"^summary: 10 frames, median error [\d.]+ m, "
                                        r"success@100m 100\.0%, [\d.]+ frames/s$")
            self.assertGreaterEqual(png_size(png)[0], 1000)
            r = run("query", "--connect", d.addr, "--labels", FIX.labels, "--format", "csv")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.check_rows(list(csv.DictReader(io.StringIO(r.stdout))), ranked=False)
            self.assertIn("summary: 10 frames", r.stderr)
            # The report without the pack: grey, and said so.
            r = run("query", "--connect", d.addr, "--labels", FIX.labels, "--report", png)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("grey background", r.stderr)
            self.assertEqual(png_size(png)[0], 1000)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())


if __name__ == "__main__":
    FIX = Fixture()
    result = unittest.main(verbosity=2, exit=False).result
    if result.wasSuccessful():
        shutil.rmtree(FIX.dir, ignore_errors=True)
    else:
        print("left %s for inspection" % FIX.dir)
    sys.exit(0 if result.wasSuccessful() else 1)
