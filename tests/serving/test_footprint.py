"""The camera footprint through geolocd: Frame.altitude_m, hfov_deg and
tilt_deg over loopback TCP.

The shipped model and a map of 100 m tiles built from the NAIP raster;
drone views rendered at known positions and headings that see 160 m of
ground (a 60-degree camera 138.6 m up, straight down or tilted). With their
camera the daemon crops them to one tile and they are found; a partial
camera, one out of range, or a footprint the model cannot serve (too little
ground, too few pixels) is answered Error{BAD_REQUEST}, not fatal, and the
connection goes on; `geoloc query` sends the camera from its options and
from a photo's metadata, turning the photo upright (a JPEG losslessly).

usage: test_footprint.py BUILD_DIR SOURCE_DIR   (exit 77 without GDAL/Pillow)
"""
import csv
import io
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import unittest
import urllib.request

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, parse, varint, wait_listening  # noqa: E402
sys.path.insert(0, os.path.join(SRC, "python"))
try:
    import numpy as np
    from geoloc_train import views as V
    from PIL import Image
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(77)

GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")
GEOLOC = os.path.join(BUILD, "tools", "geoloc")
RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
MODEL = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")
TILE_M, SCALE, HFOV = 100.0, 1.6, 60.0
ALT = SCALE * TILE_M / 2 / math.tan(math.radians(HFOV / 2))  # 138.6 m: 160 m seen
# Views at points of the raster (EPSG:26914): x, y, heading, tilt.
VIEWS = ((488197.0, 5207365.0, 37.0, 0.0), (488230.0, 5207330.0, 200.0, 0.0),
         (488260.0, 5207420.0, 120.0, 20.0), (488150.0, 5207420.0, 300.0, 10.0))
BAD_REQUEST = 12


def metres(lat1, lon1, lat2, lon2):
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def frame_msg(frame_id, image, heading=None, altitude=None, hfov=None, tilt=None):
    """ClientMessage{frame{frame_id, image, format JPEG, heading_deg,
    altitude_m (12), hfov_deg (13), tilt_deg (14)}}."""
    body = b"\x08" + varint(frame_id) + b"\x1a" + varint(len(image)) + image + b"\x20\x01"
    for number, v in ((8, heading), (12, altitude), (13, hfov), (14, tilt)):
        if v is not None:
            body += varint(number << 3 | 1) + struct.pack("<d", v)
    msg = b"\x12" + varint(len(body)) + body
    return len(msg).to_bytes(4, "big") + msg


class Fixture:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="geoloc-footprint-")
        r = V.Raster.open(RASTER)
        xs = [v[0] for v in VIEWS]
        ys = [v[1] for v in VIEWS]
        lon, lat = r.to_lonlat(np.array([min(xs) - 300, max(xs) + 300]),
                               np.array([min(ys) - 300, max(ys) + 300]))
        self.map = os.path.join(self.dir, "small.map")
        subprocess.run([GEOLOC, "map", "build", "--model", MODEL, "--ortho", RASTER, "--tile-m",
                        str(TILE_M), "--stride-m", "25", "--bbox",
                        "%.7f,%.7f,%.7f,%.7f" % (lon[0], lat[0], lon[1], lat[1]), "--out",
                        self.map], check=True, capture_output=True)
        self.views = []
        for i, (x, y, h, t) in enumerate(VIEWS):
            p = V.ViewParams(x, y, h, SCALE, t, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)
            img, ok = V.render_view(r, p, 480, tile_m=TILE_M, photometric=False)
            assert ok
            path = os.path.join(self.dir, "view_%d.jpg" % i)
            Image.fromarray(img).save(path, quality=92)
            vlon, vlat = r.to_lonlat(x, y)
            # The camera distance along the centre ray is fixed: tilted, it
            # is lower.
            self.views.append((path, float(vlat), float(vlon), h,
                               ALT * math.cos(math.radians(t)), t))


FIX = None


class Daemon:
    def __init__(self):
        self.port, self.mport = free_port(), free_port()
        self.conf = os.path.join(FIX.dir, "geolocd-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\nmax_batch = 8\n"
                    "[map area]\npath = %s\n[metrics]\nlisten = 127.0.0.1:%d\n"
                    % (self.port, MODEL, FIX.map, self.mport))
        self.log = open(os.path.join(FIX.dir, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", self.conf], stderr=self.log)
        wait_listening(self.proc, self.port, self.log_text)

    def log_text(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def query(self, frames, *args):
        r = subprocess.run([GEOLOC, "query", "--connect", "127.0.0.1:%d" % self.port, "--format",
                            "csv", "--top-k", "1", *args, *frames], capture_output=True,
                           text=True, timeout=120)
        return r.returncode, list(csv.DictReader(io.StringIO(r.stdout))), r.stderr

    def metric(self, name):
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError("no metric " + name)

    def stop(self):
        self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


class FootprintServing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        assert cls.d.stop() == 0, cls.d.log_text()

    def check(self, row, lat, lon, heading):
        self.assertEqual(row["status"], "OK", row)
        self.assertLess(metres(lat, lon, float(row["lat"]), float(row["lon"])), 25.0, row)
        self.assertLess(abs((float(row["heading_deg"]) - heading + 180) % 360 - 180), 10.0, row)

    def test_views_with_their_camera_are_found(self):
        for path, lat, lon, h, alt, tilt in FIX.views:
            rc, rows, err = self.d.query([path], "--altitude", "%.3f" % alt, "--hfov", str(HFOV),
                                         "--tilt", str(tilt), "--heading", str(h))
            self.assertEqual(rc, 0, err)
            self.check(rows[0], lat, lon, h)
            rc, rows, err = self.d.query([path], "--altitude", "%.3f" % alt, "--hfov", str(HFOV),
                                         "--tilt", str(tilt))
            self.assertEqual(rc, 0, err)
            self.check(rows[0], lat, lon, h)

    def test_the_crop_is_what_locate_sees(self):
        """geolocd and `geoloc locate` crop alike: the same estimate."""
        path, lat, lon, h, alt, tilt = FIX.views[2]
        cam = ["--altitude", "%.3f" % alt, "--hfov", str(HFOV), "--tilt", str(tilt)]
        rc, rows, err = self.d.query([path], *cam)
        self.assertEqual(rc, 0, err)
        r = subprocess.run([GEOLOC, "locate", "--model", MODEL, "--map", FIX.map, "--format",
                            "csv", "--top-k", "1", *cam, path], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        local = next(csv.DictReader(io.StringIO(r.stdout)))
        self.assertAlmostEqual(float(local["lat"]), float(rows[0]["lat"]), places=6)
        self.assertAlmostEqual(float(local["lon"]), float(rows[0]["lon"]), places=6)
        self.assertEqual(local["heading_deg"], rows[0]["heading_deg"])

    def test_refused_footprints_and_the_stream_goes_on(self):
        """Partial, out of range, NaN, and footprints out of the model's
        range: Error{BAD_REQUEST} for that frame (not fatal), with the
        reason; valid frames around them are answered."""
        path, lat, lon, h, alt, tilt = FIX.views[0]
        with open(path, "rb") as f:
            jpg = f.read()
        frames = [
            dict(altitude=alt, hfov=HFOV, tilt=0.0),       # 1 ok
            dict(altitude=alt),                            # 2 partial
            dict(altitude=alt, hfov=HFOV),                 # 3 partial
            dict(altitude=alt, hfov=0.5, tilt=0.0),        # 4 hfov out of range
            dict(altitude=alt, hfov=HFOV, tilt=float("nan")),  # 5 NaN
            dict(altitude=-1.0, hfov=HFOV, tilt=0.0),      # 6 below the ground
            dict(altitude=20.0, hfov=HFOV, tilt=0.0),      # 7 sees 23 m of a 100 m tile
            dict(altitude=4000.0, hfov=HFOV, tilt=0.0),    # 8 a tile is 10 pixels
            dict(altitude=alt, hfov=HFOV, tilt=0.0, heading=h),  # 9 ok
            dict(),                                        # 10 no camera: as before
        ]
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=120)
        hello = bytes([0x0a, 0x02, 0x08, 0x01])  # ClientMessage{hello{protocol_version 1}}
        s.sendall(len(hello).to_bytes(4, "big") + hello)
        for i, kw in enumerate(frames):
            s.sendall(frame_msg(i + 1, jpg, **kw))
        answers, buf = {}, b""
        while len(answers) < len(frames):
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                chunk = s.recv(65536)
                self.assertTrue(chunk, "connection closed")
                buf += chunk
            n = int.from_bytes(buf[:4], "big")
            m, buf = parse(buf[4:4 + n]), buf[4 + n:]
            if 3 in m:  # Error{code 1, message 2, frame_id 3, fatal 4}
                e = parse(m[3])
                self.assertFalse(e.get(4, 0), e)
                answers[e[3]] = ("error", e[1], e[2].decode())
            elif 2 in m:  # Estimate{frame_id 1, status 2}
                e = parse(m[2])
                answers[e[1]] = ("estimate", e[2], "")
        # The connection is still usable: a Ping is answered.
        ping = b"\x1a\x02\x08\x07"  # ClientMessage{ping{nonce 7}}
        s.sendall(len(ping).to_bytes(4, "big") + ping)
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            buf += s.recv(65536)
        self.assertIn(4, parse(buf[4:4 + int.from_bytes(buf[:4], "big")]))  # Pong
        s.close()
        for i in (1, 9, 10):
            self.assertEqual(answers[i][:2], ("estimate", 1), answers[i])
        for i in range(2, 9):
            self.assertEqual(answers[i][:2], ("error", BAD_REQUEST), answers[i])
        self.assertIn("all three or none", answers[2][2])
        self.assertIn("hfov_deg and tilt_deg are missing", answers[2][2])
        self.assertIn("tilt_deg is missing", answers[3][2])
        self.assertIn("hfov_deg 0.5", answers[4][2])
        self.assertIn("tilt_deg nan", answers[5][2])
        self.assertIn("altitude_m -1", answers[6][2])
        self.assertIn("23 x 23 m of ground", answers[7][2])
        self.assertIn("the map's 100 m tiles", answers[7][2])
        self.assertIn("tiles of at most 28 m", answers[7][2])
        self.assertIn("span only 10 x 10 pixels", answers[8][2])
        self.assertIn("tiles of at least", answers[8][2])

    def test_query_sends_a_photos_camera_upright(self):
        """A DJI photo stored turned (Orientation 6) with its camera in XMP:
        `geoloc query` turns the JPEG upright losslessly and sends the
        camera and heading the photo gives."""
        exiv2 = shutil.which("exiv2")
        if exiv2 is None:
            self.skipTest("the exiv2 tool is missing")
        path, lat, lon, h, alt, tilt = FIX.views[0]
        stored = np.ascontiguousarray(np.rot90(np.asarray(Image.open(path)), 1))
        photo = os.path.join(FIX.dir, "dji6.jpg")
        Image.fromarray(stored).save(photo, quality=92)
        subprocess.run([exiv2, "-M", "reg drone-dji http://www.dji.com/drone-dji/1.0/",
                        "-M", "set Xmp.drone-dji.RelativeAltitude XmpText +%.2f" % alt,
                        "-M", "set Xmp.drone-dji.GimbalYawDegree XmpText %+.1f" % (h + 90),
                        "-M", "set Xmp.drone-dji.GimbalPitchDegree XmpText -90.0",
                        "-M", "set Exif.Photo.FocalLengthIn35mmFilm Short 31",
                        "-M", "set Exif.Image.Orientation Short 6", photo], check=True)
        rc, rows, err = self.d.query([photo], "--show-meta")
        self.assertEqual(rc, 0, err)
        self.assertIn("using orientation=6 heading_deg=%g" % h, err)
        self.check(rows[0], lat, lon, h)


if __name__ == "__main__":
    FIX = Fixture()
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(FIX.dir, ignore_errors=True)
