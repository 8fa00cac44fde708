"""Client tokens in geolocd ([token NAME] sections): a Hello without a
configured token is refused with a fatal UNAUTHENTICATED and the connection
closes; a token with a maps allow-list is refused for other maps and told of
its own maps only; the hashes come from `geoloc token hash` (the round trip);
`geoloc ping` sends a token from --token or $GEOLOC_TOKEN; a SIGHUP adds a
token for new connections. The log never holds a token.

usage: test_hardening_auth.py BUILD_DIR SOURCE_DIR
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")
GEOLOC = os.path.join(BUILD, "tools", "geoloc")
RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
MODEL = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ERROR, PONG, WELCOME, Conn, Geolocd, build_map, client_msg,  # noqa: E402
                    fields, first, ld, ping_msg, varint)

UNAUTHENTICATED = 9


def hello(token=None, map_name=None):
    body = varint(1 << 3) + varint(1)
    if token is not None:
        body += ld(3, token.encode())
    if map_name is not None:
        body += ld(4, map_name.encode())
    return client_msg(1, body)


def token_hash(token=None):
    """(token, config line) from geoloc token hash: stdin, or --new."""
    args = [GEOLOC, "token", "hash"] + ([] if token else ["--new"])
    r = subprocess.run(args, input=(token + "\n") if token else "", capture_output=True,
                       text=True, check=True)
    lines = r.stdout.splitlines()
    return (token or lines[0]), lines[-1]


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="geoloc-auth-")
        cls.map = os.path.join(cls.dir, "small.map")
        build_map(GEOLOC, MODEL, RASTER, cls.map, "--tile-m", "320", "--stride-m", "160")
        cls.ci, ci_line = token_hash()  # a made token
        cls.ops, ops_line = token_hash("ops token, typed by hand")
        cls.base = ("[token ci]\n%s\n[token ops]\n%s\nmaps = area\n" % (ci_line, ops_line))
        cls.d = Geolocd(GEOLOCD, cls.dir, MODEL, cls.map, cls.base)

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        log = cls.d.log_text()
        shutil.rmtree(cls.dir, ignore_errors=True)
        assert rc == 0, log

    def refused(self, msg):
        """Sends msg (a Hello); expects a fatal UNAUTHENTICATED, then EOF."""
        c = Conn(self.d.port, timeout=30)
        try:
            c.send(msg)
            m = c.recv()
            self.assertIsNotNone(m)
            self.assertIn(ERROR, m)
            e = fields(m[ERROR][0])
            self.assertEqual(first(e, 1), UNAUTHENTICATED)
            self.assertEqual(first(e, 4), 1)  # fatal
            self.assertIsNone(c.recv())  # and closed
            return first(e, 2, b"").decode()
        finally:
            c.close()

    def welcome(self, msg):
        c = Conn(self.d.port, timeout=30)
        c.send(msg)
        return c, c.expect(WELCOME)

    def test_no_token(self):
        self.assertIn("needs a token", self.refused(hello()))
        self.assertIn("needs a token", self.refused(hello(token="")))

    def test_wrong_token(self):
        self.refused(hello(token=self.ci + "x"))
        self.refused(hello(token=self.ci[:-1]))
        self.refused(hello(token="ops"))  # a token's name is not the token
        log = self.d.log_text()
        self.assertIn("UNAUTHENTICATED", log)
        self.assertNotIn(self.ci, log)
        self.assertNotIn(self.ops, log)

    def test_right_token(self):
        c, w = self.welcome(hello(token=self.ci))
        try:
            self.assertEqual(first(w, 3), b"area")
            c.send(ping_msg(7))
            self.assertEqual(first(c.expect(PONG), 1), 7)
        finally:
            c.close()
        c, _ = self.welcome(hello(token=self.ops, map_name="area"))
        c.close()

    def test_cli_token(self):
        addr = "127.0.0.1:%d" % self.d.port
        env = dict(os.environ)
        env.pop("GEOLOC_TOKEN", None)
        ping = [GEOLOC, "ping", "--connect", addr, "--count", "1"]
        r = subprocess.run(ping, capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        r = subprocess.run(ping + ["--token", self.ci], capture_output=True, text=True, env=env,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        env["GEOLOC_TOKEN"] = self.ops
        r = subprocess.run(ping, capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_reload_adds_token_and_map_allow_list(self):
        new, new_line = token_hash()
        self.refused(hello(token=new))
        # A second map, a token for it alone; ops stays on area.
        extra = self.base + "[token new]\n%s\nmaps = other\n[map other]\npath = %s\n" % (
            new_line, self.map)
        n = self.d.log_text().count("configuration reloaded")
        self.d.write_conf(MODEL, self.map, extra)
        self.d.proc.send_signal(signal.SIGHUP)
        self.d.wait_log("configuration reloaded", n + 1, timeout=120)
        c, w = self.welcome(hello(token=new, map_name="other"))
        c.close()
        self.assertEqual(w[4], [b"other"])  # told of its own maps only
        self.assertIn("may not use map 'area'", self.refused(hello(token=new, map_name="area")))
        self.refused(hello(token=self.ops, map_name="other"))
        c, w = self.welcome(hello(token=self.ci, map_name="other"))
        c.close()
        self.assertEqual(sorted(w[4]), [b"area", b"other"])
        # Back to one map, so that the other tests' default map holds.
        self.d.write_conf(MODEL, self.map, self.base)
        self.d.proc.send_signal(signal.SIGHUP)
        self.d.wait_log("configuration reloaded", n + 2, timeout=120)
        self.refused(hello(token=new, map_name="other"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
