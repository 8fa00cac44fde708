"""Connection hardening in geolocd: half-closed clients, connection floods,
StreamOptions and the range of Hello.protocol_version.

geolocd serves the shipped model on a small map (36 tiles of the NAIP
raster, no dense layer); frames are small PNGs of noise, which decode and
are answered with an Estimate like any other. The protocol is spoken raw:
messages are built and read field by field, so that the tests can send
what a well-behaved client library never would.

usage: test_hardening_conn.py BUILD_DIR SOURCE_DIR
"""
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
GEOLOCD = os.path.join(BUILD, "daemon", "geolocd")
GEOLOC = os.path.join(BUILD, "tools", "geoloc")
RASTER = os.path.join(SRC, "data", "naip", "m_4709963_se_14_1_20200831.tif")
MODEL = os.path.join(SRC, "data", "models", "geoloc-naip-mnv2-64.safetensors")
BBOX = "-99.1618,47.0155,-99.1487,47.0245"  # about 1 km a side inside the raster

# geoloc.v1 numbers the tests use.
WELCOME, ESTIMATE, ERROR, PONG = 1, 2, 3, 4  # ServerMessage oneof
VERSION, RESOURCE_EXHAUSTED = 2, 7  # Error.Code
BUSY = 3  # Estimate.Status
PNG_FORMAT = 2  # ImageFormat


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def read_varint(data, i):
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def fields(data):
    """number -> list of values of a protobuf message (varints as ints,
    everything else as bytes), in wire order."""
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        kind = key & 7
        if kind == 0:
            v, i = read_varint(data, i)
        elif kind == 2:
            n, i = read_varint(data, i)
            v, i = data[i:i + n], i + n
        elif kind in (1, 5):
            n = 8 if kind == 1 else 4
            v, i = data[i:i + n], i + n
        else:
            raise AssertionError("wire type %d" % kind)
        out.setdefault(key >> 3, []).append(v)
    return out


def first(f, number, default=None):
    return f[number][-1] if number in f else default


def ld(number, body):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(body)) + body


def vi(number, value):
    """A varint field."""
    return varint(number << 3) + varint(value)


def client_msg(field, body):
    """ClientMessage{oneof field = body} with its length prefix."""
    msg = ld(field, body)
    return len(msg).to_bytes(4, "big") + msg


def hello_msg(version=1, max_in_flight=None, default_top_k=None):
    options = b""
    if max_in_flight is not None:
        options += vi(1, max_in_flight)
    if default_top_k is not None:
        options += vi(2, default_top_k)
    body = varint(1 << 3) + varint(version)  # protocol_version: any varint
    if options:
        body += ld(5, options)
    return client_msg(1, body)


def frame_msg(fid, image, top_k=None):
    body = vi(1, fid) + ld(3, image) + vi(4, PNG_FORMAT)
    if top_k is not None:
        body += vi(9, top_k)
    return client_msg(2, body)


def ping_msg(nonce):
    return client_msg(3, vi(1, nonce))


def png(w, h, seed):
    """An RGB PNG of noise, written with zlib alone."""
    rnd = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rnd.getrandbits(8) for _ in range(w * 3)) for _ in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class Fixture:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="geoloc-hardening-")
        self.map = os.path.join(self.dir, "small.map")
        subprocess.run([GEOLOC, "map", "build", "--model", MODEL, "--ortho", RASTER, "--tile-m",
                        "320", "--stride-m", "160", "--bbox", BBOX, "--dense-layer", "0",
                        "--out", self.map], check=True, capture_output=True)
        self.images = [png(32, 32, seed) for seed in range(8)]
        # A self-signed server certificate for the TLS listener (clients
        # need none: require_client_cert = false), when geolocd has TLS.
        self.cert = self.key = None
        with open(os.path.join(BUILD, "gl_build_config.h")) as f:
            have_tls = "#define GL_HAVE_TLS 1" in f.read()
        if have_tls and shutil.which("openssl"):
            cert, key = os.path.join(self.dir, "server.crt"), os.path.join(self.dir, "server.key")
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                                "/CN=localhost", "-keyout", key, "-out", cert],
                               capture_output=True)
            if r.returncode == 0:
                os.chmod(key, 0o600)
                self.cert, self.key = cert, key


FIX = None


class Daemon:
    def __init__(self, extra="", tls=False, sections=""):
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.conf = os.path.join(FIX.dir, "geolocd-%d.conf" % self.port)
        text = "[daemon]\nstale_after_ms = 0\n%s\n[listen]\ntcp = 127.0.0.1:%d\n" % (extra,
                                                                                       self.port)
        if tls:
            text += ("tls = 127.0.0.1:%d\n[tls]\ncert = %s\nkey = %s\n"
                     "require_client_cert = false\n" % (self.tls_port, FIX.cert, FIX.key))
        text += "[model]\npath = %s\nmax_batch = 8\n[map area]\npath = %s\n%s" % (MODEL, FIX.map,
                                                                                sections)
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = open(os.path.join(FIX.dir, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([GEOLOCD, "--config", self.conf], stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("geolocd exited:\n" + self.log_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("geolocd did not listen:\n" + self.log_text())

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc


class Conn:
    """A raw protocol connection, plaintext or TLS."""

    def __init__(self, port, tls=False, source=None, timeout=60):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        if tls:
            ctx = ssl.create_default_context(cafile=FIX.cert)
            self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def shut_wr(self):
        """TCP half-close. On a TLS socket, too: socket.socket's own
        shutdown leaves the TLS state in place (SSLSocket.shutdown drops it),
        so the answers can still be read through TLS."""
        socket.socket.shutdown(self.s, socket.SHUT_WR)

    def recv(self):
        """The next ServerMessage as fields, or None at EOF between
        messages."""
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
            chunk = self.s.recv(65536)
            if not chunk:
                if self.buf:
                    raise AssertionError("EOF inside a message")
                self.eof = True
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:4], "big")
        m, self.buf = fields(self.buf[4:4 + n]), self.buf[4 + n:]
        return m

    def expect(self, kind):
        m = self.recv()
        if m is None or kind not in m:
            raise AssertionError("expected ServerMessage field %d, got %r" % (kind, m))
        return fields(m[kind][0])

    def hello(self, **kw):
        self.send(hello_msg(**kw))
        return self.expect(WELCOME)

    def readable(self, timeout):
        if self.buf or (hasattr(self.s, "pending") and self.s.pending()):
            return True
        return bool(select.select([self.s], [], [], timeout)[0])

    def close(self):
        self.s.close()


class Case(unittest.TestCase):
    def conn(self, port=None, **kw):
        """A Conn to self.d (or port), closed when the test ends."""
        c = Conn(port or self.d.port, **kw)
        self.addCleanup(c.close)
        return c


class HalfClose(Case):
    """A client that half-closes (shutdown(SHUT_WR)) after pipelining gets
    every answer, then EOF: every accepted frame is answered exactly once."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(tls=FIX.cert is not None)

    @classmethod
    def tearDownClass(cls):
        assert cls.d.stop() == 0, cls.d.log_text()

    def half_close(self, tls, tail=b""):
        c = self.conn(self.d.tls_port if tls else self.d.port, tls=tls)
        c.hello()
        c.send(b"".join(frame_msg(100 + i, FIX.images[i]) for i in range(8)) + ping_msg(7) +
               tail)
        c.shut_wr()
        got, pongs = [], 0
        while True:
            m = c.recv()
            if m is None:
                break
            if PONG in m:
                pongs += 1
                continue
            self.assertIn(ESTIMATE, m, "expected Estimates and one Pong, got %r" % m)
            got.append(first(fields(m[ESTIMATE][0]), 1))
        c.close()
        self.assertEqual(pongs, 1)
        self.assertEqual(sorted(got), list(range(100, 108)), self.d.log_text())

    def test_plaintext(self):
        """Hello, 8 frames and a Ping, then SHUT_WR: a Pong and 8 Estimates,
        then EOF."""
        self.half_close(tls=False)

    def test_plaintext_partial_message(self):
        """The same with half a message before the EOF: the half message is
        dropped, the whole ones are answered."""
        part = frame_msg(999, FIX.images[0])
        self.half_close(tls=False, tail=part[:len(part) // 2])

    def test_tls(self):
        """The same over TLS, the client closing its TCP side (no
        close_notify): the answers come through TLS, then close_notify and
        EOF."""
        if FIX.cert is None:
            self.skipTest("geolocd without TLS, or no openssl to make a certificate")
        self.half_close(tls=True)

    def test_tls_close_notify(self):
        """Over TLS 1.3, the client ending its side with close_notify (which
        closes only the sender's direction): the 8 answers still come, then
        the server's close_notify and EOF. OpenSSL drops what arrives after
        its own close_notify, so the client counts the TLS records instead of
        reading them: one per answer, then the alert."""
        if FIX.cert is None:
            self.skipTest("geolocd without TLS, or no openssl to make a certificate")
        ctx = ssl.create_default_context(cafile=FIX.cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        sock = socket.create_connection(("127.0.0.1", self.d.tls_port), timeout=60)
        self.addCleanup(sock.close)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

        def flush():
            sock.sendall(outgoing.read())

        def pump():
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        tls.write(hello_msg())
        flush()
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            try:
                buf += tls.read(65536)
            except ssl.SSLWantReadError:
                pump()
        self.assertIn(WELCOME, fields(buf[4:]))  # (the session tickets came before it)
        tls.write(b"".join(frame_msg(100 + i, FIX.images[i]) for i in range(8)))
        try:
            tls.unwrap()  # sends close_notify; it would wait for the server's
        except ssl.SSLWantReadError:
            pass
        flush()
        raw = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        records, i = [], 0  # (content type, length) of each record
        while i + 5 <= len(raw):
            records.append((raw[i], int.from_bytes(raw[i + 3:i + 5], "big")))
            i += 5 + records[-1][1]
        self.assertEqual(i, len(raw), records)
        # An Estimate takes 80 bytes or more; an alert 19 (2, its type, the tag).
        self.assertEqual([n > 32 for _, n in records], [True] * 8 + [False], records)


class Flood(Case):
    """max_clients 16: idle connections that never say Hello are evicted,
    oldest first, in favour of new ones; once every slot holds a client past
    Hello, new connections are refused. Either way each one is told
    Error{RESOURCE_EXHAUSTED, fatal} before it is closed; none is cut bare."""

    MAX = 16
    CONF = {  # by test; the others get max_clients = MAX
        "test_per_address_limit": ("max_clients = 8\nmax_clients_per_address = 2", False),
        "test_tls_eviction": ("max_clients = 2", True),
    }

    def setUp(self):
        extra, tls = self.CONF.get(self._testMethodName, ("max_clients = %d" % self.MAX, False))
        if tls and FIX.cert is None:
            self.skipTest("geolocd without TLS, or no openssl to make a certificate")
        self.d = Daemon(extra + "\nhandshake_timeout_ms = 60000", tls=tls)
        time.sleep(0.3)  # the startup probe's slot is free again

    def tearDown(self):
        self.assertEqual(self.d.stop(), 0, self.d.log_text())

    def outcome(self, c, timeout):
        """'refused' (Error{RESOURCE_EXHAUSTED, fatal} then EOF), 'bare' (EOF
        or a reset without a message), 'open' (nothing within timeout), or
        what came instead."""
        if not c.readable(timeout):
            return "open"
        try:
            m = c.recv()
        except ConnectionError:
            return "bare"
        if m is None:
            return "bare"
        if ERROR not in m:
            return repr(m)
        e = fields(m[ERROR][0])
        if first(e, 1) != RESOURCE_EXHAUSTED or not first(e, 4):
            return repr(e)
        try:
            rest = c.recv()
        except ConnectionError as x:
            return "refused, then %r" % x
        return "refused" if rest is None else "refused, then %r" % rest

    def test_idle_connections_make_room(self):
        """40 idle connections, a client, 15 more clients, then 200
        connections: the idle ones are evicted oldest first, every client is
        served, and every connection turned away is told why."""
        n_extra = 24
        conns = [self.conn() for _ in range(self.MAX + n_extra)]
        # The oldest are evicted, each with a message; the newest wait.
        self.assertEqual([self.outcome(c, 10) for c in conns[:n_extra]], ["refused"] * n_extra,
                         self.d.log_text())
        self.assertEqual([self.outcome(c, 0.05) for c in conns[n_extra:]], ["open"] * self.MAX)
        # A client that says Hello promptly is served (the oldest idle one
        # makes room for it).
        legit = self.conn()
        w = legit.hello()
        self.assertEqual(first(w, 1), 1)
        legit.send(frame_msg(1, FIX.images[0]))
        self.assertEqual(first(legit.expect(ESTIMATE), 1), 1)
        self.assertEqual(self.outcome(conns[n_extra], 10), "refused")
        # Clients past Hello are never evicted: 15 more take the slots of
        # the remaining idle connections.
        served = [legit]
        for _ in range(self.MAX - 1):
            c = self.conn()
            c.hello()
            served.append(c)
        self.assertEqual([self.outcome(c, 10) for c in conns[n_extra + 1:]],
                         ["refused"] * (self.MAX - 1))
        # Full of served clients: a flood far beyond max_clients is refused,
        # every connection with a message.
        flood = [self.conn() for _ in range(200)]
        out = [self.outcome(c, 10) for c in flood]
        self.assertEqual(out, ["refused"] * len(flood),
                         "%d of %d not refused with a message" %
                         (sum(o != "refused" for o in out), len(out)))
        for i, c in enumerate(served):
            c.send(ping_msg(i))
            self.assertEqual(first(c.expect(PONG), 1), i)

    def test_per_address_limit(self):
        """max_clients_per_address: a third connection from one address is
        refused while other addresses are served."""
        a = [self.conn(source="127.0.0.2") for _ in range(2)]
        a[0].hello()
        # The second has not said Hello yet: it holds its slot all the same.
        third = self.conn(source="127.0.0.2")
        self.assertEqual(self.outcome(third, 10), "refused")
        a[1].hello()
        b = self.conn(source="127.0.0.3")
        b.hello()
        # Full for 127.0.0.2 only: another address evicts nobody from it.
        self.assertEqual(self.outcome(a[1], 0.05), "open")
        a[0].close()
        deadline = time.time() + 10
        while True:  # the closed connection's slot is released asynchronously
            c = self.conn(source="127.0.0.2")
            c.send(hello_msg())
            m = c.recv()
            if m is not None and WELCOME in m:
                break
            self.assertLess(time.time(), deadline, "no slot for 127.0.0.2 after a close")
            c.close()
            time.sleep(0.05)

    def test_tls_eviction(self):
        """max_clients 2 on plaintext and TLS listeners: an idle connection
        whose TLS is up is evicted with the Error (through TLS), one still
        before its TLS handshake is closed; clients past Hello stay."""
        up = self.conn(self.d.tls_port, tls=True)  # TLS up, no Hello
        raw = self.conn(self.d.tls_port)  # no TLS handshake
        time.sleep(0.2)
        a = self.conn()
        a.hello()
        self.assertEqual(self.outcome(up, 10), "refused")
        self.assertEqual(self.outcome(raw, 0.05), "open")
        b = self.conn(self.d.tls_port, tls=True)
        b.hello()
        self.assertEqual(self.outcome(raw, 10), "bare")
        self.assertEqual(self.outcome(self.conn(self.d.tls_port, tls=True), 10), "refused")
        self.assertEqual(self.outcome(self.conn(), 10), "refused")
        for i, c in enumerate((a, b)):
            c.send(ping_msg(i))
            self.assertEqual(first(c.expect(PONG), 1), i)


class StreamOptions(Case):
    """Hello's StreamOptions, bounded by the server's limits and echoed in
    Welcome."""

    @classmethod
    def setUpClass(cls):
        # Clusters of one tile each: a frame has as many candidates as it
        # asks for.
        cls.d = Daemon("max_frames_in_flight = 4\ndefault_top_k = 5",
                       sections="[search]\nbandwidth_m = 1\n")

    @classmethod
    def tearDownClass(cls):
        assert cls.d.stop() == 0, cls.d.log_text()

    def answers(self, c, n):
        """frame_id -> Estimate fields of the next n answers."""
        out = {}
        for _ in range(n):
            e = c.expect(ESTIMATE)
            out[first(e, 1)] = e
        return out

    def test_max_in_flight_and_default_top_k(self):
        c = self.conn()
        w = c.hello(max_in_flight=2, default_top_k=3)
        self.assertEqual(first(w, 6), 2)  # Welcome.max_frames_in_flight
        self.assertEqual(first(w, 9), 3)  # Welcome.default_top_k
        # Three frames in one write: the third finds two in flight.
        c.send(b"".join(frame_msg(i, FIX.images[i]) for i in (1, 2, 3)))
        got = self.answers(c, 3)
        self.assertEqual(first(got[3], 2), BUSY)
        for i in (1, 2):
            self.assertNotEqual(first(got[i], 2), BUSY, got[i])
            self.assertEqual(len(got[i].get(3, [])), 3)  # Estimate.candidates
        # A frame's own top_k still wins.
        c.send(frame_msg(4, FIX.images[4], top_k=8))
        self.assertEqual(len(self.answers(c, 1)[4].get(3, [])), 8)

    def test_bounds(self):
        """Options beyond the server's limits are cut to them; without
        options (or 0) the stream gets the server's."""
        for opts, in_flight, top_k in (({"max_in_flight": 1000, "default_top_k": 1000}, 4, 100),
                                       ({}, 4, 5),
                                       ({"max_in_flight": 0, "default_top_k": 0}, 4, 5)):
            w = self.conn().hello(**opts)
            self.assertEqual((first(w, 6), first(w, 9)), (in_flight, top_k), opts)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class NeverReads(Case):
    """Clients that send Pings and never read the Pongs: the memory their
    queued output holds is bounded (the requests counted, not only the
    payload), the daemon stops reading them, and well-behaved clients are
    served meanwhile."""

    def test_never_reading_clients_cost_little(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)
        hog = []
        for _ in range(8):
            c = self.conn(timeout=0.5)
            c.hello()
            hog.append(c)
        before = rss_kib(self.d.proc.pid)
        pings = b"".join(ping_msg(i + 1) for i in range(20000))  # ~200 KB, 20000 Pongs
        sent = 0
        deadline = time.time() + 60
        for c in hog:
            for _ in range(40):  # up to 8 MB a client, until the server stops reading
                try:
                    c.s.sendall(pings)
                    sent += len(pings)
                except (socket.timeout, BlockingIOError):
                    break
                if time.time() > deadline:
                    break
        time.sleep(1)
        grown = rss_kib(self.d.proc.pid) - before
        # Before the bound on real memory, 8 such clients queued ~400 MiB of
        # Pongs (4 MiB of payload each, ~250 bytes of memory per 17-byte Pong).
        # Under AddressSanitizer freed memory sits in its quarantine (up to
        # 256 MiB), so RSS says nothing there.
        with open("/proc/%d/maps" % self.d.proc.pid) as f:
            asan = "libasan" in f.read()
        if not asan:
            self.assertLess(grown, 48 * 1024,
                            "RSS grew %d KiB after %d bytes of Pings" % (grown, sent))
        c = self.conn()
        c.hello()
        c.send(ping_msg(7))
        self.assertEqual(first(c.expect(PONG), 1), 7)


class BeforeHello(Case):
    """Before Hello a message may be 64 KiB at most: an unauthenticated peer
    cannot make the server buffer and unpack max_message_bytes (16 MiB);
    after Welcome the full limit applies."""

    def test_large_message_before_hello(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)
        c = self.conn()
        body = b"\x0a" + varint(1 << 20) + b"\x00" * (1 << 20)  # 1 MiB of Hello fields
        c.send(len(body).to_bytes(4, "big"))  # the header alone is refused
        e = c.expect(ERROR)
        self.assertEqual(first(e, 1), 4)  # TOO_LARGE
        self.assertEqual(first(e, 4), 1)  # fatal
        self.assertIn(b"before Hello", first(e, 2))
        c = self.conn()
        c.hello()
        image = png(256, 256, 3)
        self.assertGreater(len(image), 1 << 16)
        c.send(frame_msg(1, image))
        self.assertEqual(first(c.expect(ESTIMATE), 1), 1)


class ProtocolVersion(Case):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        assert cls.d.stop() == 0, cls.d.log_text()

    def test_out_of_range_versions_are_refused(self):
        """protocol_version is a uint32: 2^32 + 1 (and 2^64 - 2^32 + 1) would
        be read as 1 by narrowing; they are answered Error{VERSION}."""
        for v in (2**32 + 1, 2**64 - 2**32 + 1, 2**33 + 1):
            c = self.conn()
            c.send(hello_msg(version=v))
            e = c.expect(ERROR)
            self.assertEqual(first(e, 1), VERSION, (v, e))
            self.assertEqual(first(e, 4), 1)
            self.assertIsNone(c.recv())
        self.assertEqual(first(self.conn().hello(version=1), 1), 1)

if __name__ == "__main__":
    FIX = Fixture()
    result = unittest.main(verbosity=2, exit=False).result
    if result.wasSuccessful():  # the logs stay for a failure
        shutil.rmtree(FIX.dir, ignore_errors=True)
    sys.exit(0 if result.wasSuccessful() else 1)
