"""End-to-end serving: geolocd with a real model and a real map pack.

A small random model is exported with the PyTorch reference, a map pack is
built from a real NAIP GeoTIFF with `geoloc map build`, and query frames are
cut from the same raster with GDAL at known tile footprints. geolocd then
serves them over loopback TCP to `geoloc query`. The model is untrained, but
a frame with the same pixels as a tile has the same descriptor, so the tile
must come first and the estimate must land next to it.

usage: test_serving.py BUILD_DIR SOURCE_DIR   (exit 77 without torch or GDAL)
"""
import csv
import io
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

try:
    import torch  # noqa: F401  (needed by the exporter)
    from osgeo import gdal
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(77)

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import free_port, parse, varint, wait_listening  # noqa: E402
GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")
GEOLOC = os.path.join(BUILD, "tools", "geoloc")
RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
TILE_M, STRIDE_M, PX = 320, 160, 64


def metres(lat1, lon1, lat2, lon2):
    # A test-side check only (the product uses PROJ's geodesics).
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


class Fixture:
    """Model, map and query frames, made once for all tests."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="geoloc-serving-")
        gdal.UseExceptions()
        env = dict(os.environ, PYTHONPATH=os.path.join(SRC, "python"))
        cfg = os.path.join(self.dir, "small.json")
        with open(cfg, "w") as f:
            f.write('{"input_size": [%d, %d]}' % (PX, PX))
        self.model = os.path.join(self.dir, "m.safetensors")
        self.other_model = os.path.join(self.dir, "other.safetensors")
        for seed, out in ((3, self.model), (4, self.other_model)):
            subprocess.run([sys.executable, "-m", "geoloc_train", "export-random", "--config",
                            cfg, "--seed", str(seed), "--out", out], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        # Without a dense layer: these tests hold the serving machinery to the
        # global stage's exact answers (a crop equal to a tile scores 1 on
        # it); FineServing serves the fine stage with the shipped model.
        self.map = os.path.join(self.dir, "area.map")
        subprocess.run([GEOLOC, "map", "build", "--model", self.model, "--ortho", RASTER,
                        "--tile-m", str(TILE_M), "--stride-m", str(STRIDE_M), "--out", self.map,
                        "--dense-layer", "0"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = subprocess.run([GEOLOC, "map", "tiles", self.map], check=True, capture_output=True,
                             text=True).stdout
        tiles = [(int(r["id"]), float(r["lat"]), float(r["lon"]), float(r["grid_x"]),
                  float(r["grid_y"])) for r in csv.DictReader(io.StringIO(out))]
        xmin, xmax = min(t[3] for t in tiles), max(t[3] for t in tiles)
        ymin, ymax = min(t[4] for t in tiles), max(t[4] for t in tiles)
        # Tiles away from the raster's edges, where a crop and a tile agree.
        rows = [t for t in tiles if xmin < t[3] < xmax and ymin < t[4] < ymax]
        self.n_tiles = len(tiles)
        self.truth = {}
        h = TILE_M / 2
        for (tid, lat, lon, x, y) in rows[::23][:12]:  # (x, y): the tile's centre
            out = os.path.join(self.dir, "q_%04d.png" % tid)
            gdal.Translate(out, RASTER, format="PNG", projWin=[x - h, y + h, x + h, y - h],
                           width=PX, height=PX, resampleAlg="bilinear", bandList=[1, 2, 3])
            self.truth[out] = (tid, lat, lon)
        self.frames = sorted(self.truth)
        self.bad = os.path.join(self.dir, "broken.png")
        with open(self.frames[0], "rb") as f:
            data = f.read()
        with open(self.bad, "wb") as f:  # a PNG signature, then garbage
            f.write(data[:16] + bytes(range(256)) * 4)


FIX = None


class Daemon:
    def __init__(self, extra="", model=None, model_extra="", map_path=None):
        self.port, self.mport = free_port(), free_port()
        self.conf = os.path.join(FIX.dir, "geolocd-%d.conf" % self.port)
        self.model_extra = model_extra
        self.map = map_path or FIX.map
        self.write_conf(extra, model or FIX.model)
        self.log = open(os.path.join(FIX.dir, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", self.conf], stderr=self.log)
        wait_listening(self.proc, self.port, self.log_text, timeout=30)

    def write_conf(self, extra, model):
        with open(self.conf + ".tmp", "w") as f:
            f.write("[daemon]\n%s\n[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\n"
                    "max_batch = 8\n%s\n[map area]\npath = %s\n[metrics]\n"
                    "listen = 127.0.0.1:%d\n"
                    % (extra, self.port, model, self.model_extra, self.map, self.mport))
        os.rename(self.conf + ".tmp", self.conf)

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def query(self, frames, *args):
        r = subprocess.run([GEOLOC, "query", "--connect", "127.0.0.1:%d" % self.port, "--format",
                            "csv", *args, *frames], capture_output=True, text=True, timeout=120)
        return r.returncode, list(csv.DictReader(io.StringIO(r.stdout))), r.stderr

    def metric(self, name):
        return common.metric(self.mport, name)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


def answers(rows):
    """image -> list of its rows; each frame must have been answered once."""
    by = {}
    for r in rows:
        by.setdefault(r["image"], []).append(r)
    return by


class Serving(unittest.TestCase):
    def test_estimates_land_on_their_tiles(self):
        d = Daemon()
        try:
            rc, rows, err = d.query(FIX.frames, "--top-k", "3")
            self.assertEqual(rc, 0, err)
            by = answers(rows)
            self.assertEqual(sorted(by), FIX.frames)
            for img, (tid, lat, lon) in FIX.truth.items():
                best = by[img][0]
                self.assertEqual(best["status"], "OK")
                self.assertEqual(best["rank"], "1")
                self.assertLessEqual(len(by[img]), 3)
                self.assertEqual(int(best["tile_id"]), tid, img)
                self.assertGreater(float(best["score"]), 0.99, img)
                err_m = metres(lat, lon, float(best["lat"]), float(best["lon"]))
                self.assertLess(err_m, TILE_M, "%s: %.0f m from its tile" % (img, err_m))
            self.assertEqual(d.metric('geoloc_frames_total{status="ok"}'), len(FIX.frames))
            self.assertEqual(urllib.request.urlopen(
                "http://127.0.0.1:%d/readyz" % d.mport).status, 200)
            # geolocd ran itself again with OpenMP's idle threads asleep
            # (src/core/omp.h), under its own name; a value set by the
            # user is kept. /proc/PID/environ is what the program was run
            # with, so only a new run shows there.
            with open("/proc/%d/environ" % d.proc.pid, "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            self.assertEqual(env.get(b"OMP_WAIT_POLICY"),
                             os.environb.get(b"OMP_WAIT_POLICY", b"passive"))
            with open("/proc/%d/comm" % d.proc.pid) as f:
                self.assertEqual(f.read().strip(), "geolocd")
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_prior_restricts_the_search(self):
        d = Daemon()
        try:
            img = FIX.frames[0]
            tid, lat, lon = FIX.truth[img]
            # A prior 2 km north of the truth, 600 m wide: the true tile is out.
            rc, rows, err = d.query([img], "--prior", "%f,%f,600" % (lat + 0.018, lon))
            for r in rows:
                if r["status"] == "OK":
                    self.assertLess(metres(lat + 0.018, lon, float(r["lat"]), float(r["lon"])),
                                    600 + TILE_M)
                    self.assertNotEqual(int(r["tile_id"]), tid)
            rc, rows, err = d.query([img], "--prior", "%f,%f,400" % (lat, lon))
            self.assertEqual(rc, 0, err)
            self.assertEqual(int(rows[0]["tile_id"]), tid)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_bad_image_is_answered_and_the_stream_goes_on(self):
        d = Daemon()
        try:
            frames = [FIX.frames[0], FIX.bad, FIX.frames[1]]
            rc, rows, err = d.query(frames)
            self.assertEqual(rc, 1)
            by = answers(rows)
            self.assertEqual(by[FIX.bad][0]["status"], "BAD_IMAGE")
            self.assertEqual(len(by[FIX.bad]), 1)
            self.assertIn("PNG", err)
            self.assertEqual(by[FIX.frames[1]][0]["status"], "OK")
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_busy_and_stale_answer_every_frame(self):
        # A queue of one frame for all clients: a client allowed 8 frames in
        # flight must meet BUSY.
        d = Daemon("max_frames_in_flight = 8\nqueue_depth = 1")
        try:
            frames = FIX.frames * 3
            rc, rows, err = d.query(frames, "--window", "16")
            statuses = [r["status"] for r in rows if r["rank"] in ("", "1")]
            self.assertEqual(len(statuses), len(frames))
            self.assertIn("BUSY", statuses)
            self.assertIn("OK", statuses)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())
        # Frames older than 1 ms when the batch starts are stale; a long
        # batch window makes sure they are.
        d = Daemon("stale_after_ms = 1", model_extra="batch_window_us = 100000")
        try:
            rc, rows, err = d.query(FIX.frames[:4])
            self.assertEqual([r["status"] for r in rows], ["DROPPED_STALE"] * 4)
            self.assertEqual(d.metric('geoloc_frames_total{status="dropped_stale"}'), 4)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_sighup_reloads_model_and_maps_under_load(self):
        d = Daemon()
        try:
            q = subprocess.Popen([GEOLOC, "query", "--connect", "127.0.0.1:%d" % d.port,
                                  "--format", "csv", "--window", "4", *(FIX.frames * 8)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3):
                time.sleep(0.3)
                d.proc.send_signal(signal.SIGHUP)
            out, err = q.communicate(timeout=120)
            self.assertEqual(q.returncode, 0, err)
            rows = list(csv.DictReader(io.StringIO(out)))
            self.assertEqual(len([r for r in rows if r["rank"] == "1"]), len(FIX.frames) * 8)
            deadline = time.time() + 20
            while "with its model and maps" not in d.log_text() and time.time() < deadline:
                time.sleep(0.1)
            self.assertIn("configuration reloaded with its model and maps", d.log_text())
            # A reload to a model the map was not built with fails and keeps
            # the old model serving.
            d.write_conf("", FIX.other_model)
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 20
            while "reload failed" not in d.log_text() and time.time() < deadline:
                time.sleep(0.1)
            self.assertIn("reload failed", d.log_text())
            rc, rows, err = d.query(FIX.frames[:2])
            self.assertEqual(rc, 0, err)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_sigterm_answers_frames_in_flight(self):
        d = Daemon()
        q = subprocess.Popen([GEOLOC, "query", "--connect", "127.0.0.1:%d" % d.port, "--format",
                              "csv", "--window", "16", *(FIX.frames * 4)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # SIGTERM once the daemon holds frames of the client (on a loaded
        # machine the client may take a while to connect).
        try:
            deadline = time.time() + 60
            while (d.metric("geoloc_frames_in_flight") == 0 and
                   d.metric('geoloc_frames_total{status="ok"}') == 0 and time.time() < deadline):
                time.sleep(0.02)
        finally:  # the daemon never outlives the test
            self.assertEqual(d.stop(), 0, d.log_text())
        out, err = q.communicate(timeout=60)
        rows = [r for r in csv.DictReader(io.StringIO(out)) if r["rank"] in ("", "1")]
        # The frames the server had accepted were answered, with estimates,
        # before it said goodbye; the client then stops.
        if q.returncode != 0:
            self.assertIn("SHUTTING_DOWN", err)
        self.assertGreater(len(rows), 0)
        self.assertLessEqual(len(rows), len(FIX.frames) * 4)
        self.assertTrue(all(r["status"] == "OK" for r in rows), rows)

    def test_locate_in_process_agrees_with_the_daemon(self):
        frames = FIX.frames[:4]
        r = subprocess.run([GEOLOC, "locate", "--model", FIX.model, "--map", FIX.map, "--format",
                            "csv", "--top-k", "2", *frames], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        local = answers(csv.DictReader(io.StringIO(r.stdout)))
        d = Daemon()
        try:
            rc, rows, err = d.query(frames, "--top-k", "2")
            self.assertEqual(rc, 0, err)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())
        served = answers(rows)
        for img in frames:
            self.assertEqual(int(local[img][0]["tile_id"]), FIX.truth[img][0])
            for a, b in zip(local[img], served[img]):
                self.assertEqual(a["tile_id"], b["tile_id"])
                self.assertAlmostEqual(float(a["lat"]), float(b["lat"]), places=6)
                self.assertAlmostEqual(float(a["lon"]), float(b["lon"]), places=6)
        r = subprocess.run([GEOLOC, "inspect", FIX.map], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("verify      ok", r.stdout)
        self.assertIn("tiles       %d" % FIX.n_tiles, r.stdout)

    def bench(self, d, clients, frames, *extra):
        r = subprocess.run([GEOLOC, "bench", "--connect", "127.0.0.1:%d" % d.port, "--clients",
                            str(clients), "--frames", str(frames), *extra, *FIX.frames],
                           capture_output=True, text=True, timeout=240)
        return r.returncode, r.stdout, r.stderr

    def test_32_clients_every_frame_answered_once(self):
        d = Daemon()
        try:
            rc, out, err = self.bench(d, 32, 32 * 200)
            self.assertEqual(rc, 0, out + err)
            last = out.strip().splitlines()[-1]
            self.assertTrue(last.startswith("summary: sent 6400, answered 6400, each exactly "
                                            "once: yes;"), last)
            # The daemon counted the same frames, by status.
            counted = sum(d.metric('geoloc_frames_total{status="%s"}' % s)
                          for s in ("ok", "no_match", "dropped_stale", "busy", "bad_image",
                                    "unavailable", "error"))
            self.assertEqual(counted, 6400)
            self.assertEqual(d.metric("geoloc_frames_in_flight"), 0)
            self.assertGreater(d.metric("geoloc_batch_size_count"), 0)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_a_slow_reader_does_not_stall_others(self):
        d = Daemon("max_frames_in_flight = 4096\nqueue_depth = 65536")
        try:
            with open(FIX.frames[0], "rb") as f:
                png = f.read()
            # A client that sends many frames and never reads its answers.
            slow = socket.create_connection(("127.0.0.1", d.port))
            hello = bytes([0x0a, 0x02, 0x08, 0x01])  # ClientMessage{hello{protocol_version 1}}
            slow.sendall(len(hello).to_bytes(4, "big") + hello)
            frame_body = bytes([0x1a]) + varint(len(png)) + png + bytes([0x20, 0x02])
            sent = 0
            slow.setblocking(False)
            for i in range(2000):
                body = bytes([0x08]) + varint(i + 1) + frame_body  # Frame{frame_id, image, PNG}
                msg = bytes([0x12]) + varint(len(body)) + body
                try:
                    slow.sendall(len(msg).to_bytes(4, "big") + msg)
                    sent += 1
                except BlockingIOError:
                    break
            self.assertGreater(sent, 50)
            t0 = time.time()
            rc, out, err = self.bench(d, 4, 200)
            self.assertEqual(rc, 0, out + err)
            self.assertLess(time.time() - t0, 120)
            slow.close()
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_wrong_map_name_is_refused(self):
        d = Daemon()
        try:
            rc, rows, err = d.query(FIX.frames[:1], "--map", "nowhere")
            self.assertEqual(rc, 1)
            self.assertIn("no map named 'nowhere'", err)
            rc, rows, err = d.query(FIX.frames[:1], "--map", "area")
            self.assertEqual(rc, 0, err)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_startup_refuses_a_bad_model_or_map(self):
        bad = os.path.join(FIX.dir, "missing.safetensors")
        for model, needle in ((bad, "missing.safetensors"), (FIX.other_model, "model")):
            conf = os.path.join(FIX.dir, "bad.conf")
            with open(conf, "w") as f:
                f.write("[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\n[map area]\npath = %s\n"
                        % (free_port(), model, FIX.map))
            r = subprocess.run([GEOLOCD, "--config", conf], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot start", r.stderr)
            self.assertIn(needle, r.stderr)


class FineServing(unittest.TestCase):
    """The fine stage through geolocd: the shipped model, a pack with a dense
    layer, drone views turned to known headings and shifted off the tile
    grid, sent with and without their compass heading."""

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, os.path.join(SRC, "python"))
        from geoloc_train import views
        cls.model = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")
        r = views.Raster.open(RASTER)
        # A 1.3 km block of the raster; views at points on no grid line.
        lon, lat = r.to_lonlat([486400.0, 487700.0], [5206200.0, 5207500.0])
        cls.map = os.path.join(FIX.dir, "fine.map")
        subprocess.run([GEOLOC, "map", "build", "--model", cls.model, "--ortho", RASTER,
                        "--bbox", "%.7f,%.7f,%.7f,%.7f" % (lon[0], lat[0], lon[1], lat[1]),
                        "--out", cls.map], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cls.views = []
        for i, (x, y, h) in enumerate(((487017.0, 5206817.0, 37.0), (486886.0, 5206905.0, 248.0),
                                       (487227.0, 5206770.0, 121.0))):
            p = views.ViewParams(x, y, h, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)
            img, ok = views.render_view(r, p, 128, photometric=False)
            out = os.path.join(FIX.dir, "view_%d.png" % i)
            from PIL import Image
            Image.fromarray(img).save(out)
            vlon, vlat = r.to_lonlat(x, y)
            cls.views.append((out, float(vlat), float(vlon), h))

    def check(self, row, lat, lon, heading):
        self.assertEqual(row["status"], "OK")
        self.assertLess(metres(lat, lon, float(row["lat"]), float(row["lon"])), 40.0, row)
        self.assertLess(abs((float(row["heading_deg"]) - heading + 180) % 360 - 180), 10.0, row)

    def test_frames_with_and_without_heading(self):
        d = Daemon(model=self.model, map_path=self.map)
        try:
            for img, lat, lon, h in self.views:
                rc, rows, err = d.query([img], "--top-k", "1")
                self.assertEqual(rc, 0, err)
                self.check(rows[0], lat, lon, h)
                rc, rows, err = d.query([img], "--top-k", "1", "--heading", "%.1f" % (h - 7))
                self.assertEqual(rc, 0, err)
                self.check(rows[0], lat, lon, h)
            self.assertEqual(d.metric('geoloc_frames_total{status="ok"}'), 2 * len(self.views))
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_a_bad_heading_is_refused_and_the_stream_goes_on(self):
        """heading_deg NaN or out of range: Error{BAD_REQUEST} for that frame
        (not fatal), and the next frame is answered."""
        import struct
        d = Daemon(model=self.model, map_path=self.map)
        try:
            with open(self.views[0][0], "rb") as f:
                png = f.read()
            s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
            hello = bytes([0x0a, 0x02, 0x08, 0x01])  # ClientMessage{hello{protocol_version 1}}
            s.sendall(len(hello).to_bytes(4, "big") + hello)
            image = bytes([0x1a]) + varint(len(png)) + png + bytes([0x20, 0x02])
            for i, h in enumerate((float("nan"), 1000.0, 37.0)):
                body = bytes([0x08]) + varint(i + 1) + image + b"\x41" + struct.pack("<d", h)
                msg = bytes([0x12]) + varint(len(body)) + body  # Frame{id, image, PNG, heading}
                s.sendall(len(msg).to_bytes(4, "big") + msg)
            answers = {}
            buf = b""
            while len(answers) < 3:
                while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "connection closed")
                    buf += chunk
                n = int.from_bytes(buf[:4], "big")
                m, buf = parse(buf[4:4 + n]), buf[4 + n:]
                if 3 in m:  # Error{code 1, frame_id 3, fatal 4}
                    e = parse(m[3])
                    self.assertFalse(e.get(4, 0), e)
                    answers[e[3]] = ("error", e[1])
                elif 2 in m:  # Estimate{frame_id 1, status 2}
                    e = parse(m[2])
                    answers[e[1]] = ("estimate", e[2])
            s.close()
            self.assertEqual(answers, {1: ("error", 12), 2: ("error", 12), 3: ("estimate", 1)})
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_full_scan(self):
        """[search] fine_full_scan_cells: a map this small is scanned at every
        placement, as `geoloc locate --fine-full-scan` does in-process; with
        one global candidate and no shifts around it, only the full scan
        reaches every frame's own place."""
        narrow = ["--top-k", "1", "--fine-top-k", "1", "--fine-radius", "0"]
        imgs = [v[0] for v in self.views]

        def locate(*extra):
            r = subprocess.run([GEOLOC, "locate", "--model", self.model, "--map", self.map,
                                "--format", "csv", *narrow, *extra, *imgs],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            return answers(csv.DictReader(io.StringIO(r.stdout)))

        windows, full = locate(), locate("--fine-full-scan", "100000")
        self.assertNotEqual([(windows[i][0]["lat"], windows[i][0]["lon"]) for i in imgs],
                            [(full[i][0]["lat"], full[i][0]["lon"]) for i in imgs])
        d = Daemon(model=self.model, map_path=self.map,
                   model_extra="[search]\nfine_top_k = 1\nfine_radius_cells = 0\n"
                               "fine_full_scan_cells = 100000")
        try:
            self.assertIn("every placement scanned", d.log_text())
            rc, rows, err = d.query(imgs, "--top-k", "1")
            self.assertEqual(rc, 0, err)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())
        served = answers(rows)
        for img, lat, lon, h in self.views:
            self.check(served[img][0], lat, lon, h)
            self.assertAlmostEqual(float(served[img][0]["lat"]), float(full[img][0]["lat"]), 6)
            self.assertAlmostEqual(float(served[img][0]["lon"]), float(full[img][0]["lon"]), 6)

    def test_search_threads(self):
        """[search] threads = 2: frames with and without a heading are
        served as with one thread; a reload that asks for another number
        keeps the running threads (each with its fine stage) and says so."""
        d = Daemon(model=self.model, map_path=self.map, model_extra="[search]\nthreads = 2")
        try:
            for round in range(2):
                imgs = [v[0] for v in self.views] * 3
                rc, rows, err = d.query(imgs, "--top-k", "1", "--window", "9")
                self.assertEqual(rc, 0, err)
                by = answers(rows)
                for img, lat, lon, h in self.views:
                    self.assertEqual(len(by[img]), 3)
                    for row in by[img]:
                        self.check(row, lat, lon, h)
                if round == 0:
                    d.model_extra = "[search]\nthreads = 5"
                    d.write_conf("", self.model)
                    d.proc.send_signal(signal.SIGHUP)
                    deadline = time.time() + 30
                    while ("with its model and maps" not in d.log_text()
                           and time.time() < deadline):
                        time.sleep(0.1)
                    self.assertIn("[search] threads changed", d.log_text())
                    self.assertIn("configuration reloaded with its model and maps", d.log_text())
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_fine_stage_off(self):
        """[search] fine = false: the global stage alone, which estimates no
        heading."""
        d = Daemon(model=self.model, map_path=self.map, model_extra="[search]\nfine = false")
        try:
            rc, rows, err = d.query([self.views[0][0]], "--top-k", "1")
            self.assertEqual(rc, 0, err)
            self.assertEqual(rows[0]["status"], "OK")
            self.assertEqual(rows[0]["heading_deg"], "")
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())


class Conn:
    """A raw protocol connection: length-prefixed protobuf, messages built
    and read field by field."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, field, body):
        msg = bytes([field << 3 | 2]) + varint(len(body)) + body  # ClientMessage{oneof}
        self.s.sendall(len(msg).to_bytes(4, "big") + msg)

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
            chunk = self.s.recv(65536)
            if not chunk:
                raise AssertionError("connection closed")
            self.buf += chunk
        n = int.from_bytes(self.buf[:4], "big")
        m, self.buf = parse(self.buf[4:4 + n]), self.buf[4 + n:]
        return m

    def hello(self, track, lag=0):
        options = b"\x18\x01" if track else b""  # StreamOptions{track 3}
        if lag:
            options += b"\x28" + varint(lag)  # fixed_lag_frames 5
        self.send(1, b"\x08\x01" + (b"\x2a" + varint(len(options)) + options if track else b""))
        return parse(self.recv()[1])  # Welcome

    def frame(self, fid, jpeg, time_us=None, vel=(), heading=None):
        import struct
        body = b"\x08" + varint(fid) + b"\x1a" + varint(len(jpeg)) + jpeg + b"\x20\x01"  # JPEG
        if time_us is not None:
            body += b"\x10" + varint(time_us)
        if heading is not None:
            body += b"\x41" + struct.pack("<d", heading)
        for tag, v in vel:  # velocity_north_mps 10, velocity_east_mps 11 (doubles)
            body += bytes([tag << 3 | 1]) + struct.pack("<d", v)
        self.send(2, body)

    def answer(self):
        """('estimate', Estimate fields) or ('error', Error fields)."""
        m = self.recv()
        return ("estimate", parse(m[2])) if 2 in m else ("error", parse(m[3]))

    def close(self):
        self.s.close()


class TrackServing(unittest.TestCase):
    """Tracking through geolocd: the shipped model, a map of the east half
    with a dense layer, and a simulated flight (make-flights) with a gap and
    a kidnap, streamed with StreamOptions.track."""

    @classmethod
    def setUpClass(cls):
        env = dict(os.environ, PYTHONPATH=os.path.join(SRC, "python"))
        py = ["/usr/bin/python3", "-m", "geoloc_train"]
        naip = os.path.join(SRC, "data", "naip")
        cls.model = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")
        bbox = subprocess.run(py + ["xtime-bbox", "--naip", naip], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()
        cls.map = os.path.join(FIX.dir, "east.map")
        subprocess.run([GEOLOC, "map", "build", "--model", cls.model, "--ortho", RASTER,
                        "--bbox", bbox, "--out", cls.map], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cls.flight = os.path.join(FIX.dir, "flight")
        subprocess.run(py + ["make-flights", "--naip", naip, "--out", cls.flight, "--flights", "1",
                             "--frames", "60", "--years", "2017", "--seed", "11"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(cls.flight, "labels.csv")) as f:
            cls.labels = list(csv.DictReader(f))
        with open(os.path.join(cls.flight, cls.labels[0]["file"]), "rb") as f:
            cls.jpeg = f.read()

    def test_a_flight_is_tracked(self):
        """Every frame is answered with a track; the track locks within
        100 m of the truth, loses the lock at the kidnap and finds the
        vehicle again; the tracked positions beat the single frames."""
        d = Daemon(model=self.model, map_path=self.map)
        try:
            r = subprocess.run([GEOLOC, "eval", "--connect", "127.0.0.1:%d" % d.port, "--flights",
                                self.flight, "--use-heading", "--heading-noise", "10",
                                "--per-frame", "--format", "csv"],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            rows = list(csv.DictReader(io.StringIO(r.stdout)))
            self.assertEqual(len(rows), len(self.labels))
            self.assertTrue(all(x["track_status"] in ("ACQUIRING", "LOCKED", "LOST")
                                for x in rows), rows)
            kid = next(i for i, l in enumerate(self.labels) if l["event"] == "kidnap")
            good = lambda x: x["track_status"] == "LOCKED" and float(x["track_error_m"]) <= 100
            # Locked on the truth before the kidnap, and again after it.
            self.assertTrue(any(good(x) for x in rows[5:kid]), rows[:kid])
            self.assertTrue(any(good(x) for x in rows[kid:kid + 10]), rows[kid:kid + 10])
            self.assertFalse(good(rows[0]))  # the first frame only acquires
            tracked = sum(float(x["track_error_m"]) <= 100 for x in rows)
            single = sum(x["error_m"] != "" and float(x["error_m"]) <= 100 for x in rows)
            self.assertGreaterEqual(tracked, single, r.stdout)
            self.assertIn("tracked: locked", r.stderr)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_search_threads_keep_each_stream_in_order(self):
        """[search] threads = 3, with other clients' frames searched beside
        it: the flight's frames still step its filter one at a time and in
        order, so the daemon's tracks are those of `geoloc eval` in-process,
        frame for frame; every frame of every client is answered once."""
        args = ["--flights", self.flight, "--use-heading", "--heading-noise", "10",
                "--per-frame", "--format", "csv"]
        r = subprocess.run([GEOLOC, "eval", "--model", self.model, "--map", self.map, *args],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        local = list(csv.DictReader(io.StringIO(r.stdout)))
        # Never stale: under this load a frame of the flight can wait longer
        # than the default 1 s and be dropped (rightly, but then its track is
        # not the in-process one); what is tested here is the order.
        d = Daemon("stale_after_ms = 0", model=self.model, map_path=self.map,
                   model_extra="[search]\nthreads = 3")
        try:
            frames = [os.path.join(self.flight, x["file"]) for x in self.labels[:8]]
            load = subprocess.Popen([GEOLOC, "bench", "--connect", "127.0.0.1:%d" % d.port,
                                     "--clients", "4", "--frames", "120", *frames],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            r = subprocess.run([GEOLOC, "eval", "--connect", "127.0.0.1:%d" % d.port, *args],
                               capture_output=True, text=True, timeout=300)
            out, err = load.communicate(timeout=300)
            self.assertEqual(load.returncode, 0, err)
            self.assertIn("each exactly once: yes", out + err)
            self.assertEqual(r.returncode, 0, r.stderr)
            served = list(csv.DictReader(io.StringIO(r.stdout)))
            self.assertEqual(len(served), len(local))
            keys = [k for k in local[0] if k.startswith("track_") and k != "track_latency_ms"]
            self.assertIn("track_status", keys)
            for a, b in zip(local, served):
                self.assertEqual([a[k] for k in keys], [b[k] for k in keys], (a, b))
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_heading_seed_draws_other_compass_errors(self):
        """`geoloc eval --heading-seed`: seed 0 is the default draw of the
        compass errors; another seed draws others, which change what the
        fine stage finds (errors of up to 90 degrees, searched +-20)."""
        def run(*extra):
            r = subprocess.run([GEOLOC, "eval", "--model", self.model, "--map", self.map,
                                "--flights", self.flight, "--use-heading", "--heading-noise", "90",
                                "--per-frame", "--format", "csv", *extra],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            rows = list(csv.DictReader(io.StringIO(r.stdout)))
            self.assertEqual(len(rows), len(self.labels))
            return [(x["est_lat"], x["est_lon"], x["track_status"], x["track_error_m"])
                    for x in rows]
        default = run()
        self.assertEqual(run("--heading-seed", "0"), default)
        self.assertNotEqual(run("--heading-seed", "3"), default)

    def test_tracked_frames_need_time_in_order(self):
        """A tracked stream: a frame without capture_time_us, one whose time
        goes back, and one with half a velocity get Error{BAD_REQUEST} (not
        fatal); frames in order get an Estimate with a Track."""
        d = Daemon(model=self.model, map_path=self.map)
        try:
            c = Conn(d.port)
            self.assertEqual(c.hello(track=True).get(8), 1)  # Welcome.tracking
            t0 = 1700000000000000
            c.frame(1, self.jpeg, time_us=t0)
            c.frame(2, self.jpeg)                                # no time
            c.frame(3, self.jpeg, time_us=t0 - 1)                # back in time
            c.frame(4, self.jpeg, time_us=t0 + 1, vel=((10, 3.0),))  # north only
            c.frame(5, self.jpeg, time_us=t0 + 500000, vel=((10, 3.0), (11, -1.0)))
            got = {}
            for _ in range(5):
                kind, m = c.answer()
                got[m[1] if kind == "estimate" else m[3]] = (kind, m)
            for fid in (2, 3, 4):
                self.assertEqual(got[fid][0], "error", got[fid])
                self.assertEqual(got[fid][1][1], 12)  # BAD_REQUEST
                self.assertFalse(got[fid][1].get(4, 0))  # not fatal
            self.assertIn(b"capture_time_us", got[2][1][2])
            self.assertIn(b"back in time", got[3][1][2])
            for fid in (1, 5):
                self.assertEqual(got[fid][0], "estimate", got[fid])
                track = parse(got[fid][1][6])  # Estimate.track
                self.assertIn(track[1], (1, 2, 3))  # ACQUIRING, LOCKED, LOST
                self.assertIn(3, track)  # lon
            c.close()
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_fixed_lag_smoothing(self):
        """StreamOptions.fixed_lag_frames 2: from the third frame on, each
        Estimate also carries the smoothed track of the frame two before
        (Track.frame_id); a lag above 30 is refused in Hello."""
        d = Daemon(model=self.model, map_path=self.map)
        try:
            c = Conn(d.port)
            self.assertEqual(c.hello(track=True, lag=2).get(8), 1)
            t0 = 1700000000000000
            for i in range(5):
                c.frame(i + 1, self.jpeg, time_us=t0 + i * 500000)
            got = {}
            for _ in range(5):
                kind, m = c.answer()
                self.assertEqual(kind, "estimate", m)
                got[m[1]] = m
            for fid in range(1, 6):
                if fid <= 2:
                    self.assertNotIn(7, got[fid])
                else:
                    sm = parse(got[fid][7])
                    self.assertEqual(sm[7], fid - 2)  # Track.frame_id
                    self.assertIn(sm[1], (1, 2, 3))
            c.close()
            c = Conn(d.port)
            c.send(1, b"\x08\x01\x2a\x04\x18\x01\x28\x1f")  # track, fixed_lag_frames 31
            m = c.recv()
            self.assertIn(3, m)
            e = parse(m[3])
            self.assertEqual(e[1], 12)  # BAD_REQUEST
            self.assertEqual(e.get(4), 1)  # fatal
            c.close()
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_untracked_streams_and_maps(self):
        """Without StreamOptions.track, or on a map without a dense layer,
        Welcome.tracking is false and estimates carry no track."""
        for map_path, track in ((self.map, False), (FIX.map, True)):
            d = Daemon(model=self.model if map_path == self.map else None, map_path=map_path)
            try:
                c = Conn(d.port)
                self.assertFalse(c.hello(track=track).get(8, 0))
                c.frame(1, self.jpeg)
                kind, m = c.answer()
                self.assertEqual(kind, "estimate", m)
                self.assertNotIn(6, m)
                c.close()
            finally:
                self.assertEqual(d.stop(), 0, d.log_text())


if __name__ == "__main__":
    FIX = Fixture()
    unittest.main(verbosity=2)
