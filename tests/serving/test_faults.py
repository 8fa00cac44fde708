"""Faults of the files geolocd and the map builder depend on.

- Corrupted or truncated model and map files at startup: geolocd refuses
  to start and names the file.
- The same files at a SIGHUP reload: the reload fails with the reason in
  the log, and the model and map already loaded keep serving (/readyz
  stays 200, frames are answered).
- A map pack or model file deleted under the running daemon: it keeps
  serving from memory; a reload then fails and changes nothing.
- A disk that fills up during `geoloc map build` (a 128 KiB tmpfs the test
  mounts; skipped where it cannot mount): a clear error, a non-zero exit,
  and no pack nor temporary directory left behind.
(A build killed with SIGKILL never leaves a pack that opens:
tests/map/test_map_model.c.)

geolocd serves the shipped model on a small map (common.BBOX) with its
dense layer; frames are PNGs of noise (any image gets an answer).

usage: test_faults.py BUILD_DIR SOURCE_DIR
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
P = common.paths(BUILD, SRC)
DIR = MAP = None
FRAMES = []


def setUpModule():
    global DIR, MAP
    DIR = tempfile.mkdtemp(prefix="geoloc-faults-")
    MAP = os.path.join(DIR, "area.map")
    subprocess.run([P["geoloc"], "map", "build", "--model", P["model"], "--ortho", P["raster"],
                    "--bbox", common.BBOX, "--out", MAP],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in range(3):
        FRAMES.append(os.path.join(DIR, "f%d.png" % i))
        with open(FRAMES[-1], "wb") as f:
            f.write(common.png(96, 96, i))


def tearDownModule():
    shutil.rmtree(DIR, ignore_errors=True)


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def scribble(path):
    """Overwrites the first bytes (a header, a magic, a JSON brace)."""
    with open(path, "r+b") as f:
        f.write(b"\xff" * 16)


def corruptions():
    """(name, model path, map path, what the error names): a copy of the
    model or the map with one file damaged."""
    out = []
    for how in (truncate, scribble):
        model = os.path.join(DIR, "model-%s.safetensors" % how.__name__)
        shutil.copy(P["model"], model)
        how(model)
        out.append(("model " + how.__name__, model, MAP, os.path.basename(model)))
        for name in ("manifest.json", "index.faiss", "tiles.sqlite", "dense-0.i8"):
            pack = os.path.join(DIR, "%s-%s.map" % (name, how.__name__))
            if not os.path.exists(pack):
                shutil.copytree(MAP, pack)
                how(os.path.join(pack, name))
            out.append(("%s %s" % (name, how.__name__), P["model"], pack, name))
    return out


# What these tests check is not how fast frames are answered: on a loaded
# machine a frame may wait past the default stale_after_ms, and be answered
# DROPPED_STALE, which is not what they are about.
NO_STALE = "stale_after_ms = 0"


class Faults(unittest.TestCase):
    def answered(self, d):
        rc, rows, err = d.query(P["geoloc"], FRAMES)
        self.assertEqual(rc, 0, "%s\n%s" % (err, [r["status"] for r in rows]))
        best = [r for r in rows if r["rank"] in ("", "1")]  # a row per estimate
        self.assertEqual([r["status"] for r in best], ["OK"] * len(FRAMES))

    def test_startup_refuses_damaged_files(self):
        for what, model, pack, needle in corruptions():
            with self.subTest(what):
                conf = os.path.join(DIR, "bad.conf")
                with open(conf, "w") as f:
                    f.write("[listen]\ntcp = 127.0.0.1:%d\n[model]\npath = %s\n[map area]\n"
                            "path = %s\n" % (common.free_port(), model, pack))
                r = subprocess.run([P["geolocd"], "--config", conf], capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("cannot start", r.stderr)
                self.assertIn(needle, r.stderr)

    def test_reload_with_damaged_files_keeps_serving(self):
        d = common.Geolocd(P["geolocd"], DIR, P["model"], MAP, NO_STALE)
        try:
            self.answered(d)
            # [model] max_batch unset: the CPU's default batch (src/loc/load.h).
            self.assertIn("on cpu-onednn, batches up to 8", d.log_text())
            for n, (what, model, pack, needle) in enumerate(corruptions(), 1):
                with self.subTest(what):
                    d.write_conf(model, pack, NO_STALE)
                    d.proc.send_signal(signal.SIGHUP)
                    text = d.wait_log("reload failed", n)
                    self.assertIn(needle, text.split("reload failed")[n].split("\n")[0])
                    self.assertEqual(d.http_status("/readyz"), 200)
                    self.answered(d)
            # Back to good files: the reload takes.
            d.write_conf(P["model"], MAP, NO_STALE)
            d.proc.send_signal(signal.SIGHUP)
            d.wait_log("configuration reloaded with its model and maps")
            self.answered(d)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_files_deleted_under_the_daemon(self):
        pack = os.path.join(DIR, "doomed.map")
        model = os.path.join(DIR, "doomed.safetensors")
        shutil.copytree(MAP, pack)
        shutil.copy(P["model"], model)
        d = common.Geolocd(P["geolocd"], DIR, model, pack, NO_STALE)
        try:
            self.answered(d)
            shutil.rmtree(pack)
            os.unlink(model)
            self.answered(d)
            d.proc.send_signal(signal.SIGHUP)
            text = d.wait_log("reload failed")
            self.assertIn("doomed.safetensors", text.split("reload failed")[1])
            self.assertEqual(d.http_status("/readyz"), 200)
            self.answered(d)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())

    def test_disk_full_during_map_build(self):
        mnt = os.path.join(DIR, "small-disk")
        os.mkdir(mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + r.stderr.strip())
        try:
            out = os.path.join(mnt, "full.map")
            r = subprocess.run([P["geoloc"], "map", "build", "--model", P["model"], "--ortho",
                                P["raster"], "--bbox", common.BBOX, "--out", out],
                               capture_output=True, text=True, timeout=300)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("No space left on device", r.stderr)
            self.assertEqual(os.listdir(mnt), [], "a failed build leaves nothing behind")
        finally:
            subprocess.run(["umount", mnt], check=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
