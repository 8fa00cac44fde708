"""geolocd's listeners under hostile peers and a careless operator.

- The metrics endpoint under a slowloris: connections that dribble a byte
  at a time are closed when their request has not arrived within the
  whole-request deadline, and /healthz and /readyz keep answering, also
  when more slow connections come than the endpoint holds at once.
- The unix socket: a second geolocd on the same path refuses to start and
  leaves the first one's socket alone; a stale socket file is replaced; a
  path that is not a socket is refused; the socket gets [listen] unix_mode
  (0660 by default) and unix_group.
- Log injection: client-supplied strings (Hello.map, Hello.client_name)
  reach the log escaped, so a newline cannot forge a log line.

No model is needed: geolocd without a [model] still serves Hello and Ping.

usage: test_hardening_listen.py BUILD_DIR SOURCE_DIR
"""
import grp
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, parse, varint, wait_listening  # noqa: E402
GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")

# daemon/metrics.c: GL_METRICS_REQUEST_DEADLINE_MS and GL_METRICS_MAX_CONNS.
DEADLINE_S = 5.0
MAX_CONNS = 32


def field(num, body):
    return bytes([num << 3 | 2]) + varint(len(body)) + body


class Conn:
    """A raw protocol connection over TCP or a unix socket."""

    def __init__(self, port=None, path=None):
        if path:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(10)
            self.s.connect(path)
        else:
            self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, num, body):
        msg = field(num, body)  # ClientMessage{oneof}
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

    def hello(self, client_name=None, map_name=None):
        body = b"\x08\x01"  # protocol_version 1
        if client_name is not None:
            body += field(2, client_name)
        if map_name is not None:
            body += field(4, map_name)
        self.send(1, body)
        return self.recv()

    def ping(self, nonce):
        self.send(3, b"\x08" + varint(nonce))
        m = self.recv()
        assert 4 in m, "expected a Pong, got %r" % m
        return parse(m[4])

    def close(self):
        self.s.close()


class Daemon:
    """geolocd without a model on a loopback port, with a metrics endpoint."""

    def __init__(self, tmp, listen_extra="", daemon_extra="", metrics=True, wait=True):
        self.port = free_port()
        self.mport = free_port() if metrics else None
        self.conf = os.path.join(tmp, "geolocd-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("[daemon]\n%s\n[listen]\ntcp = 127.0.0.1:%d\n%s\n"
                    % (daemon_extra, self.port, listen_extra))
            if metrics:
                f.write("[metrics]\nlisten = 127.0.0.1:%d\n" % self.mport)
        self.log = open(os.path.join(tmp, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", self.conf], stderr=self.log)
        if wait:
            self.wait_listening()

    def wait_listening(self):
        # The "ready" line comes after /readyz turns 200 (gl_server_run).
        wait_listening(self.proc, self.port, self.log_text, timeout=30)

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def http(self, path, timeout):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.mport, path),
                                    timeout=timeout) as r:
            return r.status, r.read().decode()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            self.log.close()
        return rc


class Dribblers:
    """n connections to the metrics port that send an endless request one
    byte every `every` seconds, on a thread; records when each was closed by
    the server (EOF or reset), relative to when it was opened."""

    REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096

    def __init__(self, port, n, every=1.0):
        self.socks, self.opened, self.closed = [], [], {}
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            self.socks.append(s)
            self.opened.append(time.monotonic())
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def gone(self, i):
        if i not in self.closed:
            self.closed[i] = time.monotonic() - self.opened[i]

    def run(self):
        pos = 0
        next_send = time.monotonic()
        while not self.stop.is_set() and len(self.closed) < len(self.socks):
            now = time.monotonic()
            if now >= next_send:
                for i, s in enumerate(self.socks):
                    if i in self.closed:
                        continue
                    try:
                        s.send(self.REQUEST[pos:pos + 1])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self.gone(i)
                pos = min(pos + 1, len(self.REQUEST) - 1)
                next_send = now + self.every
            live = [s for i, s in enumerate(self.socks) if i not in self.closed]
            readable, _, _ = select.select(live, [], [], 0.1)
            for s in readable:
                i = self.socks.index(s)
                try:
                    while True:
                        data = s.recv(65536)
                        if not data:
                            self.gone(i)
                            break
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.gone(i)

    def finish(self, timeout):
        self.thread.join(timeout)
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def temp_dir(test, prefix="geoloc-listen-", **kw):
    d = tempfile.mkdtemp(prefix=prefix, **kw)
    test.addCleanup(shutil.rmtree, d, ignore_errors=True)
    return d


class StopDelay(unittest.TestCase):
    """stop_delay_ms: SIGTERM makes /readyz fail at once while the daemon
    still accepts and answers, and drains only once the delay is over."""

    def test_not_ready_then_drain(self):
        tmp = temp_dir(self)
        d = Daemon(tmp, daemon_extra="stop_delay_ms = 1500")
        self.addCleanup(d.stop)
        self.assertEqual(d.http("/readyz", timeout=5)[0], 200)
        c = Conn(d.port)
        c.hello()
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        deadline = t0 + 1
        status = 200
        while status == 200 and time.monotonic() < deadline:
            try:
                status = d.http("/readyz", timeout=2)[0]
            except urllib.error.HTTPError as e:
                status = e.code
        self.assertEqual(status, 503, "/readyz still ready after SIGTERM")
        late = Conn(d.port)  # still listening: a proxy's late connection is served
        late.hello()
        self.assertEqual(late.ping(5).get(1), 5)
        self.assertEqual(c.ping(6).get(1), 6)
        self.assertIsNone(d.proc.poll())
        self.assertEqual(d.proc.wait(timeout=30), 0, d.log_text())
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)
        self.assertIn("not ready; draining in 1500 ms", d.log_text())
        late.close()
        c.close()


class MetricsSlowloris(unittest.TestCase):
    def setUp(self):
        self.tmp = temp_dir(self)
        self.d = Daemon(self.tmp)

    def tearDown(self):
        self.assertEqual(self.d.stop(), 0, self.d.log_text())

    def probe(self, what):
        t0 = time.monotonic()
        for path, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
            try:
                status, text = self.d.http(path, timeout=2)
            except OSError as e:
                self.fail("%s: %s unanswered: %s" % (what, path, e))
            self.assertEqual((status, text), (200, body), "%s: %s" % (what, path))
        self.assertLess(time.monotonic() - t0, 4, what)

    def test_slow_connections_end_at_the_deadline_and_probes_answer(self):
        slow = Dribblers(self.d.mport, 16)
        try:
            time.sleep(0.5)
            self.probe("16 slow connections")
            time.sleep(2)  # bytes keep trickling in: no per-byte timeout reset saves them
            self.probe("16 slow connections, 2.5 s in")
            slow.finish(timeout=DEADLINE_S + 4)
        finally:
            slow.stop.set()
        self.assertEqual(len(slow.closed), 16,
                         "slow connections still open %.1f s after they were opened" %
                         (DEADLINE_S + 4))
        self.assertLessEqual(max(slow.closed.values()), DEADLINE_S + 3, slow.closed)
        self.probe("after the slow connections")

    def test_more_slow_connections_than_the_limit(self):
        # Beyond GL_METRICS_MAX_CONNS a new connection evicts the oldest
        # connection still waiting for its request; the hard limit behind it
        # (twice as many) would otherwise refuse the probe.
        slow = Dribblers(self.d.mport, 3 * MAX_CONNS)
        try:
            time.sleep(0.5)
            self.probe("%d slow connections" % (3 * MAX_CONNS))
            slow.finish(timeout=DEADLINE_S + 4)
        finally:
            slow.stop.set()
        self.assertEqual(len(slow.closed), 3 * MAX_CONNS)
        self.probe("after the slow connections")


class UnixSocket(unittest.TestCase):
    def setUp(self):
        # A short directory name: a unix socket path has at most 107 bytes.
        self.tmp = temp_dir(self, prefix="glh-", dir="/tmp")
        self.path = os.path.join(self.tmp, "g.sock")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.stop(signal.SIGKILL)

    def start(self, extra="", wait=True):
        d = Daemon(self.tmp, listen_extra="unix = %s\n%s" % (self.path, extra), metrics=False,
                   wait=wait)
        self.daemons.append(d)
        return d

    def ping_unix(self, nonce):
        c = Conn(path=self.path)
        try:
            self.assertIn(1, c.hello(b"unix test"))  # Welcome
            self.assertEqual(c.ping(nonce).get(1), nonce)
        finally:
            c.close()

    def refused(self, d, *needles):
        try:
            rc = d.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.fail("the second geolocd started:\n" + d.log_text())
        log = d.log_text()
        self.assertNotEqual(rc, 0, log)
        for n in needles:
            self.assertIn(n, log)
        self.daemons.remove(d)
        d.log.close()

    def test_second_instance_refuses_a_live_socket(self):
        first = self.start()
        st = os.lstat(self.path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.ping_unix(1)
        second = self.start(wait=False)
        self.refused(second, self.path, "in use")
        # The first one's socket file is untouched and still answers.
        self.assertEqual(os.lstat(self.path).st_ino, st.st_ino)
        self.ping_unix(2)
        self.assertEqual(first.stop(), 0, first.log_text())
        self.daemons.remove(first)
        self.assertFalse(os.path.exists(self.path), "the socket file outlived geolocd")

    def test_stale_socket_is_replaced_with_the_configured_mode(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)  # bound, never listening, closed: what a crash leaves
        s.close()
        group = grp.getgrgid(os.getgid()).gr_name
        d = self.start("unix_mode = 0640\nunix_group = %s\n" % group)
        st = os.lstat(self.path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual(st.st_gid, os.getgid())
        self.ping_unix(3)
        self.assertIn("stale", d.log_text())
        self.assertEqual(d.stop(), 0, d.log_text())
        self.daemons.remove(d)

    def test_a_path_that_is_not_a_socket_is_refused(self):
        with open(self.path, "w") as f:
            f.write("not a socket\n")
        d = self.start(wait=False)
        self.refused(d, self.path, "not a socket")
        with open(self.path) as f:
            self.assertEqual(f.read(), "not a socket\n")

    def test_mode_and_group_are_checked(self):
        cases = [("unix_mode = 999", "unix_mode"), ("unix_mode = 01777", "unix_mode"),
                 ("unix_mode = rw", "unix_mode"),
                 ("unix_group = no-such-group-geoloc", "no-such-group-geoloc")]
        for line, needle in cases:
            conf = os.path.join(self.tmp, "bad.conf")
            with open(conf, "w") as f:
                f.write("[listen]\nunix = %s\n%s\n" % (self.path, line))
            r = subprocess.run([GEOLOCD, "--config", conf, "--check-config"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 1, line + ": " + r.stdout + r.stderr)
            self.assertIn(needle, r.stderr, line)
        with open(conf, "w") as f:
            f.write("[listen]\nunix = %s\nunix_mode = 600\n" % self.path)
        r = subprocess.run([GEOLOCD, "--config", conf, "--check-config"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)


class LogInjection(unittest.TestCase):
    def test_client_strings_are_escaped_in_the_log(self):
        d = Daemon(temp_dir(self), daemon_extra="log_level = debug", metrics=False)
        try:
            # No map is loaded: naming one is a fatal Error that quotes it.
            c = Conn(d.port)
            m = c.hello(b"evil\nFORGED client", b"x\nFORGED line")
            c.close()
            self.assertIn(3, m, m)
            err = parse(m[3])
            self.assertEqual(err.get(1), 6)  # UNAVAILABLE
            self.assertNotIn(b"\n", err[2])
            self.assertIn(b"x\\nFORGED line", err[2])
            self.assertLess(len(err[2]), 512)
            # A Hello without a map is welcomed, and its client_name logged.
            c = Conn(d.port)
            m = c.hello(b"cam\r\nFORGED name\t\x1b[31m\xff" + b"z" * 300)
            self.assertIn(1, m, m)
            self.assertEqual(c.ping(7).get(1), 7)
            c.close()
            time.sleep(0.2)
        finally:
            self.assertEqual(d.stop(), 0, d.log_text())
        log = d.log_text()
        forged = [l for l in log.splitlines() if l.startswith("FORGED")]
        self.assertEqual(forged, [], log)
        self.assertIn("x\\nFORGED line", log)
        self.assertIn("cam\\r\\nFORGED name\\t\\x1b[31m\\xffzzz", log)
        self.assertNotIn("z" * 200, log, "a client string is not bounded in the log")


if __name__ == "__main__":
    unittest.main(verbosity=2)
