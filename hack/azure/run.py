#!/usr/bin/env python3
"""Start the Azure Resource Manager stand-in; print one JSON line when ready.

    python3 hack/azure/run.py [--log-dir DIR]

The line (one line on stdout; everything else goes to stderr and the log):
  {"api_url", "authority_host", "tenant_id", "client_id", "client_secret",
   "subscription_id", "resource_group", "gallery", "image_definition",
   "locations", "control_url", "schemas", ... "pids", "logs", "ready_seconds"}

Ready means: a token from the stand-in's Entra ID token endpoint, then an
authenticated GET of the gallery, answered 200 (polled every 0.1 s). Then it
serves until SIGTERM, SIGINT or SIGHUP, which stop the stand-in (SIGTERM, up
to 10 s, then SIGKILL). The stand-in gets PR_SET_PDEATHSIG, so it also stops
when this process is killed. If it exits on its own, this exits 1 and prints
the end of its log.

Environment: KILN_AZURE_SCHEMAS (auto | swagger | sdk), KILN_AZURE_SPECS,
KILN_CACHE_DIR, KILN_AZURE_POLLS (1), KILN_AZURE_RETRY_AFTER (0),
KILN_AZURE_PAGE_SIZE (100), STANDIN_STRICT=0 (do not check responses).
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
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def die_with_parent():
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def request(url, data=None, headers=None, timeout=2):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(info):
    """A token, then the gallery: the whole path a client takes."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": info["client_id"],
                                   "client_secret": info["client_secret"],
                                   "scope": "https://management.azure.com/.default"}).encode()
    status, body = request(f"{info['authority_host']}{info['tenant_id']}/oauth2/v2.0/token", form,
                           {"Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        return False
    token = json.loads(body)["access_token"]
    url = (f"{info['api_url']}subscriptions/{info['subscription_id']}/resourceGroups/{info['resource_group']}"
           f"/providers/Microsoft.Compute/galleries/{info['gallery']}?api-version={info['api_versions']['galleries']}")
    status, _ = request(url, headers={"Authorization": f"Bearer {token}"})
    return status == 200


def main():
    ap = argparse.ArgumentParser(description="Azure Resource Manager stand-in (see README.md)")
    ap.add_argument("--log-dir", default="", help="default: a new directory under $TMPDIR; it stays after the run")
    ap.add_argument("--python", default=sys.executable, help="interpreter for standin.py (3.9 or newer)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for readiness")
    a, extra = ap.parse_known_args()  # anything else goes to standin.py (e.g. --polls 2)

    t0 = time.time()
    log_dir = os.path.abspath(a.log_dir or tempfile.mkdtemp(prefix="kiln-azure-standin-"))
    os.makedirs(log_dir, exist_ok=True)
    logs = {"standin": os.path.join(log_dir, "standin.log")}

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: stopping.append(signum))

    cmd = [a.python, "-u", "-B", os.path.join(HERE, "standin.py"), "--port", "0"] + extra
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

    line = standin.stdout.readline()
    if not line:
        fail(f"standin.py exited with {standin.wait()} before listening")
    info = json.loads(line)
    while not stopping:
        if standin.poll() is not None:
            fail(f"standin.py exited with {standin.returncode}")
        if ready(info):
            break
        if time.time() - t0 > a.timeout:
            fail(f"not ready after {time.time() - t0:.1f}s")
        time.sleep(0.1)
    if stopping:
        stop(standin)
        sys.exit(0)
    # The readiness check's calls are not the test's: start the counts at zero.
    req = urllib.request.Request(info["control_url"] + "calls", method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=2).read()
    except (urllib.error.URLError, OSError):
        pass

    info.pop("port", None)
    info.update(pids=[standin.pid], logs=logs, log_dir=log_dir, ready_seconds=round(time.time() - t0, 2))
    print(f"run.py: ready in {info['ready_seconds']}s at {info['api_url']}; schemas: {info['schemas']}",
          file=sys.stderr, flush=True)
    print(json.dumps(info), flush=True)

    while not stopping:
        if standin.poll() is not None:
            fail(f"standin.py exited on its own with {standin.returncode}")
        time.sleep(0.2)
    stop(standin)


if __name__ == "__main__":
    main()
