"""A fleet on loopback: HAProxy (deploy/haproxy/, its directives as shipped;
only addresses, ports and logging are rewritten) in front of geolocd.

Replicas: three geolocd serving one map behind replicas.cfg; 32 clients
(geoloc bench) stream through HAProxy while one replica is killed with
SIGKILL and another is stopped with SIGTERM (stop_delay_ms: HAProxy takes
it out of rotation before it drains). Every frame must be answered exactly
once from the clients' side; frames/s before and after, reconnections and
p99 are printed. A geoloc query crosses the loss of the replica it is
connected to and still answers every file once.

Shards: two TLS geolocd with different maps behind shards.cfg; a client
that names a region by SNI reaches that region's map (mutual TLS through
the proxy), and one that names another region does not.

Skipped (77) where haproxy or openssl is missing.

  /usr/bin/python3 tests/fleet/test_fleet.py BUILD SRC
"""
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BUILD, SRC = (os.path.abspath(p) for p in sys.argv[1:3])
del sys.argv[1:3]
sys.path.insert(0, os.path.join(SRC, "tests", "serving"))
import common  # noqa: E402

P = common.paths(BUILD, SRC)
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
CLIENTS = 32
RATE = 240        # frames/s over all clients: what one replica serves here with room
# Frames/s before and after are printed, not asserted: speed is measured by
# bench/, not by tests on shared machines.
SECONDS = 16      # of streaming
KILL_AT, TERM_AT = 4.0, 8.0
STOP_DELAY_MS = 3000  # > HAProxy's inter 500 ms x fall 2, with room on a busy machine


def haproxy_config(shipped, binds, backends, stats):
    """The shipped configuration with loopback addresses: binds maps a
    frontend to its port, backends a backend to [(name, port, metrics
    port)]; logging goes to stderr, and a stats socket is added."""
    out, section = [], None
    with open(os.path.join(SRC, "deploy", "haproxy", shipped)) as f:
        lines = f.readlines()
    backends = dict(backends)
    for line in lines:
        s = line.strip()
        head = s.split()[0] if s else ""
        if head in ("global", "defaults", "frontend", "backend"):
            section = s.split()[1] if len(s.split()) > 1 else head
            out.append(line)
            if head == "global":
                out.append("    stats socket %s level admin\n" % stats)
            continue
        if head == "log" and section == "global":
            out.append("    log stderr format raw local0 notice\n")
        elif head == "maxconn" and section == "global":  # within a test's file limit
            out.append("    maxconn 1000\n")
        elif head == "bind":
            out.append("    bind 127.0.0.1:%d\n" % binds[section])
        elif head == "server":  # in place of the shipped ones, after default-server
            for name, port, mport in backends.pop(section, []):
                out.append("    server %s 127.0.0.1:%d check port %d\n" % (name, port, mport))
        else:
            out.append(line)
    return "".join(out)


class HAProxy:
    def __init__(self, tmp, shipped, binds, backends):
        self.stats = os.path.join(tmp, "haproxy.sock")
        self.conf = os.path.join(tmp, "haproxy-%s" % shipped)
        with open(self.conf, "w") as f:
            f.write(haproxy_config(shipped, binds, backends, self.stats))
        self.log = open(self.conf + ".log", "w+")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def command(self, cmd):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats)
            s.sendall(cmd.encode() + b"\n")
            return common.read_to_eof(s).decode()

    def states(self):
        """server name -> status (UP, DOWN, ...), all backends."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait(self, want, timeout=20):
        """Waits until every server named in want has that status."""
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited:\n" + self.log_text())
            try:
                got = self.states()
                if all(got.get(k, "").startswith(v) for k, v in want.items()):
                    return got
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("HAProxy servers %s, wanted %s\n%s" % (got, want, self.log_text()))

    def log_text(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def frames_total(d):
    """geoloc_frames_total of a replica (all statuses), None once it is gone."""
    try:
        return sum(common.frame_counts(d.mport).values())
    except OSError:
        return None


def make_pki(tmp):
    """A CA, server certificates for two region names and a client
    certificate: {name: (cert, key)} and the CA's file."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=geoloc fleet test CA")
    out = {}
    for name in ("west.geoloc.example", "east.geoloc.example", "client"):
        with open(os.path.join(tmp, name + ".ext"), "w") as f:
            f.write("subjectAltName=DNS:%s\n" % name if name != "client" else
                    "extendedKeyUsage=clientAuth\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext")
        key = os.path.join(tmp, name + ".key")
        os.chmod(key, 0o600)
        out[name] = (os.path.join(tmp, name + ".crt"), key)
    return out, os.path.join(tmp, "ca.crt")


class Fleet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="geoloc-fleet-")
        cls.map = os.path.join(cls.tmp, "area.map")
        common.build_map(P["geoloc"], P["model"], P["raster"], cls.map)
        cls.frames = os.path.join(cls.tmp, "frames")
        os.mkdir(cls.frames)
        for i in range(16):
            with open(os.path.join(cls.frames, "f%02d.png" % i), "wb") as f:
                f.write(common.png(64, 64, i))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def replica(self, extra=""):
        d = common.Geolocd(P["geolocd"], self.tmp, P["model"], self.map,
                           "stop_delay_ms = %d\n%s" % (STOP_DELAY_MS, extra))
        self.addCleanup(d.stop, signal.SIGKILL)
        d.wait_ready()
        return d

    def proxy(self, shipped, binds, backends):
        h = HAProxy(self.tmp, shipped, binds, backends)
        self.addCleanup(h.stop)
        return h

    def test_replicas(self):
        reps = [self.replica() for _ in range(3)]
        port = common.free_port()
        h = self.proxy("replicas.cfg", {"geoloc": port},
                       {"geolocd": [("r%d" % i, d.port, d.mport) for i, d in enumerate(reps)]})
        h.wait({"r0": "UP", "r1": "UP", "r2": "UP"})

        bench = subprocess.Popen(
            [P["geoloc"], "bench", "--connect", "127.0.0.1:%d" % port, "--clients", str(CLIENTS),
             "--frames", str(RATE * SECONDS), "--rate", str(RATE), "--window", "4",
             "--reconnect", "30", self.frames],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()

        def at(t):
            time.sleep(max(0, t0 + t - time.monotonic()))

        def fps(ds, t_from, t_to):
            at(t_from)
            a = [frames_total(d) for d in ds]
            at(t_to)
            b = [frames_total(d) for d in ds]
            return sum(y - x for x, y in zip(a, b)) / (t_to - t_from)

        before = fps(reps, 1.0, KILL_AT - 0.5)
        at(KILL_AT)
        reps[0].proc.kill()  # SIGKILL: its clients' frames in flight are lost with it
        reps[0].proc.wait()
        at(TERM_AT)
        reps[1].proc.send_signal(signal.SIGTERM)
        # Out of rotation while it still serves: HAProxy sees /readyz fail.
        h.wait({"r1": "DOWN"}, timeout=STOP_DELAY_MS / 1000 - 0.2)
        self.assertIsNone(reps[1].proc.poll(), "the replica drained before HAProxy saw it go")
        self.assertEqual(reps[1].proc.wait(timeout=30), 0, reps[1].log_text()[-3000:])
        after = fps(reps[2:], TERM_AT + STOP_DELAY_MS / 1000 + 1.5, SECONDS - 0.5)

        out, err = bench.communicate(timeout=180)
        self.assertEqual(bench.returncode, 0, out + err)
        m = re.search(r"summary: sent (\d+), answered (\d+), each exactly once: (\w+); ([\d.]+) "
                      r"frames/s, p99 ([\d.]+) ms; (\d+) reconnection", out)
        self.assertTrue(m, out)
        self.assertEqual(m.group(3), "yes", out + err)
        self.assertEqual(int(m.group(1)), RATE * SECONDS)
        reconnects = int(m.group(6))
        self.assertGreater(reconnects, 0, "no client was cut off: the test did not test")
        self.assertNotIn("not answered", reps[1].log_text(), "the drained replica lost frames")
        sys.stderr.write(
            "  [%d clients through HAProxy, %d frames at %d/s: frames/s %.0f with 3 replicas, "
            "%.0f with 1 (one killed at %.0f s, one drained at %.0f s); %d reconnection(s); "
            "p99 %.0f ms; every frame answered exactly once]\n"
            % (CLIENTS, int(m.group(1)), RATE, before, after, KILL_AT, TERM_AT, reconnects,
               float(m.group(5))))

    def test_query_resumes(self):
        reps = [self.replica() for _ in range(2)]
        port = common.free_port()
        h = self.proxy("replicas.cfg", {"geoloc": port},
                       {"geolocd": [("q%d" % i, d.port, d.mport) for i, d in enumerate(reps)]})
        h.wait({"q0": "UP", "q1": "UP"})
        # Distinct names for one answer each: links to the same few images.
        files = []
        src = sorted(os.listdir(self.frames))
        qdir = os.path.join(self.tmp, "query")
        os.mkdir(qdir)
        for i in range(2000):
            p = os.path.join(qdir, "q%04d.png" % i)
            os.symlink(os.path.join(self.frames, src[i % len(src)]), p)
            files.append(p)
        q = subprocess.Popen([P["geoloc"], "query", "--connect", "127.0.0.1:%d" % port,
                              "--format", "csv", "--top-k", "1", "--window", "2", *files],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill the replica the query streams to, once it is under way.
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            counts = [frames_total(d) or 0 for d in reps]
            if max(counts) >= 50:
                victim = reps[counts.index(max(counts))]
            time.sleep(0.05)
        self.assertIsNotNone(victim, "the query did not start")
        victim.proc.kill()
        out, err = q.communicate(timeout=300)
        self.assertEqual(q.returncode, 0, err)
        self.assertIn("connected again", err)
        rows = list(csv.reader(io.StringIO(out)))
        names = [r[0] for r in rows if r and r[0] != "image"]
        self.assertEqual(sorted(names), sorted(files), "each file answered once")

    def test_query_gives_up(self):
        """With no replica left, --reconnect bounds the wait."""
        d = self.replica()
        files = [os.path.join(self.frames, f) for f in sorted(os.listdir(self.frames))] * 200
        q = subprocess.Popen([P["geoloc"], "query", "--connect", "127.0.0.1:%d" % d.port,
                              "--format", "csv", "--window", "2", "--reconnect", "2", *files],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while (frames_total(d) or 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        d.proc.kill()
        t0 = time.monotonic()
        _, err = q.communicate(timeout=60)
        took = time.monotonic() - t0
        self.assertNotEqual(q.returncode, 0, err)
        self.assertIn("gave up after", err)
        self.assertGreater(took, 1.5, err)
        self.assertLess(took, 15, err)

    def tls_shard(self, region, cert, key, ca):
        """geolocd with TLS only (client certificates required) and the map
        named after its region; (port, metrics port)."""
        d = common.Geolocd(P["geolocd"], self.tmp, P["model"], self.map, map_name=region,
                           tls="cert = %s\nkey = %s\nca = %s\nrequire_client_cert = true"
                           % (cert, key, ca))
        self.addCleanup(d.stop)
        return d.port, d.mport

    def test_shards_by_sni(self):
        if not shutil.which("openssl"):
            self.skipTest("no openssl")
        pki, ca = make_pki(self.tmp)
        shards = {}
        for region in ("west", "east"):
            name = region + ".geoloc.example"
            cert, key = pki[name]
            shards[region] = self.tls_shard(region, cert, key, ca)
        port = common.free_port()
        h = self.proxy("shards.cfg", {"geoloc_tls": port},
                       {"shard_west": [("west1",) + shards["west"]],
                        "shard_east": [("east1",) + shards["east"]]})
        h.wait({"west1": "UP", "east1": "UP"})
        frame = os.path.join(self.frames, "f00.png")
        cert, key = pki["client"]

        def query(server_name, map_name):
            return subprocess.run(
                [P["geoloc"], "query", "--connect", "127.0.0.1:%d" % port, "--tls-ca", ca,
                 "--tls-cert", cert, "--tls-key", key, "--server-name", server_name, "--map",
                 map_name, "--format", "csv", "--reconnect", "0", frame],
                capture_output=True, text=True, timeout=60)

        for region in ("west", "east"):
            other = "east" if region == "west" else "west"
            r = query(region + ".geoloc.example", region)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("f00.png", r.stdout)
            r = query(region + ".geoloc.example", other)
            self.assertNotEqual(r.returncode, 0, "%s's map served by the %s shard" % (other, region))
            self.assertIn("server refused", r.stderr)
        # Without a client certificate the shard itself refuses: TLS ends at geolocd.
        r = subprocess.run(
            [P["geoloc"], "query", "--connect", "127.0.0.1:%d" % port, "--tls-ca", ca,
             "--server-name", "west.geoloc.example", "--reconnect", "0", frame],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        # A name no shard serves gets no backend.
        r = query("north.geoloc.example", "west")
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    if not HAPROXY:
        print("SKIP: haproxy is not installed (./run deps installs it)")
        sys.exit(77)
    unittest.main(verbosity=2)
