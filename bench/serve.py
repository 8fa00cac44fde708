#!/usr/bin/python3
"""Serving overhead: geolocd's frames/s against the engine alone, same run.

    meson setup build && ninja -C build    # geoloc (with bench), geolocd, bench/cpu_engine
    /usr/bin/python3 bench/serve.py               # 224x224 default model, ~2 min on 2 cores
    /usr/bin/python3 bench/serve.py --quick       # 64x64 input: a plumbing check, ~20 s
    /usr/bin/python3 bench/serve.py --build DIR --clients 1,8,32 --frames 600

Debian's /usr/bin/python3 is the interpreter with torch and GDAL (python3-torch,
python3-gdal): torch exports the model, GDAL cuts the frames. Not a test:
nothing asserts the ratio.

Everything happens in a temporary directory, removed at the end (--keep
keeps it):
  1. a random model of the default architecture (`geoloc_train
     export-random`, seed 1) at --input N (224, the realistic size; --quick:
     64), and a map pack of the demo NAIP raster built with it (`geoloc map
     build`, 320 m tiles, 160 m stride);
  2. 16 query frames cut from that raster with GDAL: 224x224 JPEGs (quality
     90), 224x224 whatever --input is, because the engine driver
     (bench/cpu_engine.c) feeds 224x224 frames: both sides resize the same;
  3. rounds (--rounds, 3; --quick: 2), each: the engine alone with the
     bench/cpu_engine driver on the same model file and the same thread
     count, at batch 1 and at the daemon's max_batch; then geolocd on
     loopback (free ports, CPU backend, config in the temp dir), warmed up
     with 4*max_batch frames, then `geoloc bench --clients N --frames M
     --window W` for each client count (the last line, "summary: sent M,
     answered M, each exactly once: yes; F frames/s, p99 L ms", is parsed;
     anything but "yes", or a non-zero exit, fails the run); then SIGTERM,
     which must end geolocd with status 0;
  4. the table: for each figure the best round. The machine is shared and
     other work only ever slows a measurement down, so the best round is
     the closest to the machine's own capacity, on both sides of the ratio;
     the line under the table lists every round, to show the spread.

The daemon's config departs from conf/geolocd.conf's defaults only where a
closed-loop benchmark needs it: stale_after_ms = 0 (32 clients * 8 frames in
flight keep seconds of queue; stale drops would be fast non-answers that
inflate frames/s) and queue_depth >= 2 * clients * window (no BUSY).
OMP_WAIT_POLICY is passive for the daemon and the driver alike, as
systemd/geolocd.service.in runs geolocd, unless the environment sets it: with
libgomp's default active waiting, oneDNN's threads spin against the decode
workers and whatever else runs on 2 cores, and every figure swings by 10x.

Columns:
  clients     concurrent `geoloc bench` clients, each with --window frames in
              flight (8)
  frames      frames sent in the run, over all clients
  frames/s    daemon throughput as `geoloc bench` measures it (answers over
              the run's wall time, client side: protocol, decode, inference,
              search all included)
  p99 ms      99th percentile round trip, client side; under a closed loop
              mostly queueing (about clients * window / frames/s)
  batch       mean frames per inference batch in the run (daemon /metrics)
  decode ms   mean JPEG decode time of a frame (daemon /metrics)
  search ms   mean map search + clustering time of a frame (daemon /metrics);
              it runs on the search thread, overlapping the next batch's
              inference, and is wall time: it includes waiting for a core
  daemon cpu  geolocd's CPU time over the run's wall time, as a share of all
              cores (100% = every core busy the whole run)
  client cpu  the same for `geoloc bench`, which shares the cores
  ratio/cpu   frames per geolocd CPU-second over frames per engine-alone
              CPU-second (batch max_batch): the ratio as if both had had the
              same CPU time. A diagnostic for a loaded machine, where neither
              side gets every core and the plain ratio swings with the load
  ratio       frames/s / engine-alone frames/s at batch max_batch (best
              round): the serving-overhead ratio (docs/ARCHITECTURE.md
              section 15); goal >= 0.90 at 32 clients

The engine line gives the driver's frames/s at batch 1 and max_batch, and
its CPU share at max_batch (compare with daemon cpu: on a loaded machine
neither gets every core). Exit status 0 when every run answered every frame
exactly once and every geolocd exited 0 on SIGTERM, else 1.

Options: --build DIR (default build), --quick, --input N, --clients LIST,
--frames M (600; --quick: 300), --window W, --max-batch B (8), --threads T
(CPU cores; the daemon's [model] threads and the driver's), --decode-threads
D (0: one per core), --batch-window-us U (2000), --seconds S (per engine
measurement, 3; --quick: 1), --rounds R, --keep, --verbose (each `geoloc
bench` output on stderr).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RASTER = os.path.join(REPO, "data", "naip", "m_4709963_se_14_1_20200831.tif")
TILE_M, STRIDE_M, FRAME_PX, NFRAMES = 320, 160, 224, 16
SUMMARY = re.compile(r"summary: sent (\d+), answered (\d+), each exactly once: (\w+); "
                     r"([0-9.]+) frames/s, p99 ([0-9.]+) ms")


def log(msg: str) -> None:
    print(f"serve: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit("serve: %s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                           r.stderr))
    return r


def engine_fps(driver: str, model: str, batch: int, threads: int, seconds: float):
    """(frames/s, share of all cores used) of the engine alone."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = run([driver, model, str(batch), str(threads), str(seconds)]).stdout
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return json.loads(out.strip().splitlines()[-1])["frames_per_s"], cpu / (wall * os.cpu_count())


def map_tiles(geoloc: str, map_dir: str) -> list:
    """(id, grid_x, grid_y) of every tile, from `geoloc map tiles`."""
    out = subprocess.run([geoloc, "map", "tiles", map_dir], check=True, capture_output=True,
                         text=True).stdout
    return [(int(r["id"]), float(r["grid_x"]), float(r["grid_y"]))
            for r in csv.DictReader(io.StringIO(out))]


def cut_frames(tmp: str, tiles: list) -> list:
    from osgeo import gdal  # Debian python3-gdal

    gdal.UseExceptions()
    gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")  # no .aux.xml next to the frames
    xmin, xmax = min(t[1] for t in tiles), max(t[1] for t in tiles)
    ymin, ymax = min(t[2] for t in tiles), max(t[2] for t in tiles)
    rows = [t for t in tiles if xmin < t[1] < xmax and ymin < t[2] < ymax]
    step = max(1, len(rows) // NFRAMES)
    frames, h = [], TILE_M / 2
    os.makedirs(os.path.join(tmp, "frames"))
    for tid, x, y in rows[::step][:NFRAMES]:
        out = os.path.join(tmp, "frames", "q_%04d.jpg" % tid)
        gdal.Translate(out, RASTER, format="JPEG", projWin=[x - h, y + h, x + h, y - h],
                       width=FRAME_PX, height=FRAME_PX, resampleAlg="bilinear",
                       bandList=[1, 2, 3], creationOptions=["QUALITY=90"])
        frames.append(out)
    return frames


class Daemon:
    def __init__(self, geolocd: str, tmp: str, model: str, map_dir: str, a):
        self.port, self.mport = free_port(), free_port()
        self.conf = os.path.join(tmp, "geolocd-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("[daemon]\nlog_level = notice\ndecode_threads = %d\nstale_after_ms = 0\n"
                    "max_frames_in_flight = %d\nqueue_depth = %d\n"
                    "[listen]\ntcp = 127.0.0.1:%d\n"
                    "[model]\npath = %s\nbackend = cpu\nmax_batch = %d\nthreads = %d\n"
                    "batch_window_us = %d\n"
                    "[map area]\npath = %s\n"
                    "[metrics]\nlisten = 127.0.0.1:%d\n"
                    % (a.decode_threads, max(32, a.window),
                       max(256, 2 * a.window * max(a.clients)), self.port, model,
                       a.max_batch, a.threads, a.batch_window_us, map_dir, self.mport))
        self.log_path = os.path.join(tmp, "geolocd-%d.log" % self.port)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([geolocd, "--config", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("serve: geolocd exited %d:\n%s" % (self.proc.returncode,
                                                                    self.log_text()))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.mport,
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise SystemExit("serve: geolocd did not become ready:\n" + self.log_text())

    def log_text(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def counters(self) -> dict:
        """_sum and _count of the daemon's histograms, by name."""
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport,
                                      timeout=10).read().decode()
        got = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.endswith(("_sum", "_count")) and name.startswith("geoloc_"):
                got[name] = float(value)
        return got

    def cpu_s(self) -> float:
        """User + system CPU seconds geolocd has used so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc


def bench(geoloc: str, port: int, clients: int, frames: int, window: int, images: list,
          heading=None):
    cmd = [geoloc, "bench", "--connect", "127.0.0.1:%d" % port, "--clients", str(clients),
           "--frames", str(frames), "--window", str(window), *images]
    if heading is not None:
        cmd[2:2] = ["--heading", str(heading)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    m = SUMMARY.search(lines[-1]) if lines else None
    if not m:
        raise SystemExit("serve: no summary line from %s (exit %d):\n%s%s"
                         % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    sent, answered, once, fps, p99 = m.groups()
    return {"rc": r.returncode, "sent": int(sent), "answered": int(answered), "once": once,
            "fps": float(fps), "p99": float(p99), "out": r.stdout + r.stderr, "wall": wall,
            "client_cpu": client_cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build", help="meson build directory (default build)")
    p.add_argument("--quick", action="store_true",
                   help="64x64 model input, 300 frames per run, 1 s engine measurements, "
                        "2 rounds")
    p.add_argument("--input", type=int, help="model input size (default 224; --quick: 64)")
    p.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    p.add_argument("--frames", type=int, help="frames per run (default 600; --quick: 300)")
    p.add_argument("--window", type=int, default=8, help="frames in flight per client (8)")
    p.add_argument("--max-batch", type=int, default=8, help="[model] max_batch (8)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="[model] threads and the engine driver's threads (CPU cores)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="[daemon] decode_threads (0: one per core)")
    p.add_argument("--batch-window-us", type=int, default=2000, help="[model] batch_window_us")
    p.add_argument("--seconds", type=float, help="per engine-alone measurement (3; --quick: 1)")
    p.add_argument("--rounds", type=int, help="rounds, best of which is reported (3; --quick: 2)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--model", help="serve this model file instead of a random one (its own "
                   "input size; e.g. data/models/geoloc-naip-mnv2-64.safetensors)")
    p.add_argument("--dense-layer", type=int, default=0,
                   help="map build --dense-layer: 6 serves the fine stage (default 0: the "
                   "global stage alone, the engine's own work)")
    p.add_argument("--heading", type=float,
                   help="send every frame this compass heading (the fine stage scans a few "
                   "headings instead of the full circle)")
    p.add_argument("--verbose", action="store_true", help="print each geoloc bench output")
    a = p.parse_args()
    a.input = a.input or (64 if a.quick else 224)
    a.frames = a.frames or (300 if a.quick else 600)
    a.seconds = a.seconds or (1.0 if a.quick else 3.0)
    a.rounds = a.rounds or (2 if a.quick else 3)
    a.clients = [int(c) for c in a.clients.split(",")]

    build = os.path.abspath(a.build)
    geoloc = os.path.join(build, "tools", "geoloc")
    geolocd = os.path.join(build, "daemon", "geolocd")
    driver = os.path.join(build, "bench", "cpu_engine")
    for exe in (geoloc, geolocd, driver):
        if not os.access(exe, os.X_OK):
            raise SystemExit("serve: %s is missing: ninja -C %s" % (exe, a.build))
    if subprocess.run([geoloc, "bench", "--help"], capture_output=True).returncode != 0:
        raise SystemExit("serve: %s has no bench command: rebuild it" % geoloc)
    # As systemd/geolocd.service.in runs the daemon; the driver gets the same.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

    tmp = tempfile.mkdtemp(prefix="geoloc-bench-serve-")
    daemon = None
    ok = True
    t_start = time.time()
    load_before = os.getloadavg()[0]
    try:
        env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
        cfg = os.path.join(tmp, "arch.json")
        with open(cfg, "w") as f:
            f.write('{"input_size": [%d, %d]}' % (a.input, a.input))
        model = os.path.join(tmp, "model.safetensors")
        if a.model:
            model = os.path.abspath(a.model)
        else:
            log("exporting a random %dx%d model" % (a.input, a.input))
            run(["/usr/bin/python3", "-m", "geoloc_train", "export-random", "--config", cfg,
                 "--seed", "1", "--out", model], env=env)
        map_dir = os.path.join(tmp, "area.map")
        log("building the map pack")
        t0 = time.time()
        run([geoloc, "map", "build", "--model", model, "--ortho", RASTER, "--tile-m",
             str(TILE_M), "--stride-m", str(STRIDE_M), "--out", map_dir, "--dense-layer",
             str(a.dense_layer)])
        tiles = map_tiles(geoloc, map_dir)
        ntiles = len(tiles)
        log("map: %d tiles in %.1f s" % (ntiles, time.time() - t0))
        images = cut_frames(tmp, tiles)

        eng1, engb = [], []
        runs = {n: [] for n in a.clients}
        for rnd in range(1, a.rounds + 1):
            log("round %d/%d: engine alone, batch 1 and %d, %d thread(s)"
                % (rnd, a.rounds, a.max_batch, a.threads))
            eng1.append(engine_fps(driver, model, 1, a.threads, a.seconds))
            engb.append(engine_fps(driver, model, a.max_batch, a.threads, a.seconds))
            daemon = Daemon(geolocd, tmp, model, map_dir, a)
            bench(geoloc, daemon.port, a.max_batch, 4 * a.max_batch, a.window, images,
                  a.heading)  # warm-up
            for n in a.clients:
                log("round %d/%d: geoloc bench, %d client(s), %d frames"
                    % (rnd, a.rounds, n, a.frames))
                m0, d0 = daemon.counters(), daemon.cpu_s()
                r = bench(geoloc, daemon.port, n, a.frames, a.window, images, a.heading)
                r["daemon_cpu"] = daemon.cpu_s() - d0
                m1 = daemon.counters()

                def mean(h):
                    c = m1.get(h + "_count", 0) - m0.get(h + "_count", 0)
                    return (m1[h + "_sum"] - m0[h + "_sum"]) / c if c > 0 else float("nan")
                r["batch"] = mean("geoloc_batch_size")
                r["decode_ms"] = 1e3 * mean("geoloc_decode_seconds")
                r["search_ms"] = 1e3 * mean("geoloc_search_seconds")
                if a.verbose:
                    print(r["out"], file=sys.stderr)
                if r["rc"] != 0 or r["once"] != "yes" or r["sent"] != a.frames:
                    ok = False
                    print("serve: %d clients: geoloc bench exited %d:\n%s"
                          % (n, r["rc"], r["out"]), file=sys.stderr)
                runs[n].append(r)
            rc = daemon.stop()
            daemon = None
            if rc != 0:
                ok = False
                log("geolocd exited %d on SIGTERM (expected 0)" % rc)
        load_after = os.getloadavg()[0]

        best1 = max(eng1)[0]
        bestb, bestb_cpu = max(engb)  # best frames/s, and the CPU share it took
        eng1, engb = [e[0] for e in eng1], [e[0] for e in engb]
        fmt = lambda xs: ", ".join("%.1f" % x for x in xs)  # noqa: E731
        print("serve: default architecture at %dx%d, %d thread(s), max_batch %d, "
              "batch_window_us %d, decode_threads %s, window %d, %d frames per run, "
              "%d-tile map, %dx%d JPEG frames, OMP_WAIT_POLICY=%s, best of %d round(s), "
              "load average %.1f before, %.1f after"
              % (a.input, a.input, a.threads, a.max_batch, a.batch_window_us,
                 a.decode_threads or "0 (one per core)", a.window, a.frames, ntiles,
                 FRAME_PX, FRAME_PX, os.environ["OMP_WAIT_POLICY"], a.rounds, load_before,
                 load_after))
        print("engine alone (bench/cpu_engine): batch 1 %.1f frames/s (rounds: %s); "
              "batch %d %.1f frames/s, cpu %.0f%% (rounds: %s)"
              % (best1, fmt(eng1), a.max_batch, bestb, 100 * bestb_cpu, fmt(engb)))
        ncpu = os.cpu_count()
        print(f"{'clients':>7}  {'frames':>6}  {'frames/s':>8}  {'p99 ms':>8}  {'batch':>5}  "
              f"{'decode ms':>9}  {'search ms':>9}  {'daemon cpu':>10}  {'client cpu':>10}  "
              f"{'ratio/cpu':>9}  {'ratio':>5}")
        for n in a.clients:
            r = max(runs[n], key=lambda x: x["fps"])
            dcpu = "%.0f%%" % (100 * r["daemon_cpu"] / (r["wall"] * ncpu))
            ccpu = "%.0f%%" % (100 * r["client_cpu"] / (r["wall"] * ncpu))
            # frames per daemon CPU-second over frames per engine CPU-second
            per_cpu = (r["fps"] * r["wall"] / r["daemon_cpu"]) / (bestb / (bestb_cpu * ncpu))
            print(f"{n:>7}  {r['sent']:>6}  {r['fps']:>8.1f}  {r['p99']:>8.1f}  "
                  f"{r['batch']:>5.2f}  {r['decode_ms']:>9.2f}  {r['search_ms']:>9.2f}  "
                  f"{dcpu:>10}  {ccpu:>10}  {per_cpu:>9.2f}  {r['fps'] / bestb:>5.2f}")
        print("rounds, frames/s: " + "; ".join(
            "%d client(s) %s" % (n, fmt([x["fps"] for x in runs[n]])) for n in a.clients))
        print("serve: %.0f s in all%s" % (time.time() - t_start,
                                          "" if ok else "; FAILED (see above)"))
    finally:
        if daemon is not None:
            daemon.proc.kill()
            daemon.proc.wait()
            daemon.log.close()
        if a.keep:
            log("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
