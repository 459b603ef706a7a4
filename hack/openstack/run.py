#!/usr/bin/env python3
"""Starts kiln's local OpenStack in DIR and keeps it running until SIGTERM.

  python3 hack/openstack/run.py DIR

Runs on 127.0.0.1, every port picked free by the kernel (the listening
socket is opened here and handed to gunicorn as fd://N, so no port can be
taken in between):
  - Keystone 30 (gunicorn, sqlite, fernet tokens), bootstrapped with
    keystone-manage and then set up through its own REST API: regions
    RegionOne and RegionTwo, project `kiln`, user `kiln` (member role), an
    application credential of that user, the catalogue;
  - one real Glance 33 per region (gunicorn, `glance.wsgi.api:application`,
    keystonemiddleware against that Keystone, sqlite, file store);
  - one Nova stand-in per region (nova_standin.py behind the real
    keystonemiddleware), whose createImage writes into its region's Glance.

When all of them answer an authenticated request it prints ONE JSON line on
stdout (credentials, URLs, pids), then waits. SIGTERM or SIGINT stops the
children (and so does its own death: they get SIGTERM through
PR_SET_PDEATHSIG). Logs are in DIR/logs. Needs the venv of setup.sh.
"""

import argparse
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REGIONS = ["RegionOne", "RegionTwo"]
DEFAULT_DOMAIN = "Default"
READY_TIMEOUT = 120.0


def venv_dir():
    if os.environ.get("KILN_OPENSTACK_VENV"):
        return os.environ["KILN_OPENSTACK_VENV"]
    cache = os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kiln")
    return os.path.join(cache, "openstack-venv")


def log(msg):
    print("openstack: " + msg, file=sys.stderr, flush=True)


class Stop(Exception):
    pass


def _on_signal(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def _die_with_parent():
    # Runs in the child between fork and exec: SIGTERM when run.py dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def request(method, url, token=None, body=None, headers=None, timeout=30):
    """Returns (status, headers, parsed body or None)."""
    hdrs = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if token:
        hdrs["X-Auth-Token"] = token
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, rh = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as e:
        raw, status, rh = e.read(), e.code, e.headers
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, rh, parsed


def must(expected, result, what):
    status, _, body = result
    if status not in expected:
        raise RuntimeError("%s: HTTP %s %s" % (what, status, body))
    return result


def password_auth(user, password, project):
    return {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password,
            "domain": {"name": DEFAULT_DOMAIN}}}},
        "scope": {"project": {"name": project, "domain": {"name": DEFAULT_DOMAIN}}},
    }}


class Stack:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.venv = venv_dir()
        self.bin = os.path.join(self.venv, "bin")
        self.procs = []  # (name, Popen)
        self.marks = []  # (phase, seconds since start), for the ready line
        self.logs = os.path.join(self.root, "logs")
        self.secrets = {k: secrets.token_urlsafe(18) for k in
                        ("admin", "kiln", "glance", "nova")}

    # --------------------------------------------------------- processes --

    def logfile(self, name):
        return open(os.path.join(self.logs, name + ".log"), "ab")

    def spawn(self, name, argv, env=None, pass_fds=()):
        with self.logfile(name) as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                                    pass_fds=pass_fds, preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        return proc

    def gunicorn(self, name, app, sock, env, pythonpath=None, threads=4):
        argv = [os.path.join(self.bin, "gunicorn"),
                "--bind", "fd://%d" % sock.fileno(),
                "--workers", "1", "--worker-class", "gthread", "--threads", str(threads),
                "--timeout", "300", "--graceful-timeout", "5",
                "--name", "kiln-" + name, "--no-control-socket",
                "--access-logfile", "-", "--error-logfile", "-"]
        if pythonpath:
            argv += ["--pythonpath", pythonpath]
        argv.append(app)
        return self.spawn(name, argv, env=env, pass_fds=(sock.fileno(),))

    def stop(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for name, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log("%s (pid %d) ignored SIGTERM; killing it" % (name, proc.pid))
                proc.kill()
                proc.wait()

    def check_alive(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError("%s exited with %s, see %s/%s.log"
                                   % (name, proc.returncode, self.logs, name))

    def wait_all(self, procs):
        """Waits for one-shot children; their failure is fatal."""
        for proc in procs:
            name = next(n for n, p in self.procs if p is proc)
            self.procs.remove((name, proc))
            if proc.wait() != 0:
                # The log's end goes with the error: a test's directory is
                # gone by the time anyone reads it.
                try:
                    with open(os.path.join(self.logs, name + ".log")) as f:
                        tail = "".join(f.readlines()[-15:])
                except OSError:
                    tail = ""
                raise RuntimeError("%s failed (exit %d), see %s/%s.log\n%s"
                                   % (name, proc.returncode, self.logs, name, tail))

    @staticmethod
    def probe_all(pending, token):
        """One round over the services not yet answering; True when none is left."""
        for what, url in list(pending.items()):
            try:
                if request("GET", url, token, timeout=10)[0] == 200:
                    del pending[what]
            except (OSError, urllib.error.URLError):
                pass
        return not pending

    def poll(self, what, probe, timeout=READY_TIMEOUT):
        """Calls probe() until it returns a true value (every 0.1 s)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                value = probe()
                if value:
                    return value
            except (OSError, urllib.error.URLError) as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError("%s not ready after %.0f s (last error: %s)" % (what, timeout, last))

    # ------------------------------------------------------------ config --

    def env(self, **extra):
        env = dict(os.environ)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        # No __pycache__ next to nova_standin.py and keystone_wsgi.py (the
        # venv's own modules were compiled by pip).
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env

    def write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)

    def authtoken_section(self, user):
        return (
            "[keystone_authtoken]\n"
            "www_authenticate_uri = {ks}/v3\n"
            "auth_url = {ks}/v3\n"
            "auth_type = password\n"
            "username = {user}\n"
            "password = {pw}\n"
            "project_name = service\n"
            "user_domain_name = Default\n"
            "project_domain_name = Default\n"
            "service_token_roles_required = true\n"
        ).format(ks=self.keystone_url, user=user, pw=self.secrets[user])

    def keystone_conf(self):
        d = os.path.join(self.root, "keystone")
        self.write(os.path.join(d, "keystone.conf"), (
            "[DEFAULT]\n"
            "use_stderr = true\n"
            "[database]\n"
            "connection = sqlite:///{d}/keystone.sqlite\n"
            "[fernet_tokens]\n"
            "key_repository = {d}/fernet-keys\n"
            "[fernet_receipts]\n"
            "key_repository = {d}/fernet-keys\n"
            "[identity]\n"
            # bcrypt's cheapest cost: only test passwords are hashed here.
            "password_hash_rounds = 4\n"
            "[credential]\n"
            "key_repository = {d}/credential-keys\n"
            "[oslo_concurrency]\n"
            "lock_path = {d}/locks\n"
        ).format(d=d))
        return d

    def glance_conf(self, region):
        d = os.path.join(self.root, "glance-" + region)
        for sub in ("images", "staging", "tasks", "locks"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        shutil.copy(os.path.join(self.venv, "etc", "glance", "glance-api-paste.ini"), d)
        self.write(os.path.join(d, "glance-api.conf"), (
            "[DEFAULT]\n"
            "use_stderr = true\n"
            "enabled_backends = fs:file\n"
            "[glance_store]\n"
            "default_backend = fs\n"
            "[fs]\n"
            "filesystem_store_datadir = {d}/images\n"
            "[os_glance_staging_store]\n"
            "filesystem_store_datadir = {d}/staging\n"
            "[os_glance_tasks_store]\n"
            "filesystem_store_datadir = {d}/tasks\n"
            "[database]\n"
            "connection = sqlite:///{d}/glance.sqlite\n"
            "[paste_deploy]\n"
            "flavor = keystone\n"
            "config_file = {d}/glance-api-paste.ini\n"
            "[oslo_concurrency]\n"
            "lock_path = {d}/locks\n"
        ).format(d=d) + self.authtoken_section("glance"))
        return d

    def nova_conf(self, region):
        path = os.path.join(self.root, "nova-" + region, "nova.conf")
        self.write(path, self.authtoken_section("nova"))
        return path

    # ------------------------------------------------------------- start --

    def mark(self, phase):
        self.marks.append((phase, time.monotonic() - self.t0))

    def start(self):
        t0 = self.t0 = time.monotonic()
        os.makedirs(self.logs, exist_ok=True)
        for tool in ("gunicorn", "keystone-manage", "glance-manage"):
            if not os.access(os.path.join(self.bin, tool), os.X_OK):
                raise RuntimeError("%s missing in %s: run hack/openstack/setup.sh"
                                   % (tool, self.venv))
        socks = {"keystone": listener()}
        for region in REGIONS:
            socks["glance-" + region] = listener()
            socks["nova-" + region] = listener()
        url = {k: "http://127.0.0.1:%d" % s.getsockname()[1] for k, s in socks.items()}
        self.keystone_url = url["keystone"]

        # Glance's schema is made once, in the background, while Keystone
        # is bootstrapped; the second region gets a copy of the database.
        gdirs = {r: self.glance_conf(r) for r in REGIONS}
        first = gdirs[REGIONS[0]]
        gsync = self.spawn("glance-manage", [
            os.path.join(self.bin, "glance-manage"), "--config-file",
            os.path.join(first, "glance-api.conf"), "db_sync"], env=self.env())

        kdir = self.keystone_conf()
        kconf = os.path.join(kdir, "keystone.conf")
        manage = [os.path.join(self.bin, "keystone-manage"), "--config-file", kconf]
        owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
        # The key repositories do not need the database: all three at once.
        self.wait_all([
            self.spawn("keystone-db_sync", manage + ["db_sync"], env=self.env()),
            self.spawn("keystone-fernet_setup", manage + ["fernet_setup"] + owner,
                       env=self.env()),
            self.spawn("keystone-credential_setup", manage + ["credential_setup"] + owner,
                       env=self.env()),
        ])
        self.mark("keystone-manage db_sync+keys")
        # Keystone's server starts only once bootstrap has filled the
        # database: a bootstrap once failed under load while the server
        # loaded beside it (its log was lost with the test's directory).
        bootstrap_argv = manage + [
            "bootstrap",
            # One argument: a password may begin with "-".
            "--bootstrap-password=" + self.secrets["admin"],
            "--bootstrap-username", "admin",
            "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin",
            "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", REGIONS[0],
            "--bootstrap-admin-url", self.keystone_url + "/v3",
            "--bootstrap-internal-url", self.keystone_url + "/v3",
            "--bootstrap-public-url", self.keystone_url + "/v3",
        ]
        bootstrap = self.spawn("keystone-bootstrap", bootstrap_argv, env=self.env())

        self.wait_all([gsync])
        self.mark("glance-manage db_sync")
        for region in REGIONS[1:]:
            shutil.copy(os.path.join(first, "glance.sqlite"), gdirs[region])
        for region in REGIONS:
            # One thread: Glance on SQLite answers concurrent writes with
            # "database is locked" (500); a real cloud's database does not.
            self.gunicorn("glance-" + region, "glance.wsgi.api:application",
                          socks["glance-" + region],
                          self.env(OS_GLANCE_CONFIG_DIR=gdirs[region]), threads=1)
            self.gunicorn("nova-" + region, "nova_standin:application",
                          socks["nova-" + region],
                          self.env(KILN_NOVA_CONF=self.nova_conf(region),
                                   KILN_NOVA_REGION=region,
                                   KILN_NOVA_GLANCE_URL=url["glance-" + region]),
                          pythonpath=HERE)
        # bootstrap is idempotent: a failure gets a second run before it
        # is fatal.
        if bootstrap.wait() != 0:
            self.mark("keystone-manage bootstrap failed once; running it again")
            self.procs = [(n, p) for n, p in self.procs if p is not bootstrap]
            bootstrap = self.spawn("keystone-bootstrap-2", bootstrap_argv, env=self.env())
        self.wait_all([bootstrap])
        self.mark("keystone-manage bootstrap")
        self.gunicorn("keystone", "keystone_wsgi:application", socks["keystone"],
                      self.env(OS_KEYSTONE_CONFIG_DIR=kdir,
                               OS_KEYSTONE_CONFIG_FILES="keystone.conf"),
                      pythonpath=HERE)
        for s in socks.values():
            s.close()  # the children hold their copies

        ks = self.keystone_url
        self.poll("keystone", lambda: request("GET", ks + "/v3")[0] == 200)
        self.mark("keystone answers")
        info = self.configure_keystone(url)
        self.mark("keystone configured")

        # Ready means: every service answers an authenticated call. The
        # first call to each makes its auth_token middleware log in to
        # Keystone, so they are polled in turn but each probe is cheap.
        token = self.token(password_auth("kiln", self.secrets["kiln"], "kiln"))
        probes = []
        for region in REGIONS:
            probes.append(("glance " + region, info["glance"][region] + "/v2/images"))
            probes.append(("nova " + region, info["nova"][region] + "/flavors"))
        pending = dict(probes)
        self.poll("glance and nova", lambda: self.probe_all(pending, token))
        self.mark("glance and nova answer")
        info["pids"] = [p.pid for _, p in self.procs]
        info["dir"] = self.root
        info["ready_seconds"] = round(time.monotonic() - t0, 2)
        return info

    def token(self, auth):
        _, headers, body = must((201,), request("POST", self.keystone_url + "/v3/auth/tokens",
                                                body=auth), "token")
        return headers["X-Subject-Token"]

    def configure_keystone(self, url):
        ks = self.keystone_url + "/v3"
        admin = self.token(password_auth("admin", self.secrets["admin"], "admin"))

        def call(method, path, body=None, expected=(200, 201, 204)):
            return must(expected, request(method, ks + path, admin, body),
                        "%s %s" % (method, path))[2]

        for region in REGIONS[1:]:
            call("POST", "/regions", {"region": {"id": region}})
        identity = call("GET", "/services?type=identity")["services"][0]["id"]
        for region in REGIONS[1:]:
            call("POST", "/endpoints", {"endpoint": {
                "service_id": identity, "interface": "public", "region_id": region,
                "url": ks}})
        services = {}
        for stype, name, what in (("image", "glance", "Glance"),
                                  ("compute", "nova", "Nova stand-in"),
                                  ("network", "neutron", "placeholder, answers 501")):
            services[stype] = call("POST", "/services", {"service": {
                "type": stype, "name": name,
                "description": "kiln local OpenStack: " + what}})["service"]["id"]
        glance = {r: url["glance-" + r] for r in REGIONS}
        nova = {r: url["nova-" + r] + "/v2.1" for r in REGIONS}
        # No Neutron runs here, but Packer 1.6.6 needs a `network` endpoint
        # in the catalogue to start a build; it is served by the Nova
        # stand-in and answers 501 to every call.
        network = {r: url["nova-" + r] + "/network" for r in REGIONS}
        for region in REGIONS:
            for stype, where in (("image", glance), ("compute", nova), ("network", network)):
                call("POST", "/endpoints", {"endpoint": {
                    "service_id": services[stype], "interface": "public",
                    "region_id": region, "url": where[region]}})

        # bootstrap makes admin, manager, member, reader and service.
        roles = {r["name"]: r["id"] for r in call("GET", "/roles")["roles"]}

        def role(name):
            if name not in roles:
                roles[name] = call("POST", "/roles", {"role": {"name": name}})["role"]["id"]
            return roles[name]

        projects = {}
        for name in ("service", "kiln"):
            projects[name] = call("POST", "/projects", {"project": {
                "name": name, "domain_id": "default"}})["project"]["id"]
        users = {}
        for name, project in (("glance", "service"), ("nova", "service"), ("kiln", "kiln")):
            users[name] = call("POST", "/users", {"user": {
                "name": name, "domain_id": "default", "password": self.secrets[name],
                "default_project_id": projects[project]}})["user"]["id"]
        for name, project, rname in (("glance", "service", "service"),
                                     ("nova", "service", "service"),
                                     ("kiln", "kiln", "member")):
            call("PUT", "/projects/%s/users/%s/roles/%s"
                 % (projects[project], users[name], role(rname)))

        user_token = self.token(password_auth("kiln", self.secrets["kiln"], "kiln"))
        cred = must((201,), request(
            "POST", "%s/users/%s/application_credentials" % (ks, users["kiln"]),
            user_token, {"application_credential": {
                "name": "kiln-tests", "description": "made by hack/openstack/run.py"}}),
            "application credential")[2]["application_credential"]
        return {
            "auth_url": ks,
            "regions": list(REGIONS),
            "username": "kiln",
            "password": self.secrets["kiln"],
            "project": "kiln",
            "project_id": projects["kiln"],
            "user_domain": DEFAULT_DOMAIN,
            "project_domain": DEFAULT_DOMAIN,
            "app_cred_id": cred["id"],
            "app_cred_secret": cred["secret"],
            "admin": {"username": "admin", "password": self.secrets["admin"],
                      "project": "admin"},
            "glance": glance,
            "nova": nova,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="new or empty working directory (databases, "
                                    "image files, logs)")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if os.listdir(args.dir):
        log("error: %s is not empty (every start makes a new stack)" % args.dir)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    stack = Stack(args.dir)
    code = 0
    try:
        info = stack.start()
        log("ready in %.1f s (%s); logs in %s" % (
            info["ready_seconds"],
            ", ".join("%s at %.1f s" % m for m in stack.marks), stack.logs))
        print(json.dumps(info), flush=True)
        while True:
            # Blocks until a child dies (an error) or a signal raises Stop.
            pid, status = os.wait()
            for name, proc in stack.procs:
                if proc.pid == pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    raise RuntimeError("%s exited with %s, see %s/%s.log"
                                       % (name, proc.returncode, stack.logs, name))
    except Stop as e:
        log("%s: stopping" % e)
    except Exception as e:  # noqa: BLE001
        log("error: %s" % e)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
