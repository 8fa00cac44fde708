"""geoloc as a GPS receiver, read back by implementations we did not write.

mavlink: GPS_INPUT packets decoded by npm's node-mavlink (installed by this
test with npm --ignore-scripts into the build tree, or taken from
GEOLOC_NODE_MODULES): every field, the CRC (node-mavlink's splitter drops a
packet whose CRC is wrong, and its own serializer must write our bytes
again), over stdout, a UDP round trip on loopback and a pseudo-terminal
standing for a serial port; then `geoloc query --format mavlink`,
`geoloc query --mavlink udp:...` and `geoloc bridge` against a geolocd
serving the shipped model, the bridge across a restart of geolocd.

nmea: the NMEA sentences of known fixes fed to gpsd by Debian's gpsfake:
gpsd must report each fix with its time, latitude and longitude, in its
"dead reckoning" status (GGA quality 6, estimated).

Exits 77 (skipped) when node/npm or node-mavlink (mavlink), or gpsfake
(nmea), are not there: an offline machine skips, it does not fail.

usage: test_autopilot.py mavlink|nmea
env: EMIT (tests/autopilot/emit), GEOLOC_BIN, GEOLOCD_BIN, NODE_DIR (where
npm installs), SRC (the source tree)
"""
import datetime
import json
import math
import os
import pty
import select
import signal
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tty
import unittest

PART = sys.argv.pop(1) if len(sys.argv) > 1 else ""
HERE = os.path.dirname(os.path.abspath(__file__))
EMIT = os.environ.get("EMIT", "")
GEOLOC = os.environ.get("GEOLOC_BIN", "")
GEOLOCD = os.environ.get("GEOLOCD_BIN", "")
SRC = os.environ.get("SRC", os.path.dirname(os.path.dirname(HERE)))
NODE_DIR = os.environ.get("NODE_DIR", os.path.join(tempfile.gettempdir(), "geoloc-node"))
DECODER = os.path.join(HERE, "mavlink_decode.js")
NODE_MAVLINK = "node-mavlink@2.3.0"
SKIP = 77
sys.path.insert(0, os.path.join(SRC, "tests", "serving"))
from common import free_port, png, wait_listening  # noqa: E402

# common.xml: GPS_INPUT_IGNORE_FLAGS and GPS_FIX_TYPE.
ALT, HDOP, VDOP, VEL_HORIZ, VEL_VERT, SPEED_ACC, HORIZ_ACC, VERT_ACC = (1 << i for i in range(8))
NO_FIX, FIX_2D, FIX_3D = 1, 2, 3
ACQUIRING, LOCKED, LOST = 1, 2, 3

GPS_EPOCH = datetime.datetime(1980, 1, 6, tzinfo=datetime.timezone.utc)
LEAP_SECONDS = 18
T0 = 1795341907250000  # 2026-11-22 10:05:07.25 UTC, in microseconds


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def gps_week(time_us):
    t = datetime.datetime.fromtimestamp(time_us // 1000000, datetime.timezone.utc)
    ms = ((t - GPS_EPOCH) // datetime.timedelta(milliseconds=1) + LEAP_SECONDS * 1000 +
          time_us // 1000 % 1000)
    return ms // (7 * 86400 * 1000), ms % (7 * 86400 * 1000)


# Known answers: (time_us, lat, lon, radius_m, confidence, heading_deg,
# track_status, vn, ve); track_status 0 is an untracked frame's best
# candidate, NaN lat a frame without one.
NAN = float("nan")
FIXES = [
    (T0, 47.0123456, -99.2000001, 12.5, 0.9, 0.0, LOCKED, NAN, NAN),
    (T0 + 1000000, -33.8688197, 151.2092955, 40.0, 0.95, 271.25, LOCKED, 3.5, -1.25),
    (T0 + 2000000, 47.02, -99.15, 80.0, 0.3, 10.0, LOCKED, NAN, NAN),
    (T0 + 3000000, 47.03, -99.16, 300.0, 0.9, 45.0, ACQUIRING, NAN, NAN),
    (T0 + 4000000, 47.04, -99.17, 250.0, 0.9, NAN, LOST, NAN, NAN),
    (T0 + 5000000, 0.5, -0.25, 25.0, 0.7, NAN, 0, NAN, NAN),
    (T0 + 6000000, 89.9999999, 179.9999999, 10.0, 0.2, 359.996, 0, NAN, NAN),
    (T0 + 7000000, NAN, NAN, NAN, 0.0, NAN, 0, NAN, NAN),
]


def fixes_text(fixes):
    return "".join(",".join("nan" if isinstance(v, float) and math.isnan(v) else repr(v)
                            for v in f) + "\n" for f in fixes).encode()


def expected_gps_input(fix, gps_id, min_confidence=0.5):
    """GPS_INPUT's fields for a fix, by the rules geoloc documents."""
    time_us, lat, lon, radius, conf, heading, track, vn, ve = fix
    have_pos = not math.isnan(lat)
    if not have_pos or track in (ACQUIRING, LOST):
        fix_type = NO_FIX
    else:
        fix_type = FIX_3D if conf >= min_confidence else FIX_2D
    flags = ALT | HDOP | VDOP | VEL_VERT | SPEED_ACC | VERT_ACC
    if not (have_pos and radius > 0):
        flags |= HORIZ_ACC
    if math.isnan(vn):
        flags |= VEL_HORIZ
    yaw = 0
    if fix_type == FIX_3D and not math.isnan(heading):
        yaw = round(f32(heading) % 360 * 100) or 36000
    week, week_ms = gps_week(time_us)
    return {
        "time_usec": str(time_us), "time_week_ms": week_ms, "time_week": week,
        "lat": round(lat * 1e7) if have_pos else 0, "lon": round(lon * 1e7) if have_pos else 0,
        "alt": 0, "hdop": 65535, "vdop": 65535,
        "vn": 0 if math.isnan(vn) else vn, "ve": 0 if math.isnan(ve) else ve, "vd": 0,
        "speed_accuracy": 0, "horiz_accuracy": f32(radius) if not flags & HORIZ_ACC else 0,
        "vert_accuracy": 0, "ignore_flags": flags, "gps_id": gps_id, "fix_type": fix_type,
        "satellites_visible": 0, "yaw": yaw,
    }


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


def node_modules():
    """A node_modules holding node-mavlink: GEOLOC_NODE_MODULES, or one npm
    installs under NODE_DIR (once). None when there is no way to get it."""
    given = os.environ.get("GEOLOC_NODE_MODULES")
    if given:
        return given if os.path.isdir(os.path.join(given, "node-mavlink")) else None
    mods = os.path.join(NODE_DIR, "node_modules")
    if os.path.isdir(os.path.join(mods, "node-mavlink")):
        return mods
    if not shutil.which("node") or not shutil.which("npm"):
        return None
    os.makedirs(NODE_DIR, exist_ok=True)
    try:
        # --ignore-scripts: nothing from the registry runs at install time.
        r = subprocess.run(["npm", "install", "--prefix", NODE_DIR, "--ignore-scripts",
                            "--no-audit", "--no-fund", "--no-save", "--fetch-retries=1",
                            "--fetch-timeout=30000", NODE_MAVLINK],
                           capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        print("npm install %s failed:\n%s" % (NODE_MAVLINK, r.stderr[-2000:]))
        return None
    return mods if os.path.isdir(os.path.join(mods, "node-mavlink")) else None


MODS = None


def decode(data):
    """node-mavlink's reading of data: (packets, summary)."""
    r = subprocess.run(["node", DECODER, MODS, "stdin"], input=data, capture_output=True,
                       timeout=60, check=True)
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    return lines[:-1], lines[-1]


class UdpDecoder:
    """node-mavlink listening on UDP until count GPS_INPUT packets or
    timeout."""

    def __init__(self, count, timeout_ms=20000):
        self.p = subprocess.Popen(["node", DECODER, MODS, "udp", str(count), str(timeout_ms)],
                                  stdout=subprocess.PIPE, text=True)
        self.port = json.loads(self.p.stdout.readline())["port"]

    def result(self):
        out, _ = self.p.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines()]
        return lines[:-1], lines[-1]


class MavlinkCase(unittest.TestCase):
    def check_fields(self, got, want):
        for k, v in want.items():
            if isinstance(v, float):
                self.assertAlmostEqual(got[k], v, places=5, msg=k)
            else:
                self.assertEqual(got[k], v, k)

    def check_known(self, packets, summary, sysid, compid, gps_id, first_seq=0):
        self.assertEqual(summary["crc_errors"], 0)
        self.assertEqual(summary["invalid"], 0)
        self.assertEqual(summary["unknown"], 0)
        self.assertEqual(len(packets), len(FIXES))
        for i, (p, fix) in enumerate(zip(packets, FIXES)):
            self.assertEqual(p["name"], "GPS_INPUT")
            self.assertEqual(p["msgid"], 232)
            self.assertEqual(p["magic"], 0xFD)  # MAVLink 2
            self.assertEqual((p["incompat_flags"], p["compat_flags"]), (0, 0))
            self.assertEqual((p["sysid"], p["compid"]), (sysid, compid))
            self.assertEqual(p["seq"], (first_seq + i) % 256)
            self.assertTrue(p["reencoded_equal"], "node-mavlink writes other bytes: %r" % p)
            self.check_fields(p["fields"], expected_gps_input(fix, gps_id))


class TestMavlink(MavlinkCase):
    def test_stdout_every_field(self):
        data = subprocess.run([EMIT, "mavlink", "42", "197", "1"], input=fixes_text(FIXES),
                              capture_output=True, check=True).stdout
        packets, summary = decode(data)
        self.check_known(packets, summary, 42, 197, 1)
        # Trailing zero bytes are cut (a no-fix packet has no yaw, no
        # satellites): the decoder must have put them back.
        self.assertLess(packets[3]["payload_length"], 65)
        self.assertEqual(packets[0]["payload_length"], 65)

    def test_crc_is_checked(self):
        """A byte changed in a packet makes node-mavlink refuse it: the CRC
        that passes above is really checked."""
        data = bytearray(subprocess.run([EMIT, "mavlink", "1", "191", "0"],
                                        input=fixes_text(FIXES[:2]), capture_output=True,
                                        check=True).stdout)
        data[20] ^= 0x01  # in the first packet's latitude
        packets, summary = decode(bytes(data))
        self.assertEqual(len(packets), 1)
        self.assertEqual(summary["crc_errors"], 1)

    def test_udp_round_trip(self):
        dec = UdpDecoder(len(FIXES))
        subprocess.run([EMIT, "mavlink", "7", "191", "0", "udp:127.0.0.1:%d" % dec.port],
                       input=fixes_text(FIXES), check=True, timeout=60)
        packets, summary = dec.result()
        self.assertEqual(packets[0]["name"], "HEARTBEAT")
        self.assertEqual(packets[0]["fields"]["type"], 18)  # MAV_TYPE_ONBOARD_CONTROLLER
        self.assertTrue(packets[0]["reencoded_equal"])
        self.check_known(packets[1:], summary, 7, 191, 0, first_seq=1)

    def test_serial_pty(self):
        """A pseudo-terminal stands for the autopilot's UART."""
        master, slave = pty.openpty()
        tty.setraw(master)
        path = os.ttyname(slave)
        p = subprocess.Popen([EMIT, "mavlink", "3", "191", "2", "serial:%s:115200" % path],
                             stdin=subprocess.PIPE)
        p.stdin.write(fixes_text(FIXES))
        p.stdin.close()
        # Our end of the slave stays open, so that reading the master never
        # fails while emit has not opened the port yet or has closed it.
        data = b""
        deadline = time.time() + 30
        while time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                data += os.read(master, 4096)
            elif p.poll() is not None:
                break
        self.assertEqual(p.wait(timeout=30), 0)
        os.close(slave)
        os.close(master)
        packets, summary = decode(data)
        self.assertEqual(packets[0]["name"], "HEARTBEAT")
        self.check_known(packets[1:], summary, 3, 191, 2, first_seq=1)


# --- end to end, through geolocd ---------------------------------------------

RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
MODEL = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")
BBOX = "-99.1618,47.0155,-99.1487,47.0245"  # about 1 km a side inside the raster


class Daemon:
    def __init__(self, workdir, map_path, port=None):
        self.port = port or free_port()
        self.conf = os.path.join(workdir, "geolocd-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\nmax_batch = 4\n"
                    "[map area]\npath = %s\n" % (self.port, MODEL, map_path))
        self.log = open(os.path.join(workdir, "geolocd-%d.log" % self.port), "a+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", self.conf], stderr=self.log)
        wait_listening(self.proc, self.port, self.log_text)

    def log_text(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@unittest.skipUnless(GEOLOC and GEOLOCD and os.path.exists(RASTER) and os.path.exists(MODEL),
                     "needs geoloc, geolocd and the shipped model and imagery")
class TestThroughGeolocd(MavlinkCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="geoloc-autopilot-")
        cls.map = os.path.join(cls.dir, "small.map")
        subprocess.run([GEOLOC, "map", "build", "--model", MODEL, "--ortho", RASTER, "--tile-m",
                        "320", "--stride-m", "160", "--bbox", BBOX, "--dense-layer", "0",
                        "--out", cls.map], check=True, capture_output=True)
        cls.frames = []
        for i in range(6):
            path = os.path.join(cls.dir, "frame%02d.png" % i)
            with open(path, "wb") as f:
                f.write(png(64, 64, i))
            cls.frames.append(path)
        cls.daemon = Daemon(cls.dir, cls.map)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def query(self, *args, binary=False):
        r = subprocess.run([GEOLOC, "query", "--connect", "127.0.0.1:%d" % self.daemon.port,
                            "--window", "1", *args, *self.frames], capture_output=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r.stdout if binary else r.stdout.decode()

    def best_candidates(self):
        rows = [line.split(",") for line in self.query("--format", "csv").splitlines()[1:]]
        return {row[0]: row for row in rows if row[1] == "1"}

    def check_against_csv(self, packets, sysid, compid, gps_id):
        best = self.best_candidates()
        self.assertEqual(len(packets), len(self.frames))
        for p, path in zip(packets, self.frames):
            self.assertEqual(p["name"], "GPS_INPUT")
            self.assertTrue(p["reencoded_equal"])
            self.assertEqual((p["sysid"], p["compid"]), (sysid, compid))
            got, row = p["fields"], best[path]
            self.assertEqual(got["gps_id"], gps_id)
            self.assertEqual(got["lat"], round(float(row[2]) * 1e7))
            self.assertEqual(got["lon"], round(float(row[3]) * 1e7))
            self.assertAlmostEqual(got["horiz_accuracy"], float(row[6]), delta=0.006)
            self.assertEqual(got["fix_type"], FIX_3D if float(row[5]) >= 0.5 else FIX_2D)
            self.assertEqual(got["ignore_flags"] & (ALT | VEL_HORIZ | HORIZ_ACC), ALT | VEL_HORIZ)
            now = time.time() * 1e6
            self.assertLess(abs(int(got["time_usec"]) - now), 600e6)  # sent just now
            week, week_ms = gps_week(int(got["time_usec"]))
            self.assertEqual((got["time_week"], got["time_week_ms"]), (week, week_ms))

    def test_query_format_mavlink(self):
        data = self.query("--format", "mavlink", "--mavlink-sysid", "9", "--mavlink-compid",
                          "190", "--gps-id", "1", binary=True)
        packets, summary = decode(data)
        self.assertEqual(summary["crc_errors"], 0)
        self.assertEqual([p["seq"] for p in packets], list(range(len(self.frames))))
        self.check_against_csv(packets, 9, 190, 1)

    def test_query_mavlink_udp(self):
        """--mavlink sends while the table still prints."""
        dec = UdpDecoder(len(self.frames))
        table = self.query("--mavlink", "udp:127.0.0.1:%d" % dec.port)
        self.assertIn("lat", table.splitlines()[0])
        packets, summary = dec.result()
        self.assertEqual(summary["crc_errors"], 0)
        # A HEARTBEAT first and one a second, all in one sequence.
        self.assertEqual(packets[0]["name"], "HEARTBEAT")
        self.assertEqual([p["seq"] for p in packets], list(range(len(packets))))
        self.check_against_csv([p for p in packets if p["name"] == "GPS_INPUT"], 1, 191, 0)

    def run_bridge(self, kill):
        """Streams 12 frames through the bridge on stdin; geolocd goes away
        after the first 6 (stopped once they are answered, or frozen with
        them in flight and killed) and comes back on the same port. Returns
        the forwarded GPS_INPUT packets and the bridge's stderr."""
        n = 12
        frames = [self.frames[i % len(self.frames)] for i in range(n)]
        times = [T0 + i * 500000 for i in range(n)]
        port = free_port()
        daemon = Daemon(self.dir, self.map, port)
        dec = UdpDecoder(n, timeout_ms=90000)
        bridge = subprocess.Popen(
            [GEOLOC, "bridge", "--connect", "127.0.0.1:%d" % port, "--stdin-frames",
             "--mavlink", "udp:127.0.0.1:%d" % dec.port, "--no-heartbeat", "--retry", "0.2"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            err = bridge.stderr.readline()
            self.assertIn("connected to", err)
            if kill:
                daemon.proc.send_signal(signal.SIGSTOP)
            for path, t in list(zip(frames, times))[:n // 2]:
                bridge.stdin.write("%s,%d\n" % (path, t))
            bridge.stdin.flush()
            time.sleep(1 if kill else 3)
            if kill:
                daemon.proc.kill()
            daemon.stop()
            # Frames given while geolocd is away wait for it.
            for path, t in list(zip(frames, times))[n // 2:]:
                bridge.stdin.write("%s,%d\n" % (path, t))
            bridge.stdin.flush()
            time.sleep(1)
            daemon = Daemon(self.dir, self.map, port)
            packets, summary = dec.result()
            bridge.stdin.close()
            self.assertEqual(bridge.wait(timeout=60), 0)
            err += bridge.stderr.read()
        finally:
            if bridge.poll() is None:
                bridge.kill()
            daemon.stop()
        self.assertEqual(summary["crc_errors"], 0)
        # Each frame answered once, in order, whatever was in flight.
        self.assertEqual([int(p["fields"]["time_usec"]) for p in packets], times, err)
        self.assertEqual([p["seq"] for p in packets], list(range(n)))
        self.assertIn("trying again", err)
        return packets, err

    def test_bridge_survives_daemon_restart(self):
        self.run_bridge(kill=False)

    def test_bridge_resends_frames_in_flight(self):
        _, err = self.run_bridge(kill=True)
        self.assertIn("4 frame(s) in flight go again", err)  # --window 4


    def test_bridge_camera_directory(self):
        """--camera: the files there at start are left (no --backlog); those
        renamed in later go in name order; SIGTERM ends the bridge with 0."""
        cam = tempfile.mkdtemp(dir=self.dir)
        shutil.copy(self.frames[0], os.path.join(cam, "0-old.png"))
        dec = UdpDecoder(3)
        bridge = subprocess.Popen(
            [GEOLOC, "bridge", "--connect", "127.0.0.1:%d" % self.daemon.port, "--camera", cam,
             "--format", "csv", "--mavlink", "udp:127.0.0.1:%d" % dec.port, "--poll", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertIn("connected to", bridge.stderr.readline())
            for i, name in enumerate(["1-b.png", "1-a.png", "1-c.png"]):
                tmp = os.path.join(cam, ".%s.tmp" % name)  # a dot-file is never taken
                shutil.copy(self.frames[i + 1], tmp)
                os.rename(tmp, os.path.join(cam, name))
                time.sleep(0.01)
            packets, summary = dec.result()
            bridge.send_signal(signal.SIGTERM)
            out, err = bridge.communicate(timeout=30)
        finally:
            if bridge.poll() is None:
                bridge.kill()
        self.assertEqual(bridge.returncode, 0, err)
        rows = [line.split(",") for line in out.splitlines()[1:]]
        taken = [os.path.basename(r[0]) for r in rows if r[1] == "1"]
        # Renamed in quickly, the three are usually seen by one scan (name
        # order); a scan between renames may take b before a.
        self.assertEqual(sorted(taken), ["1-a.png", "1-b.png", "1-c.png"], out)
        self.assertEqual(len([p for p in packets if p["name"] == "GPS_INPUT"]), 3)
        self.assertEqual(summary["crc_errors"], 0)


# --- NMEA through gpsd --------------------------------------------------------


class TestNmea(unittest.TestCase):
    def test_gpsd_reads_our_fixes(self):
        data = subprocess.run([EMIT, "nmea"], input=fixes_text(FIXES), capture_output=True,
                              check=True).stdout
        # What geoloc writes: untracked candidates, and tracks while LOCKED.
        written = [f for f in FIXES if not math.isnan(f[1]) and f[6] in (0, LOCKED)]
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "geoloc.nmea")
            with open(log, "wb") as f:
                f.write(data)
            r = subprocess.run(["gpsfake", "-1", "-p", "-q", "-c", "0.05", log],
                               capture_output=True, text=True, timeout=120)
        tpv = {}
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                m = json.loads(line)
                if m.get("class") == "TPV" and "time" in m and "lat" in m:
                    tpv[m["time"]] = m
        try:
            from gps import STATUS_DR  # Debian's python3-gps, beside gpsfake
        except ImportError:
            STATUS_DR = 5
        for fix in written:
            t = datetime.datetime.fromtimestamp(fix[0] / 1e6, datetime.timezone.utc)
            key = t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (fix[0] // 1000 % 1000)
            self.assertIn(key, tpv, "gpsd reported no fix at %s:\n%s" % (key, r.stdout))
            m = tpv[key]
            # NMEA carries 1e-4 minute (0.19 m); gpsd reads it back exactly.
            step = 1 / 600000
            self.assertAlmostEqual(m["lat"], round(fix[1] / step) * step, places=8)
            self.assertAlmostEqual(m["lon"], round(fix[2] / step) * step, places=8)
            self.assertEqual(m["status"], STATUS_DR, m)  # GGA quality 6: estimated
            self.assertEqual(m["mode"], 2, m)  # a 2D fix: no altitude
        self.assertEqual(len(tpv), len(written), sorted(tpv))


if __name__ == "__main__":
    if PART == "mavlink":
        if not shutil.which("node"):
            skip("node is not installed (apt-get install nodejs npm)")
        MODS = node_modules()
        if not MODS:
            skip("node-mavlink is not available (npm or the network is missing)")
        tests = [TestMavlink, TestThroughGeolocd]
    elif PART == "nmea":
        if not shutil.which("gpsfake"):
            skip("gpsfake is not installed (apt-get install gpsd gpsd-clients)")
        tests = [TestNmea]
    else:
        print(__doc__)
        sys.exit(2)
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(t) for t in tests)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)
