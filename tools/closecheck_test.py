#!/usr/bin/env python3
"""closecheck against real peers on loopback (Meson suite 'closecheck').

    closecheck_test.py PATH/TO/closecheck [--report] [TEST-NAME-SUBSTRING...]

Starts openssl s_server, gnutls-serv, nginx, haproxy, lighttpd and a Python
`ssl` HTTP server, each as a foreground process with a certificate made in a
temporary directory, runs closecheck against each (TLS 1.2 and 1.3) and
asserts what it reports; runs closecheck --listen against curl and openssl
s_client; checks bad input. Every peer runs in its own process group, which is
killed when its test ends, pass or fail. Ports: bound to 0 by the peer where it
can say which it got, else a free port picked the moment before, retried if
taken. A peer that is not installed is reported as SKIP (not silently).
--report prints each peer's JSON (to write docs/closecheck.md from).
"""
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

CLOSECHECK = None
TMP = None
REPORT = False
TIMEOUT_MS = 1000  # closecheck's --timeout in every run


class Skip(Exception):
    pass


# ---------------------------------------------------------------- processes


LIVE = set()  # process groups of running peers, for the SIGTERM handler
LIVE_LOCK = threading.Lock()


class Peer:
    """A child in its own process group, killed (group-wide) on exit."""

    def __init__(self, argv, cwd=None, stdin=subprocess.DEVNULL):
        self.argv = argv
        self.log_path = os.path.join(TMP, "log-%d-%s" % (threading.get_ident(), os.path.basename(argv[0])))
        self.log = open(self.log_path, "wb")
        with LIVE_LOCK:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            LIVE.add(self.proc.pid)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_output(self, needle, seconds=10):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out = self.output()
            if needle in out:
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return None

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(2)
        else:
            # The leader is gone; its group may not be (nginx workers etc.).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.stdin:
            self.proc.stdin.close()
        self.log.close()
        with LIVE_LOCK:
            LIVE.discard(self.proc.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_on_free_port(make_argv, cwd=None, attempts=5, seconds=10):
    """Starts make_argv(port) until something listens on port (polled)."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        peer = Peer(make_argv(port), cwd=cwd)
        end = time.monotonic() + seconds
        while time.monotonic() < end and peer.proc.poll() is None:
            if port_open(port):
                return peer, port
            time.sleep(0.02)
        last = peer.output()
        peer.stop()
    raise AssertionError("%s did not start listening:\n%s" % (make_argv(0)[0], last))


def run(argv, seconds=30, stdin=None):
    """Runs a command to its end (bounded); returns (status, stdout, stderr)."""
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=seconds, text=True)
    return p.returncode, p.stdout, p.stderr


def closecheck(*args, seconds=30):
    return run([CLOSECHECK, *map(str, args)], seconds=seconds)


def need(program):
    if shutil.which(program) is None:
        raise Skip("%s is not installed (scripts/setup.sh installs it)" % program)


def check_server(port, version, http=None, extra=()):
    """closecheck --json against 127.0.0.1:port; returns the experiments."""
    args = ["127.0.0.1", port, "--tls" + version, "--cafile", CERT, "--json", "--timeout", TIMEOUT_MS, *extra]
    if http:
        args += ["--http", http]
    start = time.monotonic()
    status, out, err = closecheck(*args)
    took = time.monotonic() - start
    assert status == 0, "closecheck exited %d: %s" % (status, err)
    report = json.loads(out)
    assert report["tls_version"] == "TLSv" + version, report["tls_version"]
    # Every experiment is bounded by --timeout: a handful of them, 8 connections.
    assert took < 12 * TIMEOUT_MS / 1000, "closecheck took %.1f s" % took
    if REPORT:
        print(json.dumps(report, indent=1))
    return report["experiments"]


def expect(exp, name, **facts):
    got = exp[name]
    for key, want in facts.items():
        assert got.get(key) == want, "%s.%s: expected %r, got %r (%s)" % (name, key, want, got.get(key),
                                                                          json.dumps(got))


# What each peer does, as observed (docs/closecheck.md has the same table).
# The same for TLS 1.2 and 1.3 unless a key says otherwise.
OBSERVED = {
    "s_server": dict(full_close=dict(answer="close_notify", answer_then="fin", full_shutdown_reports="complete"),
                     server_close=dict(ending="close_notify", ending_waited_for_ours=True, ending_then="fin"),
                     half_close=dict(ending="close_notify"),
                     bare_fin=dict(answer="alert", answer_detail="decode error (fatal)")),
    "gnutls-serv": dict(full_close=dict(answer="close_notify", answer_then="fin", full_shutdown_reports="complete"),
                        server_close=dict(ending="close_notify", ending_waited_for_ours=False, ending_then="fin"),
                        half_close=dict(ending="close_notify"),
                        bare_fin=dict(answer="alert", answer_detail="unexpected_message (fatal)")),
    "nginx": dict(full_close=dict(answer="fin", full_shutdown_reports="sent, stream_truncated"),
                  server_close=dict(ending="close_notify", ending_waited_for_ours=False, ending_then="fin"),
                  half_close=dict(ending="fin"),
                  bare_fin=dict(answer="fin")),
    "haproxy": dict(full_close=dict(answer="close_notify", answer_then="fin", full_shutdown_reports="complete"),
                    server_close=dict(ending="close_notify", ending_waited_for_ours=False, ending_then="fin"),
                    half_close=dict(ending="close_notify"),
                    bare_fin=dict(answer="close_notify")),
    "lighttpd": dict(full_close=dict(answer="close_notify", answer_then="fin", full_shutdown_reports="complete"),
                     server_close=dict(ending="close_notify", ending_waited_for_ours=True, ending_then="fin"),
                     half_close=dict(ending="close_notify"),
                     bare_fin=dict(answer="alert", answer_detail="decode error (fatal)")),
    "python": dict(full_close=dict(answer="fin", full_shutdown_reports="sent, stream_truncated"),
                   server_close=dict(ending="fin"),
                   half_close=dict(ending="fin"),
                   bare_fin=dict(answer="alert", answer_detail="decode error (fatal)")),
}


def expect_observed(peer, exp, version):
    for name, facts in OBSERVED[peer].items():
        expect(exp, name, **facts)
    # Whatever the answer, it comes at once: no peer here makes a full close wait.
    assert exp["full_close"]["answer_ms"] < TIMEOUT_MS / 2, exp["full_close"]
    # Every peer here answers a request that was followed by our close_notify.
    assert exp["half_close"]["bytes_after_our_close_notify"] > 0, exp["half_close"]
    assert exp["server_close"]["data_bytes"] > 0, exp["server_close"]
    expect_write_only(exp, version)
    expect_resumes(exp)


def expect_resumes(exp):
    expect(exp, "resumption", fast="resumed", quiet="resumed", full="resumed")


def expect_write_only(exp, version):
    if version == "1.3":
        expect(exp, "write_only", applicable=True, close_notify_sent=True)
        # The tickets had arrived unread, and the close processed them.
        assert exp["write_only"]["tickets"] >= 1, exp["write_only"]
        assert exp["write_only"]["unread_bytes_before_close"] > 0, exp["write_only"]
        assert exp["write_only"]["server_then"] == "fin", exp["write_only"]
    else:
        expect(exp, "write_only", applicable=False)


CERT = KEY = None


def make_certificate():
    global CERT, KEY
    CERT = os.path.join(TMP, "cert.pem")
    KEY = os.path.join(TMP, "key.pem")
    status, _, err = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", KEY, "-out", CERT, "-days", "2", "-subj", "/CN=localhost",
                          "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    assert status == 0, err


# ---------------------------------------------------------------- peers

VERSIONS = ["1.2", "1.3"]
TESTS = []


def test(name):
    def register(f):
        TESTS.append((name, f))
        return f
    return register


def s_server(version, *flags):
    need("openssl")
    # Its stdin stays open (a pipe): at end of file, s_server without -www quits.
    peer = Peer(["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", CERT, "-key", KEY,
                 "-tls" + version.replace(".", "_"), *flags], stdin=subprocess.PIPE)
    out = peer.wait_output("ACCEPT 127.0.0.1:")
    if out is None:
        peer.stop()
        raise AssertionError("s_server did not start:\n" + peer.output())
    port = int(out.split("ACCEPT 127.0.0.1:")[1].split()[0])
    return peer, port


for v in VERSIONS:
    @test("openssl s_server -www, TLS " + v)
    def _(v=v):
        peer, port = s_server(v, "-www")
        with peer:
            exp = check_server(port, v, http="/")
        expect_observed("s_server", exp, v)


@test("openssl s_server without HTTP: idle mode, readable table")
def _():
    peer, port = s_server("1.3")
    with peer:
        start = time.monotonic()
        status, out, err = closecheck("127.0.0.1", port, "--cafile", CERT, "--timeout", 500)
        took = time.monotonic() - start
    assert status == 0, err
    assert out.startswith("closecheck 127.0.0.1 port %d, TLSv1.3\n" % port), out
    assert out.count("   => ") == 6, out
    # Idle: s_server never closes a quiet connection; closecheck waits --timeout, no more.
    assert "trigger                      idle" in out, out
    assert "did not close within 500 ms (its idle timeout is longer; try --http)" in out, out
    assert "answers close_notify" in out, out
    assert took < 5, took


for v in VERSIONS:
    @test("gnutls-serv (HTTP mode), TLS " + v)
    def _(v=v):
        need("gnutls-serv")
        prio = "NORMAL:-VERS-ALL:+VERS-TLS" + v
        peer, port = start_on_free_port(lambda p: ["gnutls-serv", "--x509certfile", CERT, "--x509keyfile", KEY,
                                                   "--priority", prio, "-p", str(p)])
        with peer:
            exp = check_server(port, v, http="/")
        expect_observed("gnutls-serv", exp, v)


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv{version};
        location / {{ return 200 "hello from nginx\\n"; }}
    }}
}}
"""


def conf_dir(name):
    d = tempfile.mkdtemp(prefix=name + "-", dir=TMP)
    return d


for v in VERSIONS:
    @test("nginx, TLS " + v)
    def _(v=v):
        need("nginx")
        d = conf_dir("nginx")

        def argv(port):
            path = os.path.join(d, "nginx.conf")
            with open(path, "w") as f:
                f.write(NGINX_CONF.format(tmp=d, port=port, cert=CERT, key=KEY, version=v))
            return ["nginx", "-p", d, "-c", path, "-e", os.path.join(d, "nginx-error.log")]
        peer, port = start_on_free_port(argv)
        with peer:
            exp = check_server(port, v, http="/")
        expect_observed("nginx", exp, v)


HAPROXY_CONF = """
global
    pidfile {tmp}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend https
    bind 127.0.0.1:{port} ssl crt {pem} ssl-min-ver TLSv{version} ssl-max-ver TLSv{version}
    http-request return status 200 content-type text/plain string "hello from haproxy"
"""

for v in VERSIONS:
    @test("haproxy, TLS " + v)
    def _(v=v):
        need("haproxy")
        d = conf_dir("haproxy")
        pem = os.path.join(d, "both.pem")
        with open(pem, "w") as f:
            f.write(open(CERT).read() + open(KEY).read())

        def argv(port):
            path = os.path.join(d, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(HAPROXY_CONF.format(tmp=d, port=port, pem=pem, version=v))
            return ["haproxy", "-db", "-f", path]
        peer, port = start_on_free_port(argv)
        with peer:
            exp = check_server(port, v, http="/")
        expect_observed("haproxy", exp, v)


LIGHTTPD_CONF = """
server.document-root = "{tmp}/www"
server.port = {port}
server.bind = "127.0.0.1"
server.pid-file = "{tmp}/lighttpd.pid"
server.errorlog = "{tmp}/lighttpd-error.log"
server.modules = ("mod_openssl")
ssl.engine = "enable"
ssl.pemfile = "{cert}"
ssl.privkey = "{key}"
ssl.openssl.ssl-conf-cmd = ("MinProtocol" => "TLSv{version}", "MaxProtocol" => "TLSv{version}")
"""

for v in VERSIONS:
    @test("lighttpd, TLS " + v)
    def _(v=v):
        need("lighttpd")
        if not os.path.exists("/usr/lib/lighttpd/mod_openssl.so"):
            raise Skip("lighttpd-mod-openssl is not installed (scripts/setup.sh installs it)")
        d = conf_dir("lighttpd")
        os.mkdir(os.path.join(d, "www"))
        with open(os.path.join(d, "www", "index.html"), "w") as f:
            f.write("hello from lighttpd\n")

        def argv(port):
            path = os.path.join(d, "lighttpd.conf")
            with open(path, "w") as f:
                f.write(LIGHTTPD_CONF.format(tmp=d, port=port, cert=CERT, key=KEY, version=v))
            return ["lighttpd", "-D", "-f", path]
        peer, port = start_on_free_port(argv)
        with peer:
            exp = check_server(port, v, http="/")
        expect_observed("lighttpd", exp, v)


PYTHON_SERVER = r'''
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[3])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", srv.server_address[1], flush=True)
srv.serve_forever()
'''

for v in VERSIONS:
    @test("python ssl http.server, TLS " + v)
    def _(v=v):
        script = os.path.join(TMP, "python_server.py")
        with open(script, "w") as f:
            f.write(PYTHON_SERVER)
        peer = Peer([sys.executable, script, CERT, KEY, "TLSv1_" + v[-1]])
        with peer:
            out = peer.wait_output("listening ")
            assert out is not None, "python server did not start:\n" + peer.output()
            port = int(out.split("listening ")[1].split()[0])
            exp = check_server(port, v, http="/")
        expect_observed("python", exp, v)


# ---------------------------------------------------------------- --listen


def start_listen(*extra):
    peer = Peer([CLOSECHECK, "--listen", "0", "--cert", CERT, "--key", KEY, "--once", "--json", "--timeout",
                 str(TIMEOUT_MS), *extra], stdin=subprocess.DEVNULL)
    out = peer.wait_output("listening on port ")
    if out is None:
        peer.stop()
        raise AssertionError("closecheck --listen did not start:\n" + peer.output())
    return peer, int(out.split("listening on port ")[1].split()[0])


def listen_report(peer):
    peer.proc.wait(10)
    assert peer.proc.returncode == 0, "closecheck --listen exited %d:\n%s" % (peer.proc.returncode, peer.output())
    lines = [l for l in peer.output().splitlines() if l.startswith("{")]
    assert len(lines) == 1, peer.output()
    report = json.loads(lines[0])
    if REPORT:
        print(json.dumps(report, indent=1))
    return report


for v in VERSIONS:
    @test("--listen with curl, TLS " + v)
    def _(v=v):
        need("curl")
        peer, port = start_listen("--tls" + v)
        with peer:
            status, _, err = run(["curl", "-sS", "--cacert", CERT, "--tlsv" + v, "--tls-max", v,
                                  "https://localhost:%d/" % port, "--resolve", "localhost:%d:127.0.0.1" % port],
                                 seconds=10)
            assert status == 0, err
            r = listen_report(peer)
        assert r["tls_version"] == "TLSv" + v
        assert r["answer"] == "http response (keep-alive)"
        assert r["client_close"] == "close_notify" and r["client_close_then"] == "fin", r
        assert r["client_close_waited_for_ours"] is False, r


for v in VERSIONS:
    @test("--listen with openssl s_client closing first, TLS " + v)
    def _(v=v):
        need("openssl")
        peer, port = start_listen()
        with peer:
            # stdin's end makes s_client send close_notify after our answer.
            client = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                                     "-tls" + v.replace(".", "_"), "-CAfile", CERT],
                                    input="hello from s_client\n", capture_output=True, text=True, timeout=10)
            r = listen_report(peer)
        assert r["request_bytes"] == len("hello from s_client\n"), r
        assert r["answer"] == "a line", r
        assert r["client_close"] == "close_notify" and r["client_close_then"] == "fin", r
        assert r["client_close_waited_for_ours"] is False, r


for v in VERSIONS:
    @test("--listen with openssl s_client staying open, TLS " + v)
    def _(v=v):
        need("openssl")
        peer, port = start_listen()
        with peer:
            client = Peer(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-tls" + v.replace(".", "_"),
                           "-CAfile", CERT], stdin=subprocess.PIPE)
            with client:
                client.proc.stdin.write(b"hello from s_client\n")
                client.proc.stdin.flush()
                r = listen_report(peer)
                client.proc.stdin.close()
        assert r["client_close"] == "none", r
        assert r["answer_to_our_close_notify"] == "close_notify", r
        assert r["answer_to_our_close_notify_ms"] < 500, r
        assert r["answer_to_our_close_notify_then"] == "fin", r


@test("--listen --count 2 reports two connections, then exits")
def _():
    need("curl")
    peer = Peer([CLOSECHECK, "--listen", "0", "--cert", CERT, "--key", KEY, "--count", "2", "--timeout",
                 str(TIMEOUT_MS)])
    with peer:
        out = peer.wait_output("listening on port ")
        assert out is not None, peer.output()
        port = int(out.split("listening on port ")[1].split()[0])
        for _ in range(2):
            status, _, err = run(["curl", "-sS", "--cacert", CERT, "https://127.0.0.1:%d/" % port], seconds=10)
            assert status == 0, err
        peer.proc.wait(10)
        assert peer.proc.returncode == 0, peer.output()
        # The readable form: one block per connection.
        assert peer.output().count("=> the client closes with close_notify") == 2, peer.output()


@test("--listen with a client that rejects the certificate (curl without --cacert)")
def _():
    need("curl")
    peer, port = start_listen()
    with peer:
        status, _, _ = run(["curl", "-sS", "https://127.0.0.1:%d/" % port], seconds=10)
        assert status != 0
        r = listen_report(peer)
    assert r["handshake"].startswith("failed: ") and "unknown ca" in r["handshake"], r


PYTHON_CLIENT = r'''
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost")
s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
got = b""
while b"received" not in got:
    got += s.recv(4096)
if sys.argv[3] == "fin":
    s.close()  # Python's close(): a bare FIN, no close_notify
else:
    s.unwrap()  # close_notify, waiting for ours
    s.close()
'''

for how in ("fin", "close_notify"):
    @test("--listen with a python ssl client closing with " + how)
    def _(how=how):
        peer, port = start_listen()
        with peer:
            status, _, err = run([sys.executable, "-c", PYTHON_CLIENT, str(port), CERT, how], seconds=10)
            assert status == 0, err
            r = listen_report(peer)
        assert r["answer"] == "http response (keep-alive)", r
        assert r["client_close"] == how, r
        assert r["client_close_ms"] < 500, r
        if how == "close_notify":  # unwrap() waits for our answer
            assert r["client_close_waited_for_ours"] is True and r["client_close_then"] == "fin", r


# ---------------------------------------------------------------- bad input


def expect_failure(want_status, args, needle):
    status, out, err = closecheck(*args, seconds=10)
    assert status == want_status, "exit %d, not %d: %s" % (status, want_status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, "not one line: %r" % err
    assert lines[0].startswith("closecheck: ") and needle in lines[0], lines[0]
    assert out == "", out


@test("bad input: an unknown host")
def _():
    expect_failure(1, ["no-such-host.invalid", "443"], "cannot resolve no-such-host.invalid")


@test("bad input: a closed port")
def _():
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        expect_failure(1, ["127.0.0.1", port], "Connection refused")


@test("bad input: not a TLS server (plain HTTP)")
def _():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        try:
            while True:
                c, _ = srv.accept()
                with c:
                    c.settimeout(2)
                    try:
                        c.recv(4096)
                        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    except OSError:
                        pass
        except OSError:
            return
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        expect_failure(1, ["127.0.0.1", port, "--insecure"], "not a TLS server")
    finally:
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        srv.close()
        t.join(5)


@test("bad input: a silent TCP server")
def _():
    with socket.socket() as srv:  # accepts (the kernel does), never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        start = time.monotonic()
        expect_failure(1, ["127.0.0.1", srv.getsockname()[1], "--insecure", "--timeout", 300], "failed")
        assert time.monotonic() - start < 3


@test("bad input: an untrusted certificate")
def _():
    peer, port = s_server("1.3", "-www")
    with peer:
        expect_failure(1, ["127.0.0.1", port], "certificate verify failed")


@test("bad input: invalid flags")
def _():
    expect_failure(2, ["127.0.0.1", "443", "--frobnicate"], "unknown option '--frobnicate'")
    expect_failure(2, ["127.0.0.1"], "expected HOST PORT")
    expect_failure(2, ["127.0.0.1", "443", "--timeout", "soon"], "--timeout needs a number")
    expect_failure(2, ["127.0.0.1", "443", "--insecure", "--cafile", CERT], "exclude each other")
    expect_failure(2, ["--listen", "0"], "--listen needs --cert and --key")
    expect_failure(2, ["127.0.0.1", "99999"], "PORT needs a number")


# ---------------------------------------------------------------- runner


def kill_live_peers(signum, _frame):
    """Meson's timeout (SIGTERM) or ^C: the peers, in sessions of their own, must not outlive us."""
    for pgid in list(LIVE):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(TMP, ignore_errors=True)
    os._exit(128 + signum)


def main():
    global CLOSECHECK, TMP, REPORT
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    CLOSECHECK = os.path.abspath(args[0])
    REPORT = "--report" in args
    wanted = [a for a in args[1:] if a != "--report"]
    TMP = tempfile.mkdtemp(prefix="closecheck-test-")
    signal.signal(signal.SIGTERM, kill_live_peers)
    signal.signal(signal.SIGINT, kill_live_peers)
    started = time.monotonic()
    try:
        make_certificate()
        chosen = [(n, f) for n, f in TESTS if not wanted or any(w in n for w in wanted)]
        failed = 0

        def one(item):
            name, f = item
            t0 = time.monotonic()
            try:
                f()
                return "PASS", name, "", time.monotonic() - t0
            except Skip as e:
                return "SKIP", name, str(e), time.monotonic() - t0
            except Exception:
                return "FAIL", name, traceback.format_exc(), time.monotonic() - t0
        # Two at a time: the peers and closecheck share two cores with the rest of the suite.
        workers = 1 if REPORT else 3
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for verdict, name, detail, took in pool.map(one, chosen):
                print("%s %-55s %5.2f s%s" % (verdict, name, took, (": " + detail) if verdict == "SKIP" else ""))
                if verdict == "FAIL":
                    failed += 1
                    print(detail)
        print("%d tests, %d failed, %.1f s" % (len(chosen), failed, time.monotonic() - started))
        return 1 if failed else 0
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
