"""Helpers shared by the serving tests: free ports, the protocol's wire
format spoken raw (varints, fields, framed client messages), small PNGs of
noise, a small map of the shipped model, and a geolocd under test.

Python's standard library only: every test that imports this runs without
torch or GDAL's bindings."""
import csv
import io
import os
import random
import select
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib

# geoloc.v1 numbers the tests use.
WELCOME, ESTIMATE, ERROR, PONG = 1, 2, 3, 4  # ServerMessage oneof
VERSION, RESOURCE_EXHAUSTED, BAD_REQUEST = 2, 7, 12  # Error.Code
OK, DROPPED_STALE, BUSY, NO_MATCH = 1, 2, 3, 4  # Estimate.Status
PNG_FORMAT = 2  # ImageFormat

# A box about 1 km a side inside the 2020 NAIP raster: a map of the shipped
# model over it builds in seconds (36 tiles).
BBOX = "-99.1618,47.0155,-99.1487,47.0245"


def paths(build, src):
    """The binaries and data files the tests use, by name."""
    return {
        "geolocd": os.path.join(build, "daemon", "geolocd"),
        "geoloc": os.path.join(build, "tools", "geoloc"),
        "raster": os.path.join(src, "data", "naip", "m_4709963_se_14_1_20200831.tif"),
        "model": os.path.join(src, "data", "models", "geoloc-naip-mnv2-64.safetensors"),
    }


_PORTS = set()  # handed out by free_port
_PORT_LOW = 10000


def _ephemeral_low():
    """The first port of the kernel's ephemeral range (32768 when unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A loopback port free now, never one this process was given before
    (two picks in a row, a daemon's port and its metrics port, could
    otherwise be the same), drawn below the kernel's ephemeral range: the
    outgoing connections of the tests running beside this one take their
    local ports from that range, and one of them could take a port picked
    there before the daemon under test binds it."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(_PORT_LOW, low) if low > _PORT_LOW + 1000 else 0
        if port in _PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port
    raise AssertionError("no free loopback port below %d" % low)


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


def parse(data):
    """number -> value of a protobuf message (the last occurrence wins)."""
    return {k: v[-1] for k, v in fields(data).items()}


def first(f, number, default=None):
    return f[number][-1] if number in f else default


def ld(number, body):
    return varint(number << 3 | 2) + varint(len(body)) + body


def vi(number, value):
    return varint(number << 3) + varint(value)


def client_msg(field, body):
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
    """A w x h RGB PNG of noise (zlib and struct: no imaging library)."""
    rnd = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rnd.getrandbits(8) for _ in range(w * 3)) for _ in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def slow_png(w, h, seed, short=0):
    """An RGB PNG whose every row has the Paeth filter (the slowest to undo):
    rows cut from one block of noise, so that it compresses to a few hundred
    KB however large, while decoding it still touches every byte. 4096 x 4096
    takes about half a second to decode on one core. short: rows left out at
    the end (the decode fails after reading the others)."""
    rnd = random.Random(seed)
    block = bytes(rnd.getrandbits(8) for _ in range(8192))
    ring = block * (w * 3 // len(block) + 2)
    rows = b"".join(b"\x04" + ring[(y * 97) % len(block):][:w * 3] for y in range(h - short))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def rss_kib(pid, what="VmRSS"):
    """VmRSS (or VmHWM, its peak) of a process, KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(what + ":"):
                return int(line.split()[1])
    raise AssertionError("no " + what)


def under_asan(pid):
    """Under AddressSanitizer freed memory sits in its quarantine (up to 256
    MiB), so RSS says nothing there."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


class Conn:
    """A raw protocol connection, plaintext or TLS (verified against cafile)."""

    def __init__(self, port, cafile=None, source=None, timeout=60):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
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


def metrics(mport):
    """geolocd's /metrics on mport as {series: value}, a series as written
    ('geoloc_frames_total{status="ok"}')."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.decode().splitlines()
                                     if line and not line.startswith("#"))}


def metric(mport, series):
    """One series of metrics(mport)."""
    m = metrics(mport)
    if series not in m:
        raise AssertionError("no metric " + series)
    return m[series]


def frame_counts(mport):
    """geoloc_frames_total by status: {status: count}."""
    prefix = 'geoloc_frames_total{status="'
    return {k[len(prefix):-2]: v for k, v in metrics(mport).items() if k.startswith(prefix)}


def wait_frames(mport, n, timeout, proc=None):
    """geoloc_frames_total by status once n frames or more are finished, or
    when timeout seconds have passed; None as soon as proc (the daemon) has
    exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            return None
        counts = frame_counts(mport)
        if sum(counts.values()) >= n or time.monotonic() >= deadline:
            return counts
        time.sleep(0.1)


def read_to_eof(sock):
    """Everything sock receives until the peer closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


# What geolocd logs once started (daemon/server.c, gl_server_run): after its
# first listener, it opens the others, the metrics server and the TLS
# context, and installs its signal handlers.
READY_LOG = " ready (protocol "


def wait_listening(proc, port, log_text, timeout=60):
    """Waits until geolocd (proc) accepts connections on port and has logged
    that it is ready (all its listeners, metrics server and signal handlers
    in place); fails with its log (log_text()) when it exits or is not ready
    in time."""
    deadline = time.time() + timeout
    listening = False  # one probe connection is enough
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("geolocd exited %d:\n%s" % (proc.returncode, log_text()))
        try:
            if not listening:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                listening = True
            if READY_LOG in log_text():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("geolocd did not get ready:\n" + log_text())


def build_map(geoloc, model, raster, out, *extra):
    """A map of the shipped model over BBOX without a dense layer."""
    subprocess.run([geoloc, "map", "build", "--model", model, "--ortho", raster, "--bbox", BBOX,
                    "--dense-layer", "0", "--out", out, *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Geolocd:
    """geolocd on loopback with a model and one map (named map_name), its
    log in a file; write_conf rewrites the configuration (for SIGHUP). With
    tls (the [tls] section's lines), its one listener is TLS."""

    def __init__(self, exe, workdir, model, map_path, extra="", map_name="area", tls=None):
        self.exe, self.dir = exe, workdir
        self.map_name, self.tls = map_name, tls
        self.port, self.mport = free_port(), free_port()
        self.conf = os.path.join(workdir, "geolocd-%d.conf" % self.port)
        self.write_conf(model, map_path, extra)
        self.log = open(os.path.join(workdir, "geolocd-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([exe, "--config", self.conf], stderr=self.log)
        wait_listening(self.proc, self.port, self.log_text)

    def write_conf(self, model, map_path, extra=""):
        with open(self.conf + ".tmp", "w") as f:
            f.write("[daemon]\n%s\n[listen]\n%s = 127.0.0.1:%d\n%s[model]\npath = %s\n"
                    "[map %s]\npath = %s\n[metrics]\nlisten = 127.0.0.1:%d\n"
                    % (extra, "tls" if self.tls else "tcp", self.port,
                       "[tls]\n%s\n" % self.tls if self.tls else "", model, self.map_name,
                       map_path, self.mport))
        os.rename(self.conf + ".tmp", self.conf)

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def wait_log(self, needle, count=1, timeout=30):
        """Waits until needle is in the log count times; returns the log."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log_text()
            if text.count(needle) >= count:
                return text
            time.sleep(0.05)
        raise AssertionError("%r not logged %d times:\n%s" % (needle, count, self.log_text()))

    def query(self, geoloc, frames, *args):
        r = subprocess.run([geoloc, "query", "--connect", "127.0.0.1:%d" % self.port, "--format",
                            "csv", *args, *frames], capture_output=True, text=True, timeout=120)
        return r.returncode, list(csv.DictReader(io.StringIO(r.stdout))), r.stderr

    def http_status(self, path):
        try:
            return urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.mport, path),
                                          timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    def wait_ready(self, timeout=60):
        """Waits until /readyz answers 200: the daemon has finished starting
        (its metrics server included), so its open files are all open."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.http_status("/readyz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("geolocd not ready:\n" + self.log_text())

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc
