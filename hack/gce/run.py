#!/usr/bin/env python3
"""Start the Compute Engine stand-in and print one JSON line when it is ready.

    python3 hack/gce/run.py [--project kiln-test] [--log-dir DIR]

The line (one line on stdout; everything else goes to stderr and the logs):
  {"api_url": "http://127.0.0.1:PORT/compute/v1/", "token", "readonly_token",
   "project", "zones", "regions", "credentials_file", "service_account",
   "token_url", "control_url", "pids", "logs", "ready_seconds", ...}

Ready means an authenticated `GET .../projects/{project}/zones` answered 200
(polled every 0.1 s, no fixed sleeps). Then it serves until SIGTERM or SIGINT,
which stop the stand-in (SIGTERM, up to 10 s, then SIGKILL). The stand-in is
started with PR_SET_PDEATHSIG, so it also stops if this process is killed. If
the stand-in exits on its own, this exits 1 and prints the end of its log.

Needs `hack/gce/setup.sh` first (the Discovery document in the cache).
Environment: KILN_CACHE_DIR (as setup.sh), STANDIN_OPERATION_SECONDS (0.5),
STANDIN_RATELIMIT_429 (answer the first N API requests 429), STANDIN_STRICT=0
(do not check responses against the document). Options: --help.
"""

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def cache_dir():
    return os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kiln")


def die_with_parent():
    """In the child, before exec: get SIGTERM when run.py dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_status(url, token=None, timeout=2):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description="Compute Engine API stand-in (see README.md)")
    ap.add_argument("--discovery", default=os.path.join(cache_dir(), "gce", "compute-api.json"),
                    help="the Discovery document (setup.sh puts it here)")
    ap.add_argument("--project", default="kiln-test")
    ap.add_argument("--token", default="", help="the access token to accept (default: random)")
    ap.add_argument("--log-dir", default="", help="default: a new directory under $TMPDIR; it stays after the run")
    ap.add_argument("--python", default=sys.executable, help="interpreter for standin.py")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for readiness")
    a = ap.parse_args()

    if not os.path.exists(a.discovery):
        sys.exit(f"run.py: no Discovery document at {a.discovery}: run hack/gce/setup.sh first")
    t0 = time.time()
    log_dir = os.path.abspath(a.log_dir or tempfile.mkdtemp(prefix="kiln-gce-standin-"))
    os.makedirs(log_dir, exist_ok=True)
    logs = {"standin": os.path.join(log_dir, "standin.log")}

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: stopping.append(signum))

    cmd = [a.python, "-u", "-B", os.path.join(HERE, "standin.py"), "--discovery", a.discovery, "--port", "0",
           "--project", a.project, "--state-dir", os.path.join(log_dir, "state"),
           "--operation-seconds", os.environ.get("STANDIN_OPERATION_SECONDS", "0.5"),
           "--ratelimit-429", os.environ.get("STANDIN_RATELIMIT_429", "0")]
    if a.token:
        cmd += ["--token", a.token]
    if os.environ.get("STANDIN_STRICT", "1") == "0":
        cmd.append("--no-strict")
    with open(logs["standin"], "a") as err:
        standin = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent, text=True)

    def fail(msg):
        stop(standin)
        with open(logs["standin"], errors="replace") as f:
            sys.stderr.write(f"--- {logs['standin']} (end):\n{f.read()[-3000:]}\n")
        sys.exit(f"run.py: {msg}")

    line = standin.stdout.readline()  # the stand-in's own JSON line, once it listens
    if not line:
        fail(f"standin.py exited with {standin.wait()} before listening")
    info = json.loads(line)
    ready_url = f"{info['api_url']}projects/{info['project']}/zones?maxResults=1"
    while not stopping:
        if standin.poll() is not None:
            fail(f"standin.py exited with {standin.returncode}")
        if http_status(ready_url, info["token"]) == 200:
            break
        if time.time() - t0 > a.timeout:
            fail(f"not ready after {time.time() - t0:.1f}s")
        time.sleep(0.1)  # poll interval
    if stopping:
        stop(standin)
        sys.exit(0)

    info.pop("port", None)
    info.update(pids=[standin.pid], logs=logs, log_dir=log_dir, ready_seconds=round(time.time() - t0, 2))
    print(json.dumps(info), flush=True)

    while not stopping:
        if standin.poll() is not None:
            fail(f"standin.py exited on its own with {standin.returncode}")
        time.sleep(0.2)
    stop(standin)


if __name__ == "__main__":
    main()
