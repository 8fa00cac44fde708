"""The demo (tools/demo.sh, what `./run demo` runs) end to end with a short
flight: the shipped model, the naip-xtime reference map built from the
shipped 2018-2020 imagery, geolocd on loopback, the flight streamed as a
tracked stream by `geoloc eval --connect --flights`, the report picture,
and a clean daemon exit.

Needs $GEOLOC_BIN (the build's tools/geoloc; geolocd sits beside it in
daemon/)."""

import os
import re
import subprocess
import tempfile
import unittest

from _common import REPO

GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")
BUILD = os.path.dirname(os.path.dirname(os.path.abspath(GEOLOC)))
FRAMES = 12
# file, status, estimate lat/lon, truth lat/lon, error, true tile, rank,
# latency, then the track's status and error.
ROW = re.compile(r"^frames/(\d{6})\.jpg\s+OK\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+"
                 r"([\d.]+)\s+\d+\s+(\d+|-)\s+([\d.]+)\s+(ACQUIRING|LOCKED|LOST)\s+([\d.]+)$")
SUMMARY = re.compile(r"^eval: (\d+) frames, R@1 [\d.]+%, R@5 [\d.]+%, R@10 [\d.]+%, "
                     r"median ([\d.]+) m, p90 [\d.]+ m, success@100m ([\d.]+)%, ([\d.]+) frames/s$")
TRACK = re.compile(r"^track: (\d+) frames, locked ([\d.]+)%, locked success@100m ([\d.]+|n/a)%?, "
                   r"wrong locks ([\d.]+|n/a)%?, median ([\d.]+) m$")


class Demo(unittest.TestCase):
    def test_demo(self):
        with tempfile.TemporaryDirectory(prefix="geoloc-demo-") as out:
            p = subprocess.run([os.path.join(REPO, "tools", "demo.sh"), BUILD, out, str(FRAMES)],
                               capture_output=True, text=True, timeout=600)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            lines = p.stdout.splitlines()
            rows = [m for m in map(ROW.match, lines) if m]
            self.assertEqual(sorted(int(m.group(1)) for m in rows), list(range(FRAMES)),
                             p.stdout)
            summary = [m for m in map(SUMMARY.match, lines) if m]
            self.assertEqual(len(summary), 1, p.stdout)
            self.assertEqual(int(summary[0].group(1)), FRAMES)
            # The summaries agree with the rows: the medians of the errors.
            errs = sorted(float(m.group(6)) for m in rows)
            median = errs[(FRAMES + 1) // 2 - 1]
            self.assertAlmostEqual(float(summary[0].group(2)), median, delta=0.05)
            track = [m for m in map(TRACK.match, lines) if m]
            self.assertEqual(len(track), 1, p.stdout)
            self.assertEqual(int(track[0].group(1)), FRAMES)
            terrs = sorted(float(m.group(10)) for m in rows)
            self.assertAlmostEqual(float(track[0].group(5)), terrs[(FRAMES + 1) // 2 - 1],
                                   delta=0.05)
            locked = sum(m.group(9) == "LOCKED" for m in rows)
            self.assertAlmostEqual(float(track[0].group(2)), 100.0 * locked / FRAMES, delta=0.05)
            self.assertIn("per-frame   tracked", p.stdout)
            with open(os.path.join(out, "report.png"), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            with open(os.path.join(out, "geolocd.log")) as f:
                log = f.read()
            for want in ("map naip-east: 1148 tiles", "ready", "stopped"):
                self.assertIn(want, log)
            self.assertTrue(os.path.isfile(os.path.join(out, "demo.map", "manifest.json")))


if __name__ == "__main__":
    unittest.main()
