#!/usr/bin/env python3
"""Start the DigitalOcean stand-in behind Prism's validating proxy.

    client -> front (this process) -> Prism proxy --errors -> standin.py

Prints one JSON line once a request goes all the way through (polled, no
fixed sleeps):
  {"api_url", "token", "readonly_token", "control_url", "pids", "logs", ...}
then serves until SIGTERM or SIGINT, which stop both children (they also get
SIGTERM from the kernel if this process dies). If a child exits on its own,
the other is stopped and this exits 1.

The front is a small relay on `api_url`. It passes everything through
unchanged, except that an error Prism generates itself (application/problem+json:
a request or response that breaks the spec, a path not in the spec, a missing
token) gains DigitalOcean's `id` and `message` fields, so that clients such as
godo print the violations, and is logged as one line with the violations to
stderr and front.log.

Needs `hack/digitalocean/setup.sh` first. Environment: KILN_CACHE_DIR (where
setup.sh installed), STANDIN_ACTION_SECONDS (default 1), STANDIN_DROPLET_IPV4,
STANDIN_RATELIMIT_429 (answer the first N requests 429), STANDIN_STRICT=0 (skip
the stand-in's undeclared-property checks). Options: --help.
"""

import argparse
import ctypes
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PRISM_VERSION = "5.14.2"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length"}


def cache_dir():
    return os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kiln")


def die_with_parent():
    """In the child, before exec: get SIGTERM when run.py dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to each answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server_version = "kiln-do-front/1"
    upstream = None  # (host, port) of Prism
    log_file = None
    log_lock = threading.Lock()

    def log_message(self, fmt, *args):
        pass

    def note(self, line):
        line = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} front: {line}\n"
        with self.log_lock:
            sys.stderr.write(line)
            sys.stderr.flush()
            with open(self.log_file, "a") as f:
                f.write(line)

    def relay(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, out_headers, data = resp.status, resp.getheaders(), resp.read()
        except OSError as e:
            status, data = 502, json.dumps({"id": "bad_gateway", "message": f"Prism did not answer: {e}"}).encode()
            out_headers = [("Content-Type", "application/json")]
            self.note(f"{self.command} {self.path} -> 502: Prism did not answer: {e}")
        finally:
            conn.close()
        ctype = dict((k.lower(), v) for k, v in out_headers).get("content-type", "")
        if ctype.startswith("application/problem+json"):
            data = self.explain(status, data)
        self.send_response(status)
        for k, v in out_headers:
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def explain(self, status, data):
        """Prism's own error: add DigitalOcean's id/message, and log it."""
        try:
            problem = json.loads(data)
        except ValueError:
            self.note(f"{self.command} {self.path} -> {status} from Prism: {data[:500]!r}")
            return data
        kind = str(problem.get("type", "")).rsplit("#", 1)[-1] or "error"
        details = [f"{'.'.join(str(p) for p in v.get('location', []))}: {v.get('message')}"
                   for v in problem.get("validation") or []]
        message = f"Prism {kind}: {problem.get('title', '')}"
        message += ": " + "; ".join(details) if details else f" ({problem.get('detail', '')})"
        problem.setdefault("id", f"prism_{kind.lower()}")
        problem.setdefault("message", message)
        self.note(f"REJECTED {self.command} {self.path} -> {status}: {message}")
        return json.dumps(problem).encode()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = relay


def http_status(url, token=None, timeout=2):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    cache = os.path.join(cache_dir(), "digitalocean")
    ap = argparse.ArgumentParser(description="DigitalOcean API stand-in behind Prism (see README.md)")
    ap.add_argument("--spec", default=os.path.join(cache, "spec.json"), help="bundled spec as JSON (setup.sh)")
    ap.add_argument("--prism", default=os.path.join(cache, f"prism-{PRISM_VERSION}", "node_modules", ".bin", "prism"))
    ap.add_argument("--python", default=sys.executable, help="interpreter for standin.py")
    ap.add_argument("--log-dir", default="", help="default: a new directory under $TMPDIR")
    ap.add_argument("--token", default="", help="default: a random dop_v1_ token")
    ap.add_argument("--readonly-token", default="", help="default: a random dop_v1_ token")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness")
    a = ap.parse_args()

    for path, what in ((a.spec, "spec"), (a.prism, "prism")):
        if not os.path.exists(path):
            sys.exit(f"run.py: no {what} at {path}: run hack/digitalocean/setup.sh first")
    t0 = time.time()
    token = a.token or f"dop_v1_{secrets.token_hex(32)}"
    ro_token = a.readonly_token or f"dop_v1_{secrets.token_hex(32)}"
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="kiln-do-standin-")
    os.makedirs(log_dir, exist_ok=True)
    logs = {name: os.path.join(log_dir, f"{name}.log") for name in ("front", "prism", "standin")}

    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stopping.append(signum))
    procs = []

    def fail(msg):
        stop(procs)
        for name, path in logs.items():
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    sys.stderr.write(f"--- {path} (end):\n{f.read()[-3000:]}\n")
        sys.exit(f"run.py: {msg}")

    # The front binds its port now (no race), so the stand-in can put the
    # address clients use into pagination links.
    Front.log_file = logs["front"]
    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    api_url = f"http://127.0.0.1:{front.server_address[1]}"

    cmd = [a.python, "-u", os.path.join(HERE, "standin.py"), "--spec", a.spec, "--port", "0",
           "--public-url", api_url, "--token", token, "--readonly-token", ro_token,
           "--action-seconds", os.environ.get("STANDIN_ACTION_SECONDS", "1"),
           "--ratelimit-429", os.environ.get("STANDIN_RATELIMIT_429", "0")]
    if os.environ.get("STANDIN_DROPLET_IPV4"):
        cmd += ["--droplet-ipv4", os.environ["STANDIN_DROPLET_IPV4"]]
    if os.environ.get("STANDIN_STRICT", "1") == "0":
        cmd.append("--no-strict")
    standin = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(logs["standin"], "a"),
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, text=True)
    procs.append(standin)
    line = standin.stdout.readline()  # {"port": N} once it listens
    if not line:
        fail(f"standin.py exited with {standin.wait()} before listening")
    standin_url = f"http://127.0.0.1:{json.loads(line)['port']}"

    # Prism takes its port as a number; a port taken in between shows as
    # EADDRINUSE in its log, and another is tried.
    prism = None
    for _ in range(3):
        prism_port = free_port()
        prism = subprocess.Popen(
            [a.prism, "proxy", a.spec, standin_url, "--errors", "--cors=false",
             "-h", "127.0.0.1", "-p", str(prism_port)],
            stdout=open(logs["prism"], "a"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
        procs.append(prism)
        Front.upstream = ("127.0.0.1", prism_port)
        # Ready when an authenticated call goes all the way through.
        while time.time() - t0 < a.timeout and not stopping:
            if prism.poll() is not None or standin.poll() is not None:
                break
            if http_status(f"http://127.0.0.1:{prism_port}/v2/regions?per_page=1", token) == 200:
                break
            time.sleep(0.1)  # poll interval
        if prism.poll() is None or stopping:
            break
        procs.remove(prism)
        with open(logs["prism"], errors="replace") as f:
            if "EADDRINUSE" not in f.read():
                break
    if stopping:
        stop(procs)
        sys.exit(0)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    if http_status(f"{api_url}/v2/regions?per_page=1", token) != 200:
        fail(f"not ready after {time.time() - t0:.1f}s")

    print(json.dumps({
        "api_url": api_url, "token": token, "readonly_token": ro_token,
        "control_url": f"{standin_url}/_standin", "pids": [p.pid for p in procs], "logs": logs,
        "ready_seconds": round(time.time() - t0, 2), "prism": PRISM_VERSION,
    }), flush=True)

    while not stopping:
        if prism.poll() is not None or standin.poll() is not None:
            fail(f"a child exited: prism={prism.poll()} standin={standin.poll()}")
        time.sleep(0.5)
    front.shutdown()
    stop(procs)


if __name__ == "__main__":
    main()
