#!/usr/bin/env python3
"""Stateful, in-memory stand-in for the part of the Compute Engine API (v1)
that kiln and Packer's `googlecompute` builder use, with every request and
every response checked against Google's Discovery document (see README.md
beside this file, and discovery.py for what is checked).

Standard library only, plus the `openssl` command for the service-account key.
`run.py` starts it. On start it prints one JSON line on stdout:
  {"port", "api_url", "token", "readonly_token", "credentials_file", "token_url", ...}

  /compute/v1/...   the API (validated; Bearer token or access_token needed)
  /token            OAuth2 token endpoint (JWT-bearer grant), for key files
  /_standin/...     control endpoints (not validated, no token): see
                    Handler.control
"""

import argparse
import base64
import collections
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import Discovery, Problem, parse_rfc3339  # noqa: E402
from filters import FilterError, apply_fields, check_fields, matches, parse_fields, parse_filter  # noqa: E402

try:
    from zoneinfo import ZoneInfo
    PACIFIC = ZoneInfo("America/Los_Angeles")
except Exception:  # no tz database: GCE's winter offset
    PACIFIC = timezone(timedelta(hours=-8))


def gce_time(ts=None):
    """A timestamp the way GCE writes them: Pacific time, milliseconds, offset."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, PACIFIC).isoformat(timespec="milliseconds")


def utc_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    sys.stderr.write(f"{utc_now()} standin: {msg}\n")
    sys.stderr.flush()


def new_id():
    """A resource id: a uint64 as a decimal string (19 digits)."""
    return str(10 ** 18 + secrets.randbelow(8 * 10 ** 18))


NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
EMPTY_FINGERPRINT = "42WmSpB8rSM="  # what GCE reports for no labels / no metadata
GOOGLE_HOSTS = ("https://compute.googleapis.com/compute/v1/", "https://www.googleapis.com/compute/v1/")

# --------------------------------------------------------------------------
# Catalogue

REGIONS = {"us-central1": ["a", "b", "c"], "europe-west1": ["b", "c", "d"]}
ZONES = {f"{r}-{z}": r for r, zs in REGIONS.items() for z in zs}
# name, vCPUs, memory MiB, shared core
MACHINE_TYPES = [
    ("e2-micro", 2, 1024, True), ("e2-small", 2, 2048, True), ("e2-medium", 2, 4096, True),
    ("e2-standard-2", 2, 8192, False), ("e2-standard-4", 4, 16384, False),
    ("n1-standard-1", 1, 3840, False), ("n2-standard-2", 2, 8192, False),
]
DISK_TYPES = ["pd-standard", "pd-balanced", "pd-ssd"]
# Public image projects, as the googlecompute plugin searches them
# (lib/common/driver_gce.go GetImage). Anyone may read their images.
PUBLIC_IMAGE_PROJECTS = [
    "almalinux-cloud", "centos-cloud", "cloud-hpc-image-public", "cos-cloud", "coreos-cloud", "debian-cloud",
    "fedora-cloud", "fedora-coreos-cloud", "freebsd-org-cloud-dev", "rhel-cloud", "rhel-sap-cloud",
    "rocky-linux-cloud", "suse-cloud", "suse-sap-cloud", "suse-byos-cloud", "ubuntu-os-cloud", "windows-cloud",
    "windows-sql-cloud", "gce-nvme", "google-containers", "opensuse-cloud", "ubuntu-os-pro-cloud", "ml-images",
]
# A project that exists but that the caller may not use: 403, not 404.
FOREIGN_PROJECTS = ["kiln-other"]
PUBLIC_READ_METHODS = {"compute.images.get", "compute.images.list", "compute.images.getFromFamily"}
CATALOGUE_CREATED = "2024-05-01T10:00:00.000-07:00"
SCOPE_PREFIX = "https://www.googleapis.com/auth/"


class ApiError(Exception):
    """An error in Google's JSON shape."""

    REASONS = {400: "invalid", 401: "authError", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
               412: "conditionNotMet", 429: "rateLimitExceeded", 500: "backendError", 501: "notImplemented"}

    def __init__(self, code, message, reason=None, domain="global", headers=None, errors=None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or self.REASONS.get(code, "invalid")
        self.domain, self.headers = domain, headers or {}
        self.errors = errors

    def body(self):
        errors = self.errors or [{"message": self.message, "domain": self.domain, "reason": self.reason}]
        return {"error": {"code": self.code, "message": self.message, "errors": errors}}


def not_found(what):
    return ApiError(404, f"The resource '{what}' was not found")


def bad(message, reason="invalid"):
    return ApiError(400, message, reason)


def fingerprint(obj, salt):
    if not obj:
        return EMPTY_FINGERPRINT
    raw = hashlib.sha256((salt + json.dumps(obj, sort_keys=True)).encode()).digest()[:8]
    return base64.b64encode(raw).decode()


def check_labels(labels, field="resource.labels"):
    labels = labels or {}
    if len(labels) > 64:
        raise bad(f"Invalid value for field '{field}': too many labels ({len(labels)}); at most 64 are allowed.")
    for k, v in labels.items():
        if not LABEL_KEY_RE.fullmatch(k):
            raise bad(f"Invalid value for field '{field}': ''. Label key '{k}' violates format constraints. The key "
                      f"must start with a lowercase character, can only contain lowercase letters, numeric "
                      f"characters, underscores and dashes. The key can be at most 63 characters long.")
        if not LABEL_VALUE_RE.fullmatch(v):
            raise bad(f"Invalid value for field '{field}': ''. Label value '{v}' violates format constraints. The "
                      f"value can only contain lowercase letters, numeric characters, underscores and dashes. The "
                      f"value can be at most 63 characters long.")


def check_request_id(rid):
    try:
        u = uuid.UUID(rid)
    except ValueError:
        u = None
    if u is None or u.int == 0:
        raise bad(f"Invalid value for field 'requestId': '{rid}'. The request id must be a valid UUID (not the "
                  f"zero UUID).")


# --------------------------------------------------------------------------
# Auth: a service-account key made with openssl; RS256 checked in Python.

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class ServiceAccount:
    def __init__(self, directory, project, token_url):
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.key_file = os.path.join(directory, "service-account-key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", self.key_file], check=True, capture_output=True)
        os.chmod(self.key_file, 0o600)
        text = subprocess.run(["openssl", "rsa", "-in", self.key_file, "-noout", "-text", "-modulus"],
                              check=True, capture_output=True, text=True).stdout
        self.n = int(re.search(r"^Modulus=([0-9A-Fa-f]+)", text, re.M).group(1), 16)
        self.e = int(re.search(r"publicExponent: (\d+)", text).group(1))
        with open(self.key_file) as f:
            pem = f.read()
        self.key_id = secrets.token_hex(20)
        self.email = f"kiln-standin@{project}.iam.gserviceaccount.com"
        self.token_url = token_url
        self.client_id = str(10 ** 20 + secrets.randbelow(9 * 10 ** 20))
        self.credentials_file = os.path.join(directory, "service-account.json")
        info = {
            "type": "service_account", "project_id": project, "private_key_id": self.key_id, "private_key": pem,
            "client_email": self.email, "client_id": self.client_id,
            "auth_uri": token_url.rsplit("/", 1)[0] + "/auth", "token_uri": token_url,
            "auth_provider_x509_cert_url": token_url.rsplit("/", 1)[0] + "/certs",
            "client_x509_cert_url": token_url.rsplit("/", 1)[0] + "/certs/" + urllib.parse.quote(self.email),
            "universe_domain": "googleapis.com",
        }
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=2)

    def verify(self, jwt):
        """(header, claims) of a JWT signed by this key (RS256), or raise ValueError."""
        parts = jwt.split(".")
        if len(parts) != 3:
            raise ValueError("not a JWT")
        try:
            header, claims, sig = json.loads(b64url_decode(parts[0])), json.loads(b64url_decode(parts[1])), \
                b64url_decode(parts[2])
        except (ValueError, TypeError):
            raise ValueError("JWT parts are not base64url JSON")
        if header.get("alg") != "RS256":
            raise ValueError(f"alg {header.get('alg')!r} is not RS256")
        if header.get("kid") not in (None, self.key_id):
            raise ValueError("kid is not this key's private_key_id")
        k = (self.n.bit_length() + 7) // 8
        if len(sig) != k:
            raise ValueError("signature length")
        em = pow(int.from_bytes(sig, "big"), self.e, self.n).to_bytes(k, "big")
        t = SHA256_DIGEST_INFO + hashlib.sha256(f"{parts[0]}.{parts[1]}".encode()).digest()
        if not hmac.compare_digest(em, b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t):
            raise ValueError("signature does not verify")
        return header, claims


# --------------------------------------------------------------------------
# State

class State:
    def __init__(self, disc, project, base_url, operation_seconds):
        self.lock = threading.RLock()
        self.disc = disc
        self.project = project
        self.project_id = str(10 ** 11 + secrets.randbelow(9 * 10 ** 11))
        self.base = base_url  # http://127.0.0.1:PORT/compute/v1/
        self.operation_seconds = operation_seconds
        self.wait_cap = 120.0
        self.images = {}      # (project, name) -> record
        self.disks = {}       # (project, zone, name) -> record
        self.instances = {}   # (project, zone, name) -> record
        self.operations = {}  # (project, scope, name) -> record; scope "global" | "zones/z" | "regions/r"
        self.request_ids = {}  # (method id, project, requestId) -> operation key
        self.last_op_key = None
        self.metadata = {"items": [], "fingerprint": EMPTY_FINGERPRINT}
        self.fixed_ids = {}
        self.seq = 0
        self.force_429 = 0
        self.retry_after = 1  # None: no Retry-After header (GCE's quota errors usually have none)
        self.ratelimit_status = 429  # or 403, as GCE answers rate quota errors
        self.malform = 0
        self.fail_ops = []  # [{"code", "message", "http"}] for the next operations
        self.strict = True
        self.counts = collections.Counter()
        self.requests = collections.deque(maxlen=2000)
        self.request_seq = 0
        self.seed_catalogue()

    def fixed_id(self, key):
        if key not in self.fixed_ids:
            self.fixed_ids[key] = new_id()
        return self.fixed_ids[key]

    def next_seq(self):
        self.seq += 1
        return self.seq

    # ---- URLs ---------------------------------------------------------------

    def url(self, rel):
        return self.base + rel

    def parse_ref(self, value, kind, project=None, zone=None):
        """A reference to a resource, full URL or partial, as a dict; None
        when it is not a reference of that kind."""
        v = value or ""
        for prefix in (self.base,) + GOOGLE_HOSTS:
            if v.startswith(prefix):
                v = v[len(prefix):]
                break
        else:
            if v.startswith("/compute/v1/"):
                v = v[len("/compute/v1/"):]
        m = re.fullmatch(r"projects/([^/]+)/(.*)", v)
        if m:
            project, v = m.group(1), m.group(2)
        pats = {
            "image": r"global/images/(?P<name>[^/]+)",
            "family": r"global/images/family/(?P<name>[^/]+)",
            "snapshot": r"global/snapshots/(?P<name>[^/]+)",
            "network": r"global/networks/(?P<name>[^/]+)",
            "disk": r"zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)",
            "machineType": r"zones/(?P<zone>[^/]+)/machineTypes/(?P<name>[^/]+)",
            "diskType": r"zones/(?P<zone>[^/]+)/diskTypes/(?P<name>[^/]+)",
            "subnetwork": r"regions/(?P<region>[^/]+)/subnetworks/(?P<name>[^/]+)",
        }
        m = re.fullmatch(pats[kind], v)
        if not m or project is None:
            return None
        return {"project": project, **m.groupdict()}

    # ---- catalogue ------------------------------------------------------------

    def seed_catalogue(self):
        older = self.add_image("debian-cloud", {
            "name": "debian-12-bookworm-v20260910", "family": "debian-12",
            "description": "Debian, Debian GNU/Linux, 12 (bookworm), amd64 built on 20260910",
            "creationTimestamp": "2026-09-10T16:12:03.261-07:00", "diskSizeGb": "10",
            "archiveSizeBytes": "1247871040", "architecture": "X86_64",
            "licenses": [self.url("projects/debian-cloud/global/licenses/debian-12-bookworm")],
            "guestOsFeatures": [{"type": t} for t in ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")],
        })
        newer = self.add_image("debian-cloud", {
            "name": "debian-12-bookworm-v20261014", "family": "debian-12",
            "description": "Debian, Debian GNU/Linux, 12 (bookworm), amd64 built on 20261014",
            "creationTimestamp": "2026-10-14T17:40:51.832-07:00", "diskSizeGb": "10",
            "archiveSizeBytes": "1261914112", "architecture": "X86_64",
            "licenses": [self.url("projects/debian-cloud/global/licenses/debian-12-bookworm")],
            "guestOsFeatures": [{"type": t} for t in ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")],
        })
        older["deprecated"] = {"state": "DEPRECATED", "replacement": newer["selfLink"]}

    def add_image(self, project, fields):
        name = fields["name"]
        img = {
            "kind": "compute#image", "id": new_id(), "creationTimestamp": gce_time(), "name": name,
            "sourceType": "RAW", "status": "READY", "archiveSizeBytes": "0", "diskSizeGb": "10",
            "selfLink": self.url(f"projects/{project}/global/images/{name}"),
            "labelFingerprint": EMPTY_FINGERPRINT, "storageLocations": ["us"],
        }
        img.update({k: v for k, v in fields.items() if v is not None})
        img["labelFingerprint"] = fingerprint(img.get("labels"), "labels")
        if not img.get("labels"):
            img.pop("labels", None)
        img["_project"], img["_seq"] = project, self.next_seq()
        self.images[(project, name)] = img
        return img

    def zone_view(self, zone):
        region = ZONES[zone]
        return {"kind": "compute#zone", "id": self.fixed_id(("zone", zone)), "creationTimestamp": CATALOGUE_CREATED,
                "name": zone, "description": zone, "status": "UP", "region": self.url(
                    f"projects/{self.project}/regions/{region}"),
                "selfLink": self.url(f"projects/{self.project}/zones/{zone}"),
                "availableCpuPlatforms": ["Intel Broadwell", "Intel Cascade Lake", "AMD Milan"],
                "supportsPzs": False}

    def region_view(self, region):
        return {"kind": "compute#region", "id": self.fixed_id(("region", region)),
                "creationTimestamp": CATALOGUE_CREATED, "name": region, "description": region, "status": "UP",
                "zones": [self.url(f"projects/{self.project}/zones/{region}-{z}") for z in REGIONS[region]],
                "quotas": [{"metric": "CPUS", "limit": 24.0, "usage": float(sum(
                    self.machine_type(i["_zone"], i["_machine_type"])["guestCpus"]
                    for i in self.instances.values() if ZONES[i["_zone"]] == region))},
                    {"metric": "DISKS_TOTAL_GB", "limit": 4096.0, "usage": float(sum(
                        int(d["sizeGb"]) for d in self.disks.values() if ZONES[d["_zone"]] == region))},
                    {"metric": "INSTANCES", "limit": 24.0, "usage": float(sum(
                        1 for i in self.instances.values() if ZONES[i["_zone"]] == region))}],
                "selfLink": self.url(f"projects/{self.project}/regions/{region}"), "supportsPzs": False}

    def machine_type(self, zone, name):
        for n, cpus, mem, shared in MACHINE_TYPES:
            if n == name:
                return {"kind": "compute#machineType", "id": self.fixed_id(("mt", n)),
                        "creationTimestamp": CATALOGUE_CREATED, "name": n,
                        "description": f"{cpus} vCPUs, {mem / 1024:g} GB RAM", "guestCpus": cpus, "memoryMb": mem,
                        "imageSpaceGb": 0, "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168",
                        "zone": zone, "selfLink": self.url(f"projects/{self.project}/zones/{zone}/machineTypes/{n}"),
                        "isSharedCpu": shared, "architecture": "X86_64"}
        return None

    def project_view(self):
        return {"kind": "compute#project", "id": self.project_id, "creationTimestamp": CATALOGUE_CREATED,
                "name": self.project, "commonInstanceMetadata": {
                    "kind": "compute#metadata", "fingerprint": self.metadata["fingerprint"],
                    **({"items": [dict(i) for i in self.metadata["items"]]} if self.metadata["items"] else {})},
                "selfLink": self.url(f"projects/{self.project}"),
                "defaultServiceAccount": f"{self.project_id}-compute@developer.gserviceaccount.com",
                "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS", "defaultNetworkTier": "PREMIUM",
                "vmDnsSetting": "ZONAL_DEFAULT"}

    def network_view(self):
        return {"kind": "compute#network", "id": self.fixed_id("network"), "creationTimestamp": CATALOGUE_CREATED,
                "name": "default", "description": "Default network for the project",
                "selfLink": self.url(f"projects/{self.project}/global/networks/default"),
                "selfLinkWithId": self.url(f"projects/{self.project}/global/networks/{self.fixed_id('network')}"),
                "autoCreateSubnetworks": True,
                "subnetworks": [self.url(f"projects/{self.project}/regions/{r}/subnetworks/default")
                                for r in REGIONS],
                "routingConfig": {"routingMode": "REGIONAL"},
                "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL"}

    def subnetwork_view(self, region):
        cidr = {"us-central1": "10.128.0.0/20", "europe-west1": "10.132.0.0/20"}[region]
        return {"kind": "compute#subnetwork", "id": self.fixed_id(("subnet", region)),
                "creationTimestamp": CATALOGUE_CREATED, "name": "default",
                "network": self.url(f"projects/{self.project}/global/networks/default"),
                "ipCidrRange": cidr, "gatewayAddress": cidr.rsplit(".", 1)[0] + ".1",
                "region": self.url(f"projects/{self.project}/regions/{region}"),
                "selfLink": self.url(f"projects/{self.project}/regions/{region}/subnetworks/default"),
                "privateIpGoogleAccess": False, "fingerprint": EMPTY_FINGERPRINT, "purpose": "PRIVATE",
                "stackType": "IPV4_ONLY"}

    # ---- time: operations finish `operation_seconds` after they start --------

    def new_op(self, op_type, project, scope, target_link, target_id, who, effect=None, warnings=None):
        t0 = time.time()
        name = f"operation-{int(t0 * 1000)}-{secrets.token_hex(7)[:13]}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        op = {"kind": "compute#operation", "id": new_id(), "name": name, "operationType": op_type,
              "targetLink": target_link, "targetId": target_id, "user": who, "insertTime": gce_time(t0),
              "selfLink": self.url(f"projects/{project}/{scope}/operations/{name}"),
              "_t0": t0, "_due": t0 + self.operation_seconds, "_done": False, "_effect": effect,
              "_fail": self.fail_ops.pop(0) if self.fail_ops else None, "_scope": scope}
        if scope.startswith("zones/"):
            op["zone"] = self.url(f"projects/{project}/{scope}")
        elif scope.startswith("regions/"):
            op["region"] = self.url(f"projects/{project}/{scope}")
        if warnings:
            op["warnings"] = warnings
        self.operations[(project, scope, name)] = op
        self.last_op_key = (project, scope, name)
        self.advance()  # with operation_seconds = 0 it is DONE at once
        return op

    def advance(self):
        now = time.time()
        due = sorted((op for op in self.operations.values() if not op["_done"] and op["_due"] <= now),
                     key=lambda o: o["_due"])
        for op in due:
            op["_done"] = True
            effect = op.pop("_effect", None)
            if effect:
                effect(op["_fail"] is not None)

    def op_view(self, op):
        now = time.time()
        v = {k: val for k, val in op.items() if not k.startswith("_")}
        running_at = op["_t0"] + (op["_due"] - op["_t0"]) / 4
        if op["_done"]:
            v.update(status="DONE", progress=100, startTime=gce_time(running_at), endTime=gce_time(op["_due"]))
            fail = op["_fail"]
            if fail:
                v["error"] = {"errors": [{"code": fail.get("code", "INTERNAL_ERROR"),
                                          "message": fail.get("message", "standin: injected operation failure")}]}
                v["httpErrorStatusCode"] = int(fail.get("http", 400))
                v["httpErrorMessage"] = fail.get("http_message", "BAD REQUEST")
        elif now >= running_at:
            v.update(status="RUNNING", progress=50, startTime=gce_time(running_at))
        else:
            v.update(status="PENDING", progress=0)
        return v

    # ---- views ----------------------------------------------------------------

    @staticmethod
    def view(rec):
        return json.loads(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}))

    def image_by(self, project, ref):
        img = self.images.get((project, ref))
        if img is None and ref.isdigit():
            img = next((i for (p, _), i in self.images.items() if p == project and i["id"] == ref), None)
        if img is None:
            raise not_found(f"projects/{project}/global/images/{ref}")
        return img

    def readable_project(self, project):
        return project == self.project or project in PUBLIC_IMAGE_PROJECTS

    def resolve_image(self, ref_text, field):
        ref = self.parse_ref(ref_text, "family", self.project) or self.parse_ref(ref_text, "image", self.project)
        if ref is None:
            raise bad(f"Invalid value for field '{field}': '{ref_text}'. The URL is malformed.")
        if not self.readable_project(ref["project"]):
            raise ApiError(403, f"Required 'compute.images.useReadOnly' permission for "
                                f"'projects/{ref['project']}/global/images/{ref['name']}'")
        if "/family/" in ref_text or ref_text.startswith("global/images/family/"):
            img = self.family_latest(ref["project"], ref["name"])
        else:
            img = self.image_by(ref["project"], ref["name"])
        return img

    def family_latest(self, project, family):
        cands = [i for (p, _), i in self.images.items() if p == project and i.get("family") == family
                 and i["status"] == "READY"
                 and (i.get("deprecated") or {}).get("state", "ACTIVE") == "ACTIVE"]
        if not cands:
            raise not_found(f"projects/{project}/global/images/family/{family}")
        return max(cands, key=lambda i: (parse_rfc3339(i["creationTimestamp"]) or datetime.min.replace(
            tzinfo=timezone.utc), i["_seq"]))

    def check_zone(self, zone):
        if zone not in ZONES:
            raise bad(f"Invalid value for field 'zone': '{zone}'. Unknown zone.")

    def disk_by(self, project, zone, name):
        d = self.disks.get((project, zone, name))
        if d is None:
            raise not_found(f"projects/{project}/zones/{zone}/disks/{name}")
        return d

    def instance_by(self, project, zone, name):
        i = self.instances.get((project, zone, name))
        if i is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return i

    # ---- lists ------------------------------------------------------------------

    def list_response(self, c, kind, item_ref, views, rel_self, default_order="name"):
        q = c.q
        tree = None
        if q.get("filter"):
            try:
                tree = parse_filter(q["filter"], self.disc, item_ref)
            except FilterError as e:
                raise bad(f"Invalid value for field 'filter': '{q['filter']}'. Invalid list filter expression: {e}.")
        views = [v for v in views if matches(tree, v)]
        order = (q.get("orderBy") or "").strip()
        if order in ("", "name", "name asc"):
            views.sort(key=lambda v: v.get("name", ""))
        elif order == "creationTimestamp desc":
            views.sort(key=lambda v: v.get("name", ""))
            views.sort(key=lambda v: parse_rfc3339(v.get("creationTimestamp", "")) or datetime.min.replace(
                tzinfo=timezone.utc), reverse=True)
        else:
            raise bad(f"Invalid value for field 'orderBy': '{order}'. Only 'name' and 'creationTimestamp desc' "
                      f"are supported.")
        n = int(q.get("maxResults") or 500)
        if n > 500:
            raise bad(f"Invalid value for field 'maxResults': '{n}'. Must be less than or equal to 500")
        n = n or 500
        query_key = hashlib.sha256(f"{q.get('filter', '')}|{order}|{rel_self}".encode()).hexdigest()[:12]
        start = 0
        if q.get("pageToken"):
            try:
                tok = json.loads(b64url_decode(q["pageToken"]))
                start, key = int(tok["o"]), tok["q"]
            except (ValueError, KeyError, TypeError):
                raise bad(f"Invalid value for field 'pageToken': '{q['pageToken']}'.")
            if key != query_key:
                raise bad(f"Invalid value for field 'pageToken': '{q['pageToken']}'. The page token belongs to "
                          f"another query (filter or orderBy changed).")
        page = views[start:start + n]
        out = {"kind": kind, "id": rel_self, "selfLink": self.url(rel_self)}
        if page:
            out["items"] = page
        if start + n < len(views):
            out["nextPageToken"] = b64url(json.dumps({"o": start + n, "q": query_key}).encode())
        return out


# --------------------------------------------------------------------------
# Operations. Each takes the request context and returns (status, body).
# They run with the state lock held.

class Ctx:
    def __init__(self, s, method, params, query, body, who):
        self.s, self.m, self.p, self.q, self.b, self.who = s, method, params, query, body, who
        self.project = params.get("project")


def op_out(c, op):
    return 200, c.s.op_view(op)


# ---- images

def h_images_list(c):
    s = c.s
    views = [s.view(i) for (p, _), i in s.images.items() if p == c.project]
    return 200, s.list_response(c, "compute#imageList", "Image", views, f"projects/{c.project}/global/images")


def h_images_get(c):
    return 200, c.s.view(c.s.image_by(c.project, c.p["image"]))


def h_images_get_from_family(c):
    return 200, c.s.view(c.s.family_latest(c.project, c.p["family"]))


def h_images_insert(c):
    s, b, proj = c.s, c.b, c.project
    name = b["name"]
    check_labels(b.get("labels"))
    if b.get("family") and not NAME_RE.fullmatch(b["family"]):
        raise bad(f"Invalid value for field 'resource.family': '{b['family']}'. Must be a match of regex "
                  f"'[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?'")
    if (proj, name) in s.images:
        raise ApiError(409, f"The resource 'projects/{proj}/global/images/{name}' already exists")
    sources = [k for k in ("sourceDisk", "sourceImage", "sourceSnapshot") if b.get(k)]
    if (b.get("rawDisk") or {}).get("source"):
        sources.append("rawDisk.source")
    if len(sources) != 1:
        raise bad("Invalid value for field 'resource': exactly one of 'rawDisk.source', 'sourceDisk', "
                  f"'sourceImage' or 'sourceSnapshot' must be given (got {', '.join(sources) or 'none'}).")
    fields = {k: b[k] for k in ("description", "family", "labels", "licenses", "guestOsFeatures", "architecture",
                                "storageLocations", "shieldedInstanceInitialState") if b.get(k) not in (None, "", [])}
    fields.update(name=name, status="PENDING", creationTimestamp=gce_time())
    if b.get("sourceDisk"):
        ref = s.parse_ref(b["sourceDisk"], "disk", proj)
        if ref is None:
            raise bad(f"Invalid value for field 'resource.sourceDisk': '{b['sourceDisk']}'. The URL is malformed.")
        if ref["project"] != proj:
            raise ApiError(403, f"Required 'compute.disks.use' permission for "
                                f"'projects/{ref['project']}/zones/{ref['zone']}/disks/{ref['name']}'")
        s.check_zone(ref["zone"])
        disk = s.disk_by(proj, ref["zone"], ref["name"])
        if c.q.get("forceCreate") != "true":
            for user in disk.get("users", []):
                inst = s.instances.get((proj, ref["zone"], user.rsplit("/", 1)[-1]))
                if inst and inst["status"] not in ("TERMINATED", "STOPPED"):
                    raise ApiError(400, f"The disk resource 'projects/{proj}/zones/{ref['zone']}/disks/"
                                        f"{ref['name']}' is already being used by 'projects/{proj}/zones/"
                                        f"{ref['zone']}/instances/{inst['name']}'",
                                   "resourceInUseByAnotherResource")
        fields.update(sourceDisk=disk["selfLink"], sourceDiskId=disk["id"], diskSizeGb=disk["sizeGb"],
                      archiveSizeBytes=str(int(disk["sizeGb"]) * 131072 * 1024))
        for k in ("licenses", "guestOsFeatures", "architecture"):
            if k in disk and k not in fields:
                fields[k] = json.loads(json.dumps(disk[k]))
    elif b.get("sourceImage"):
        src = s.resolve_image(b["sourceImage"], "resource.sourceImage")
        fields.update(sourceImage=src["selfLink"], sourceImageId=src["id"], diskSizeGb=src["diskSizeGb"],
                      archiveSizeBytes=src.get("archiveSizeBytes", "0"))
        for k in ("licenses", "guestOsFeatures", "architecture"):
            if k in src and k not in fields:
                fields[k] = json.loads(json.dumps(src[k]))
    elif b.get("sourceSnapshot"):
        ref = s.parse_ref(b["sourceSnapshot"], "snapshot", proj)
        raise not_found(f"projects/{ref['project'] if ref else proj}/global/snapshots/"
                        f"{ref['name'] if ref else b['sourceSnapshot']}")
    else:
        src = b["rawDisk"]["source"]
        if not re.match(r"(https://storage\.googleapis\.com/|https://storage\.cloud\.google\.com/|gs://)", src):
            raise bad(f"Invalid value for field 'resource.rawDisk.source': '{src}'. The URL must point to Cloud "
                      f"Storage.")
        fields.update(rawDisk={k: v for k, v in b["rawDisk"].items() if v is not None}, diskSizeGb="10",
                      archiveSizeBytes="1073741824")
    img = s.add_image(proj, fields)

    def done(failed, img=img):
        img["status"] = "FAILED" if failed else "READY"

    return op_out(c, s.new_op("insert", proj, "global", img["selfLink"], img["id"], c.who, done))


def h_images_delete(c):
    s = c.s
    img = s.image_by(c.project, c.p["image"])
    before = img["status"]
    img["status"] = "DELETING"

    def done(failed, img=img, before=before):
        if failed:
            img["status"] = before
        else:
            s.images.pop((img["_project"], img["name"]), None)

    return op_out(c, s.new_op("delete", c.project, "global", img["selfLink"], img["id"], c.who, done))


def h_images_deprecate(c):
    s, b = c.s, c.b
    img = s.image_by(c.project, c.p["image"])
    for k in ("deprecated", "obsolete", "deleted"):
        if b.get(k) and parse_rfc3339(b[k]) is None:
            raise bad(f"Invalid value for field 'deprecationStatus.{k}': '{b[k]}'. Must be an RFC 3339 timestamp.")
    if b.get("replacement") and s.parse_ref(b["replacement"], "image", c.project) is None:
        raise bad(f"Invalid value for field 'deprecationStatus.replacement': '{b['replacement']}'. The URL is "
                  f"malformed or not an image.")
    state = b.get("state") or "ACTIVE"
    status = {k: b[k] for k in ("state", "replacement", "deprecated", "obsolete", "deleted") if b.get(k)}
    if state == "ACTIVE" and not any(b.get(k) for k in ("deprecated", "obsolete", "deleted")):
        img.pop("deprecated", None)
    else:
        status["state"] = state
        img["deprecated"] = status
    return op_out(c, s.new_op("deprecate", c.project, "global", img["selfLink"], img["id"], c.who))


# What images.patch may change, as the method's description says ("Only the
# following fields can be modified: family, description, deprecation status").
PATCHABLE_IMAGE_FIELDS = ("family", "description", "deprecated")


def h_images_patch(c):
    s, b = c.s, c.b
    img = s.image_by(c.project, c.p["image"])
    if b.get("name") not in (None, img["name"]):
        raise bad(f"Invalid value for field 'resource.name': '{b['name']}'. The name of an image cannot be changed.")
    others = sorted(k for k, v in b.items() if v is not None and k != "name" and k not in PATCHABLE_IMAGE_FIELDS)
    if others:
        raise bad(f"Invalid value for field 'resource': {', '.join(others)} cannot be patched; only "
                  f"{', '.join(PATCHABLE_IMAGE_FIELDS)} can be modified.")
    if "family" in b and b["family"] is not None:
        if b["family"] and not NAME_RE.fullmatch(b["family"]):
            raise bad(f"Invalid value for field 'resource.family': '{b['family']}'. Must be a match of regex "
                      f"'[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?'")
        if b["family"]:
            img["family"] = b["family"]
        else:
            img.pop("family", None)
    if b.get("description") is not None:
        img["description"] = b["description"]
    if b.get("deprecated") is not None:
        dep = {k: v for k, v in b["deprecated"].items() if v}
        if dep.get("state", "ACTIVE") == "ACTIVE" and not any(dep.get(k) for k in ("deprecated", "obsolete", "deleted")):
            img.pop("deprecated", None)
        else:
            img["deprecated"] = dep
    return op_out(c, s.new_op("patch", c.project, "global", img["selfLink"], img["id"], c.who))


def h_images_set_labels(c):
    s, b = c.s, c.b
    img = s.image_by(c.project, c.p["resource"])
    if b.get("labelFingerprint") != img["labelFingerprint"]:
        raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed",
                       "conditionNotMet")
    labels = b.get("labels") or {}
    check_labels(labels, "labels")
    if labels:
        img["labels"] = dict(labels)
    else:
        img.pop("labels", None)
    img["labelFingerprint"] = fingerprint(labels, "labels")
    return op_out(c, s.new_op("setLabels", c.project, "global", img["selfLink"], img["id"], c.who))


# ---- operations

def _op(c, scope):
    op = c.s.operations.get((c.project, scope, c.p["operation"]))
    if op is None:
        raise not_found(f"projects/{c.project}/{scope}/operations/{c.p['operation']}")
    return op


def _scope(c):
    if "zone" in c.p:
        c.s.check_zone(c.p["zone"])
        return f"zones/{c.p['zone']}"
    if "region" in c.p:
        if c.p["region"] not in REGIONS:
            raise bad(f"Invalid value for field 'region': '{c.p['region']}'. Unknown region.")
        return f"regions/{c.p['region']}"
    return "global"


def h_operations_get(c):
    return op_out(c, _op(c, _scope(c)))


def h_operations_delete(c):
    op = _op(c, _scope(c))
    del c.s.operations[(c.project, op["_scope"], op["name"])]
    return 204, None


def h_operations_list(c):
    scope = _scope(c)
    views = [c.s.op_view(o) for (p, sc, _), o in c.s.operations.items() if p == c.project and sc == scope]
    return 200, c.s.list_response(c, "compute#operationList", "Operation", views,
                                  f"projects/{c.project}/{scope}/operations")


# ---- zones, regions, machine types, projects, networks

def h_zones_list(c):
    return 200, c.s.list_response(c, "compute#zoneList", "Zone", [c.s.zone_view(z) for z in ZONES],
                                  f"projects/{c.project}/zones")


def h_zones_get(c):
    if c.p["zone"] not in ZONES:
        raise not_found(f"projects/{c.project}/zones/{c.p['zone']}")
    return 200, c.s.zone_view(c.p["zone"])


def h_regions_list(c):
    return 200, c.s.list_response(c, "compute#regionList", "Region", [c.s.region_view(r) for r in REGIONS],
                                  f"projects/{c.project}/regions")


def h_regions_get(c):
    if c.p["region"] not in REGIONS:
        raise not_found(f"projects/{c.project}/regions/{c.p['region']}")
    return 200, c.s.region_view(c.p["region"])


def h_machine_types_get(c):
    c.s.check_zone(c.p["zone"])
    mt = c.s.machine_type(c.p["zone"], c.p["machineType"])
    if mt is None:
        raise not_found(f"projects/{c.project}/zones/{c.p['zone']}/machineTypes/{c.p['machineType']}")
    return 200, mt


def h_machine_types_list(c):
    c.s.check_zone(c.p["zone"])
    views = [c.s.machine_type(c.p["zone"], m[0]) for m in MACHINE_TYPES]
    return 200, c.s.list_response(c, "compute#machineTypeList", "MachineType", views,
                                  f"projects/{c.project}/zones/{c.p['zone']}/machineTypes")


def h_projects_get(c):
    return 200, c.s.project_view()


def h_projects_set_metadata(c):
    s, b = c.s, c.b
    if b.get("fingerprint", s.metadata["fingerprint"]) != s.metadata["fingerprint"]:
        raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.", "conditionNotMet")
    items = [{"key": i["key"], "value": i.get("value", "")} for i in b.get("items") or []]
    s.metadata = {"items": items, "fingerprint": fingerprint(items, "metadata") if items else EMPTY_FINGERPRINT}
    return op_out(c, s.new_op("setMetadata", c.project, "global", s.url(f"projects/{c.project}"), s.project_id,
                              c.who))


def h_networks_get(c):
    if c.p["network"] != "default":
        raise not_found(f"projects/{c.project}/global/networks/{c.p['network']}")
    return 200, c.s.network_view()


def h_networks_list(c):
    return 200, c.s.list_response(c, "compute#networkList", "Network", [c.s.network_view()],
                                  f"projects/{c.project}/global/networks")


def h_subnetworks_get(c):
    if c.p["region"] not in REGIONS or c.p["subnetwork"] != "default":
        raise not_found(f"projects/{c.project}/regions/{c.p['region']}/subnetworks/{c.p['subnetwork']}")
    return 200, c.s.subnetwork_view(c.p["region"])


def h_subnetworks_list(c):
    if c.p["region"] not in REGIONS:
        raise bad(f"Invalid value for field 'region': '{c.p['region']}'. Unknown region.")
    return 200, c.s.list_response(c, "compute#subnetworkList", "Subnetwork", [c.s.subnetwork_view(c.p["region"])],
                                  f"projects/{c.project}/regions/{c.p['region']}/subnetworks")


# ---- disks

def _new_disk(s, proj, zone, name, size_gb, disk_type, image=None, description=None, labels=None):
    d = {"kind": "compute#disk", "id": new_id(), "creationTimestamp": gce_time(), "name": name,
         "sizeGb": str(size_gb), "zone": s.url(f"projects/{proj}/zones/{zone}"), "status": "CREATING",
         "selfLink": s.url(f"projects/{proj}/zones/{zone}/disks/{name}"),
         "type": s.url(f"projects/{proj}/zones/{zone}/diskTypes/{disk_type}"),
         "labelFingerprint": fingerprint(labels, "labels"), "physicalBlockSizeBytes": "4096",
         "_zone": zone, "_project": proj}
    if description:
        d["description"] = description
    if labels:
        d["labels"] = dict(labels)
    if image is not None:
        d.update(sourceImage=image["selfLink"], sourceImageId=image["id"])
        for k in ("licenses", "guestOsFeatures", "architecture"):
            if k in image:
                d[k] = json.loads(json.dumps(image[k]))
    s.disks[(proj, zone, name)] = d
    return d


def _disk_type(s, text, zone, field):
    if not text:
        return "pd-standard"
    ref = s.parse_ref(text, "diskType", s.project, zone)
    name = ref["name"] if ref else (text if "/" not in text else None)
    if ref and ref["zone"] != zone:
        raise bad(f"Invalid value for field '{field}': '{text}'. The disk type must be in zone '{zone}'.")
    if name not in DISK_TYPES:
        raise bad(f"Invalid value for field '{field}': '{text}'. Disk type not found or not supported by the "
                  f"stand-in ({', '.join(DISK_TYPES)}).")
    return name


def h_disks_get(c):
    c.s.check_zone(c.p["zone"])
    return 200, c.s.view(c.s.disk_by(c.project, c.p["zone"], c.p["disk"]))


def h_disks_list(c):
    c.s.check_zone(c.p["zone"])
    views = [c.s.view(d) for (p, z, _), d in c.s.disks.items() if p == c.project and z == c.p["zone"]]
    return 200, c.s.list_response(c, "compute#diskList", "Disk", views,
                                  f"projects/{c.project}/zones/{c.p['zone']}/disks")


def h_disks_insert(c):
    s, b, zone = c.s, c.b, c.p["zone"]
    s.check_zone(zone)
    name = b["name"]
    if (c.project, zone, name) in s.disks:
        raise ApiError(409, f"The resource 'projects/{c.project}/zones/{zone}/disks/{name}' already exists")
    check_labels(b.get("labels"))
    image = s.resolve_image(b["sourceImage"], "resource.sourceImage") if b.get("sourceImage") else None
    size = int(b.get("sizeGb") or (image["diskSizeGb"] if image else 500))
    if image and size < int(image["diskSizeGb"]):
        raise bad(f"Requested disk size cannot be smaller than the image size ({image['diskSizeGb']} GB)")
    d = _new_disk(s, c.project, zone, name, size, _disk_type(s, b.get("type"), zone, "resource.type"), image,
                  b.get("description"), b.get("labels"))

    def done(failed, d=d):
        if failed:
            s.disks.pop((c.project, zone, d["name"]), None)
        else:
            d["status"] = "READY"

    return op_out(c, s.new_op("insert", c.project, f"zones/{zone}", d["selfLink"], d["id"], c.who, done))


def h_disks_delete(c):
    s, zone = c.s, c.p["zone"]
    s.check_zone(zone)
    d = s.disk_by(c.project, zone, c.p["disk"])
    if d.get("users"):
        raise ApiError(400, f"The disk resource 'projects/{c.project}/zones/{zone}/disks/{d['name']}' is already "
                            f"being used by '{d['users'][0].split('/compute/v1/', 1)[-1]}'",
                       "resourceInUseByAnotherResource")
    d["status"] = "DELETING"

    def done(failed, d=d):
        if failed:
            d["status"] = "READY"
        else:
            s.disks.pop((c.project, zone, d["name"]), None)

    return op_out(c, s.new_op("delete", c.project, f"zones/{zone}", d["selfLink"], d["id"], c.who, done))


# ---- instances

def h_instances_insert(c):
    s, b, zone, proj = c.s, c.b, c.p["zone"], c.project
    s.check_zone(zone)
    name = b["name"]
    if (proj, zone, name) in s.instances:
        raise ApiError(409, f"The resource 'projects/{proj}/zones/{zone}/instances/{name}' already exists")
    if c.q.get("sourceInstanceTemplate") or c.q.get("sourceMachineImage"):
        raise ApiError(501, "standin: instances.insert from an instance template or machine image is not "
                            "implemented")
    check_labels(b.get("labels"))
    mt_ref = s.parse_ref(b.get("machineType"), "machineType", proj, zone)
    mt = s.machine_type(zone, mt_ref["name"]) if mt_ref and mt_ref["zone"] == zone else None
    if mt is None:
        raise bad(f"Invalid value for field 'resource.machineType': '{b.get('machineType')}'. Machine type with "
                  f"name '{(mt_ref or {}).get('name', b.get('machineType'))}' does not exist in zone '{zone}'.")
    disks_in = b.get("disks") or []
    if sum(1 for d in disks_in if d.get("boot")) != 1:
        raise bad("Invalid value for field 'resource.disks': ''. Exactly one boot disk must be specified.")
    nics_in = b.get("networkInterfaces") or []
    if not nics_in:
        raise bad("Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is "
                  "required.")
    warnings = []
    new_disks, attached = [], []
    for i, ad in enumerate(disks_in):
        field = f"resource.disks[{i}]"
        if ad.get("type") == "SCRATCH":
            raise ApiError(501, "standin: SCRATCH (local SSD) disks are not implemented")
        ip = ad.get("initializeParams")
        if ip and ad.get("source"):
            raise bad(f"Invalid value for field '{field}': give either source or initializeParams, not both.")
        if ip:
            if ip.get("sourceSnapshot"):
                ref = s.parse_ref(ip["sourceSnapshot"], "snapshot", proj)
                raise not_found(f"projects/{proj}/global/snapshots/{ref['name'] if ref else ip['sourceSnapshot']}")
            image = None
            if ip.get("sourceImage"):
                image = s.resolve_image(ip["sourceImage"], f"{field}.initializeParams.sourceImage")
                if image["status"] != "READY":
                    raise ApiError(400, f"The resource '{image['selfLink'].split('/compute/v1/', 1)[-1]}' is not "
                                        f"ready", "resourceNotReady")
                dep = (image.get("deprecated") or {}).get("state", "ACTIVE")
                if dep in ("OBSOLETE", "DELETED"):
                    raise bad(f"The resource '{image['selfLink'].split('/compute/v1/', 1)[-1]}' is {dep.lower()}"
                              f" and cannot be used.")
                if dep == "DEPRECATED":
                    warnings.append({"code": "DEPRECATED_RESOURCE_USED",
                                     "message": f"The resource '{image['selfLink']}' is deprecated. A suggested "
                                                f"replacement is '{image['deprecated'].get('replacement', '')}'.",
                                     "data": [{"key": "resource_name", "value": image["selfLink"]}]})
            elif ad.get("boot"):
                raise bad(f"Invalid value for field '{field}.initializeParams': ''. A boot disk needs a "
                          f"sourceImage.")
            dname = ip.get("diskName") or (name if ad.get("boot") else f"{name}-{i}")
            if (proj, zone, dname) in s.disks or any(d[0] == dname for d in new_disks):
                raise ApiError(409, f"The resource 'projects/{proj}/zones/{zone}/disks/{dname}' already exists")
            size = int(ip.get("diskSizeGb") or (image["diskSizeGb"] if image else 10))
            if image and size < int(image["diskSizeGb"]):
                raise bad(f"Invalid value for field '{field}.initializeParams.diskSizeGb': '{size}'. Requested "
                          f"disk size cannot be smaller than the image size ({image['diskSizeGb']} GB)")
            dtype = _disk_type(s, ip.get("diskType"), zone, f"{field}.initializeParams.diskType")
            check_labels(ip.get("labels"), f"{field}.initializeParams.labels")
            new_disks.append((dname, size, dtype, image, ip.get("description"), ip.get("labels"), ad))
        elif ad.get("source"):
            ref = s.parse_ref(ad["source"], "disk", proj, zone)
            if ref is None or ref["zone"] != zone:
                raise bad(f"Invalid value for field '{field}.source': '{ad['source']}'. The disk must be a disk "
                          f"in zone '{zone}'.")
            d = s.disk_by(proj, zone, ref["name"])
            if d.get("users") and ad.get("mode", "READ_WRITE") == "READ_WRITE":
                raise ApiError(400, f"The disk resource 'projects/{proj}/zones/{zone}/disks/{d['name']}' is "
                                    f"already being used by '{d['users'][0].split('/compute/v1/', 1)[-1]}'",
                               "resourceInUseByAnotherResource")
            attached.append((d, ad))
        else:
            raise bad(f"Invalid value for field '{field}': ''. Either source or initializeParams is required.")
    nics = []
    region = ZONES[zone]
    for i, ni in enumerate(nics_in):
        field = f"resource.networkInterfaces[{i}]"
        net = ni.get("network") or "global/networks/default"
        ref = s.parse_ref(net, "network", proj)
        if ref is None or ref["name"] != "default" or ref["project"] != proj:
            raise bad(f"Invalid value for field '{field}.network': '{net}'. The stand-in has network 'default' "
                      f"only.")
        if ni.get("subnetwork"):
            sref = s.parse_ref(ni["subnetwork"], "subnetwork", proj)
            if sref is None or sref["name"] != "default" or sref["region"] != region:
                raise bad(f"Invalid value for field '{field}.subnetwork': '{ni['subnetwork']}'. The subnetwork "
                          f"must be 'default' in region '{region}'.")
        n = len(s.instances) + 2
        nic = {"kind": "compute#networkInterface", "name": f"nic{i}",
               "network": s.url(f"projects/{proj}/global/networks/default"),
               "subnetwork": s.url(f"projects/{proj}/regions/{region}/subnetworks/default"),
               "networkIP": ni.get("networkIP") or s.subnetwork_view(region)["ipCidrRange"].rsplit(".", 2)[0]
               + f".{n // 250}.{n % 250 + 2}",
               "fingerprint": fingerprint({"nic": i, "n": n}, "nic"), "stackType": "IPV4_ONLY"}
        acs = []
        for ac in ni.get("accessConfigs") or []:
            if ac is None:
                continue
            acs.append({"kind": "compute#accessConfig", "type": ac.get("type") or "ONE_TO_ONE_NAT",
                        "name": ac.get("name") or "External NAT",
                        "natIP": ac.get("natIP") or f"203.0.113.{n % 250 + 2}",
                        "networkTier": ac.get("networkTier") or "PREMIUM"})
        if acs:
            nic["accessConfigs"] = acs
        nics.append(nic)
    metadata_items = [{"key": it["key"], "value": it.get("value", "")}
                      for it in (b.get("metadata") or {}).get("items") or []]
    now = gce_time()
    inst_url = s.url(f"projects/{proj}/zones/{zone}/instances/{name}")
    disks_view = []
    made = []
    for idx, (dname, size, dtype, image, desc, labels, ad) in enumerate(new_disks):
        d = _new_disk(s, proj, zone, dname, size, dtype, image, desc, labels)
        made.append(d)
        d["users"], d["lastAttachTimestamp"] = [inst_url], now
    for d, ad in attached:
        d.setdefault("users", []).append(inst_url)
        d["lastAttachTimestamp"] = now
    order = [(d, ad) for d, (_, _, _, _, _, _, ad) in zip(made, new_disks)] + attached
    order.sort(key=lambda x: 0 if x[1].get("boot") else 1)
    for idx, (d, ad) in enumerate(order):
        av = {"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": ad.get("mode") or "READ_WRITE",
              "source": d["selfLink"], "deviceName": ad.get("deviceName") or (
                  "persistent-disk-0" if ad.get("boot") else d["name"]),
              "index": idx, "boot": bool(ad.get("boot")), "autoDelete": bool(ad.get("autoDelete")),
              "interface": ad.get("interface") or "SCSI", "diskSizeGb": d["sizeGb"]}
        for k in ("licenses", "guestOsFeatures", "architecture"):
            if k in d:
                av[k] = json.loads(json.dumps(d[k]))
        disks_view.append(av)
    sched = b.get("scheduling") or {}
    inst = {"kind": "compute#instance", "id": new_id(), "creationTimestamp": now, "name": name,
            "tags": {"fingerprint": fingerprint((b.get("tags") or {}).get("items"), "tags"),
                     **({"items": list(b["tags"]["items"])} if (b.get("tags") or {}).get("items") else {})},
            "machineType": mt["selfLink"], "status": "PROVISIONING",
            "zone": s.url(f"projects/{proj}/zones/{zone}"), "canIpForward": bool(b.get("canIpForward")),
            "networkInterfaces": nics, "disks": disks_view,
            "metadata": {"kind": "compute#metadata",
                         "fingerprint": fingerprint(metadata_items, "metadata") if metadata_items
                         else EMPTY_FINGERPRINT, **({"items": metadata_items} if metadata_items else {})},
            "serviceAccounts": [{"email": (sa.get("email") if sa.get("email") != "default" else
                                           f"{s.project_id}-compute@developer.gserviceaccount.com"),
                                 "scopes": list(sa.get("scopes") or [])}
                                for sa in b.get("serviceAccounts") or [] if sa.get("email")],
            "selfLink": inst_url,
            "scheduling": {"onHostMaintenance": sched.get("onHostMaintenance") or "MIGRATE",
                           "automaticRestart": sched.get("automaticRestart", True) is not False,
                           "preemptible": bool(sched.get("preemptible")),
                           "provisioningModel": sched.get("provisioningModel") or "STANDARD"},
            "cpuPlatform": "Intel Broadwell", "labelFingerprint": fingerprint(b.get("labels"), "labels"),
            "startRestricted": False, "deletionProtection": bool(b.get("deletionProtection")),
            "fingerprint": fingerprint({"i": name, "t": now}, "instance"),
            "_zone": zone, "_project": proj, "_machine_type": mt["name"], "_serial": []}
    if not inst["serviceAccounts"]:
        del inst["serviceAccounts"]
    if b.get("description"):
        inst["description"] = b["description"]
    if b.get("labels"):
        inst["labels"] = dict(b["labels"])
    s.instances[(proj, zone, name)] = inst

    def done(failed, inst=inst, made=made):
        if failed:
            s.instances.pop((proj, zone, name), None)
            for d in made:
                s.disks.pop((proj, zone, d["name"]), None)
            return
        inst["status"] = "RUNNING"
        inst["lastStartTimestamp"] = gce_time()
        for d in made:
            d["status"] = "READY"
        _boot_log(inst)

    return op_out(c, s.new_op("insert", proj, f"zones/{zone}", inst_url, inst["id"], c.who, done, warnings))


def _boot_log(inst):
    t = utc_now()
    inst["_serial"].append(
        f"SeaBIOS (version 1.8.2-google)\r\nBooting from Hard Disk 0...\r\n[    0.000000] Linux version 6.1.0-26-cloud-"
        f"amd64 (kiln gce stand-in)\r\n{t} {inst['name']} google_guest_agent[412]: GCE Agent Started.\r\n"
        f"{t} {inst['name']} systemd[1]: Reached target multi-user.target.\r\n")


def h_instances_get(c):
    c.s.check_zone(c.p["zone"])
    return 200, c.s.view(c.s.instance_by(c.project, c.p["zone"], c.p["instance"]))


def h_instances_list(c):
    c.s.check_zone(c.p["zone"])
    views = [c.s.view(i) for (p, z, _), i in c.s.instances.items() if p == c.project and z == c.p["zone"]]
    return 200, c.s.list_response(c, "compute#instanceList", "Instance", views,
                                  f"projects/{c.project}/zones/{c.p['zone']}/instances")


def h_instances_delete(c):
    s, zone = c.s, c.p["zone"]
    s.check_zone(zone)
    inst = s.instance_by(c.project, zone, c.p["instance"])
    if inst.get("deletionProtection"):
        raise bad(f"Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'.",
                  "resourceInUseByAnotherResource")
    before = inst["status"]
    inst["status"] = "STOPPING"

    def done(failed, inst=inst, before=before):
        if failed:
            inst["status"] = before
            return
        s.instances.pop((c.project, zone, inst["name"]), None)
        for ad in inst["disks"]:
            key = (c.project, zone, ad["source"].rsplit("/", 1)[-1])
            d = s.disks.get(key)
            if d is None:
                continue
            d["users"] = [u for u in d.get("users", []) if u != inst["selfLink"]]
            d["lastDetachTimestamp"] = gce_time()
            if not d["users"]:
                del d["users"]
            if ad.get("autoDelete"):
                s.disks.pop(key, None)

    return op_out(c, s.new_op("delete", c.project, f"zones/{zone}", inst["selfLink"], inst["id"], c.who, done))


def h_instances_stop(c):
    s, zone = c.s, c.p["zone"]
    s.check_zone(zone)
    inst = s.instance_by(c.project, zone, c.p["instance"])
    if inst["status"] not in ("TERMINATED", "STOPPED"):
        inst["status"] = "STOPPING"

    def done(failed, inst=inst):
        if not failed:
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = gce_time()

    return op_out(c, s.new_op("stop", c.project, f"zones/{zone}", inst["selfLink"], inst["id"], c.who, done))


def h_instances_start(c):
    s, zone = c.s, c.p["zone"]
    s.check_zone(zone)
    inst = s.instance_by(c.project, zone, c.p["instance"])
    if inst["status"] == "TERMINATED":
        inst["status"] = "STAGING"

    def done(failed, inst=inst):
        if not failed:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = gce_time()
            _boot_log(inst)

    return op_out(c, s.new_op("start", c.project, f"zones/{zone}", inst["selfLink"], inst["id"], c.who, done))


def h_instances_serial(c):
    s, zone = c.s, c.p["zone"]
    s.check_zone(zone)
    inst = s.instance_by(c.project, zone, c.p["instance"])
    port = int(c.q.get("port") or 1)
    text = "".join(inst["_serial"]) if port == 1 else ""
    data = text.encode()
    start = int(c.q.get("start") or 0)
    if start < 0:
        start = max(len(data) + start, 0)
    start = min(start, len(data))
    return 200, {"kind": "compute#serialPortOutput", "contents": data[start:].decode(errors="replace"),
                 "start": str(start), "next": str(len(data)),
                 "selfLink": s.url(f"projects/{c.project}/zones/{zone}/instances/{inst['name']}/serialPort")}


def h_instances_set_metadata(c):
    s, b, zone = c.s, c.b, c.p["zone"]
    s.check_zone(zone)
    inst = s.instance_by(c.project, zone, c.p["instance"])
    if b.get("fingerprint") != inst["metadata"]["fingerprint"]:
        raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.", "conditionNotMet")
    items = [{"key": i["key"], "value": i.get("value", "")} for i in b.get("items") or []]
    inst["metadata"] = {"kind": "compute#metadata",
                        "fingerprint": fingerprint(items, "metadata") if items else EMPTY_FINGERPRINT,
                        **({"items": items} if items else {})}
    return op_out(c, s.new_op("setMetadata", c.project, f"zones/{zone}", inst["selfLink"], inst["id"], c.who))


HANDLERS = {
    "compute.images.list": h_images_list,
    "compute.images.get": h_images_get,
    "compute.images.getFromFamily": h_images_get_from_family,
    "compute.images.insert": h_images_insert,
    "compute.images.delete": h_images_delete,
    "compute.images.deprecate": h_images_deprecate,
    "compute.images.setLabels": h_images_set_labels,
    "compute.images.patch": h_images_patch,
    "compute.globalOperations.get": h_operations_get,
    "compute.globalOperations.wait": h_operations_get,
    "compute.globalOperations.list": h_operations_list,
    "compute.globalOperations.delete": h_operations_delete,
    "compute.zoneOperations.get": h_operations_get,
    "compute.zoneOperations.wait": h_operations_get,
    "compute.zoneOperations.list": h_operations_list,
    "compute.zoneOperations.delete": h_operations_delete,
    "compute.regionOperations.get": h_operations_get,
    "compute.regionOperations.wait": h_operations_get,
    "compute.zones.list": h_zones_list,
    "compute.zones.get": h_zones_get,
    "compute.regions.list": h_regions_list,
    "compute.regions.get": h_regions_get,
    "compute.machineTypes.get": h_machine_types_get,
    "compute.machineTypes.list": h_machine_types_list,
    "compute.projects.get": h_projects_get,
    "compute.projects.setCommonInstanceMetadata": h_projects_set_metadata,
    "compute.networks.get": h_networks_get,
    "compute.networks.list": h_networks_list,
    "compute.subnetworks.get": h_subnetworks_get,
    "compute.subnetworks.list": h_subnetworks_list,
    "compute.disks.get": h_disks_get,
    "compute.disks.list": h_disks_list,
    "compute.disks.insert": h_disks_insert,
    "compute.disks.delete": h_disks_delete,
    "compute.instances.insert": h_instances_insert,
    "compute.instances.get": h_instances_get,
    "compute.instances.list": h_instances_list,
    "compute.instances.delete": h_instances_delete,
    "compute.instances.stop": h_instances_stop,
    "compute.instances.start": h_instances_start,
    "compute.instances.getSerialPortOutput": h_instances_serial,
    "compute.instances.setMetadata": h_instances_set_metadata,
}
WAIT_METHODS = {"compute.globalOperations.wait", "compute.zoneOperations.wait", "compute.regionOperations.wait"}


def malform(body):
    """Break a response body so that the Discovery document rejects it."""
    if isinstance(body, dict):
        body["standinMalformed"] = True
        if "id" in body:
            body["id"] = 12345
    return body


# --------------------------------------------------------------------------
# HTTP

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-gce-standin/1"
    state: State = None
    disc: Discovery = None
    sa: ServiceAccount = None
    tokens: dict = {}  # token -> {"scopes": set, "who": str, "exp": float | None}
    jwt_cache: dict = {}

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to each answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # one line per request instead
        pass

    def _send(self, status, body, headers=None, pretty=False, raw=None, ctype="application/json; charset=UTF-8"):
        if raw is not None:
            data = raw
        elif body is None:
            data = b""
        else:
            data = (json.dumps(body, indent=2) + "\n" if pretty else json.dumps(body, separators=(",", ":"))).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _read_raw(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        raw = self._read_raw()
        if url.path.startswith("/_standin/") or url.path == "/_standin":
            return self.control(url, raw)
        if url.path == "/token":
            return self.token_endpoint(raw)
        if url.path.startswith("/computeMetadata/"):
            return self.metadata_server(url)
        return self.api(url, raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    # ---- auth ------------------------------------------------------------------

    def principal(self, query):
        """(who, scopes) for the request's credentials, or ApiError 401."""
        auth = self.headers.get("Authorization")
        token = None
        if auth:
            kind, _, value = auth.partition(" ")
            if kind.lower() != "bearer" or not value.strip():
                raise self.unauthenticated()
            token = value.strip()
        elif query.get("access_token") or query.get("oauth_token"):
            token = query.get("access_token") or query.get("oauth_token")
        if token is None:
            if query.get("key"):
                raise ApiError(401, "API keys are not supported by this API. Expected OAuth2 access token or other "
                                    "authentication credentials that assert a principal. See "
                                    "https://cloud.google.com/docs/authentication", "required")
            raise ApiError(401, "Request is missing required authentication credential. Expected OAuth 2 access "
                                "token, login cookie or other valid authentication credential. See "
                                "https://developers.google.com/identity/sign-in/web/devconsole-project.", "required",
                           headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        info = self.tokens.get(token)
        if info is None and token.count(".") == 2:
            info = self.self_signed(token)
        if info is None or (info["exp"] is not None and info["exp"] < time.time()):
            raise self.unauthenticated()
        return info["who"], info["scopes"]

    @staticmethod
    def unauthenticated():
        return ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                             "cookie or other valid authentication credential. See "
                             "https://developers.google.com/identity/sign-in/web/devconsole-project.", "authError",
                        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                                     'error="invalid_token"'})

    def self_signed(self, token):
        """A self-signed JWT used directly as the bearer token (what Google's
        auth libraries do for service accounts when they skip the token
        exchange): signed by the key, iss = sub = client_email, and an `aud`
        of the API or a `scope` claim."""
        cached = self.jwt_cache.get(token)
        if cached is not None:
            return cached or None
        try:
            _, claims = self.sa.verify(token)
        except ValueError:
            self.jwt_cache[token] = False
            return None
        s = self.state
        auds = {"https://compute.googleapis.com/", "https://compute.googleapis.com", s.base, s.base.rstrip("/"),
                s.base.split("/compute/v1/")[0] + "/"}
        ok = (claims.get("iss") == self.sa.email and claims.get("sub", self.sa.email) == self.sa.email
              and isinstance(claims.get("exp"), (int, float)) and isinstance(claims.get("iat"), (int, float))
              and claims["exp"] - claims["iat"] <= 3600 and (claims.get("aud") in auds or claims.get("scope")))
        info = None
        if ok:
            scopes = set(str(claims.get("scope") or "").split()) or {SCOPE_PREFIX + "cloud-platform"}
            info = {"who": self.sa.email, "scopes": scopes, "exp": float(claims["exp"])}
        self.jwt_cache[token] = info or False
        return info

    def metadata_server(self, url):
        """The GCE/GKE metadata server's token endpoints (what Workload
        Identity serves to a Pod), for clients pointed here with
        GCE_METADATA_HOST: `Metadata-Flavor: Google` is required, as there."""
        s = self.state
        path = url.path
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, None, raw=b"Missing Metadata-Flavor:Google header.\n", ctype="text/html; charset=UTF-8")
            log(f"{self.command} {path} -> 403 (no Metadata-Flavor header)")
            return
        if self.command != "GET":
            self._send(405, None, raw=b"Method not allowed\n", ctype="text/plain")
            return
        headers = {"Metadata-Flavor": "Google"}
        prefix = "/computeMetadata/v1/instance/service-accounts/default/"
        if path == prefix + "token":
            q = dict(urllib.parse.parse_qsl(url.query))
            scopes = set((q.get("scopes") or "").replace(",", " ").split()) or {SCOPE_PREFIX + "cloud-platform"}
            token = "ya29.d.standin-" + secrets.token_urlsafe(32)
            self.tokens[token] = {"who": self.metadata_email(), "scopes": scopes, "exp": time.time() + 3599}
            with s.lock:
                s.counts["metadata_tokens_issued"] += 1
            self._send(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}, headers)
        elif path == prefix + "email":
            self._send(200, None, headers, raw=self.metadata_email().encode(), ctype="application/text")
        elif path == "/computeMetadata/v1/project/project-id":
            self._send(200, None, headers, raw=s.project.encode(), ctype="application/text")
        else:
            self._send(404, None, headers, raw=b"Not Found\n", ctype="text/html; charset=UTF-8")
        log(f"{self.command} {path} (metadata server)")

    def metadata_email(self):
        """The Google service account Workload Identity maps the Pod to: the
        project's default compute account here."""
        return f"{self.state.project_id}-compute@developer.gserviceaccount.com"

    def token_endpoint(self, raw):
        """POST /token: OAuth2 JWT-bearer grant (RFC 7523), as Google's
        oauth2.googleapis.com/token answers it."""
        t0 = time.time()

        def oauth_error(status, err, desc):
            self._send(status, {"error": err, "error_description": desc})
            log(f"{self.command} /token -> {status} {err}: {desc}")

        if self.command != "POST":
            return oauth_error(405, "invalid_request", "POST only")
        form = dict(urllib.parse.parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        try:
            _, claims = self.sa.verify(form.get("assertion", ""))
        except ValueError as e:
            return oauth_error(400, "invalid_grant", f"Invalid JWT Signature. ({e})")
        now = time.time()
        if claims.get("iss") != self.sa.email:
            return oauth_error(400, "invalid_grant", "Invalid email or User ID")
        if claims.get("aud") != self.sa.token_url:
            return oauth_error(400, "invalid_grant", "Invalid JWT: Failed audience check. The expected audience is "
                                                     f"{self.sa.token_url}")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)) or exp <= now \
                or exp - iat > 3600 or iat > now + 300:
            return oauth_error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                                     "and in a reasonable timeframe. Check your iat and exp values in "
                                                     "the JWT claim.")
        scopes = str(claims.get("scope") or "").split()
        if not scopes or any(not sc.startswith(SCOPE_PREFIX) for sc in scopes):
            return oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.c.standin-" + secrets.token_urlsafe(32)
        self.tokens[token] = {"who": self.sa.email, "scopes": set(scopes), "exp": now + 3599}
        with self.state.lock:
            self.state.counts["tokens_issued"] += 1
        self._send(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        log(f"POST /token -> 200 scopes={' '.join(scopes)} {1000 * (time.time() - t0):.1f}ms")

    # ---- the API -----------------------------------------------------------------

    def api(self, url, raw):
        t0 = time.time()
        s, disc = self.state, self.disc
        method, status, out, headers, note = None, 500, None, {}, ""
        pretty = True
        body = None
        try:
            method, found = disc.match(self.command, url.path)
            if method is None:
                s.counts["unknown_paths"] += 1
                if found:
                    raise ApiError(404, f"The requested URL {url.path} was not found on this server: the Discovery "
                                        f"document has {', '.join(found)} for it, not {self.command}.", "notFound")
                raise ApiError(404, f"The requested URL {url.path} was not found on this server.", "notFound")
            params = found
            pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
            query_problems, q = disc.check_query(method, pairs)
            pretty = q.get("prettyPrint", "true") != "false"
            who, scopes = self.principal(q)
            if not scopes & set(method.scopes):
                s.counts["insufficient_scopes"] += 1
                raise ApiError(403, "Request had insufficient authentication scopes.", "insufficientPermissions",
                               headers={"WWW-Authenticate": f'Bearer realm="https://accounts.google.com/", '
                                                            f'error="insufficient_scope", '
                                                            f'scope="{" ".join(method.scopes)}"'})
            with s.lock:
                if s.force_429 > 0:
                    s.force_429 -= 1
                    s.counts["forced_429"] += 1
                    raise ApiError(s.ratelimit_status, f"Quota exceeded for quota metric 'Queries' and limit "
                                                       f"'Queries per minute' of service 'compute.googleapis.com' "
                                                       f"for consumer 'project_number:{s.project_id}'.",
                                   "rateLimitExceeded", domain="usageLimits",
                                   headers={} if s.retry_after is None else {"Retry-After": s.retry_after})
            problems = query_problems + disc.check_path(method, params)
            if method.request:
                if raw.strip():
                    ctype = (self.headers.get("Content-Type") or "").lower()
                    if "json" not in ctype:
                        raise bad(f"Invalid JSON payload received: Content-Type must be application/json, "
                                  f"not {ctype or 'none'}.")
                    try:
                        body = json.loads(raw)
                    except ValueError as e:
                        raise bad(f"Invalid JSON payload received. {e}.")
                else:
                    body = {}
                if not isinstance(body, dict):
                    raise bad("Invalid JSON payload received. The request body must be a JSON object.")
                problems += disc.check_body(method.request, body, "request", method.id)
            elif raw.strip() not in (b"", b"{}"):
                problems.append(Problem("", f"Invalid JSON payload received. {method.id} takes no request body."))
            alt = q.get("alt", "json")
            if alt != "json":
                raise bad(f"standin: alt={alt} is not served; only alt=json.")
            fields_tree = None
            if q.get("fields") and method.response:
                try:
                    fields_tree = parse_fields(q["fields"])
                except FilterError as e:
                    raise bad(f"Invalid field selection {q['fields']}: {e}")
                bad_fields = check_fields(fields_tree, disc, {"$ref": method.response})
                if bad_fields:
                    raise bad(f"Invalid field selection {', '.join(bad_fields)}")
            if problems:
                s.counts["request_validation_failures"] += 1
                if any("Unknown name" in p.message for p in problems):
                    s.counts["request_undeclared_fields"] += 1
                raise ApiError(400, problems[0].message, problems[0].reason, errors=[
                    {"message": p.message, "domain": "global", "reason": p.reason} for p in problems])
            if q.get("requestId"):
                check_request_id(q["requestId"])
            handler = HANDLERS.get(method.id)
            if handler is None:
                s.counts["not_implemented"] += 1
                raise ApiError(501, f"standin: {method.id} ({method.verb} {method.flat_path}) is in the Discovery "
                                    f"document but not implemented by the stand-in.")
            if method.id in WAIT_METHODS:
                self.wait_for_operation(method, params)
            with s.lock:
                s.advance()
                self.check_project(method, params, body)
                ctx = Ctx(s, method, params, q, body or {}, who)
                rid_key = (method.id, params.get("project"), q.get("requestId")) if q.get("requestId") else None
                if rid_key and rid_key in s.request_ids and s.request_ids[rid_key] in s.operations:
                    status, out = 200, s.op_view(s.operations[s.request_ids[rid_key]])
                    note = " (requestId seen before: same operation)"
                else:
                    s.last_op_key = None
                    status, out = handler(ctx)
                    if rid_key and s.last_op_key:
                        s.request_ids[rid_key] = s.last_op_key
                if out is not None and method.response and s.strict:
                    self.check_response(method, out, url)
                if out is not None and s.malform > 0:
                    s.malform -= 1
                    out = malform(out)
                    note += " (malformed on purpose)"
                    self.check_response(method, out, url)
            if fields_tree is not None and out is not None:
                out = apply_fields(out, fields_tree)
        except ApiError as e:
            status, out, headers = e.code, e.body(), e.headers
            note = f" ({e.message[:300]})"
            if e.code == 401:
                s.counts["auth_failures"] += 1
        except Exception as e:  # a stand-in bug: say so loudly
            import traceback
            traceback.print_exc()
            status, out = 500, ApiError(500, f"standin crashed: {type(e).__name__}: {e}", "backendError").body()
            s.counts["crashes"] += 1
        ms = 1000 * (time.time() - t0)
        mid = method.id if method else "-"
        # Recorded before the answer goes out, so that a client that asks
        # /_standin/requests right after its call finds the call there.
        with s.lock:
            s.counts["requests"] += 1
            s.request_seq += 1
            s.requests.append({"seq": s.request_seq, "time": utc_now(), "verb": self.command, "path": url.path,
                               "query": url.query, "method": mid, "status": status, "ms": round(ms, 2),
                               "body": raw[:4096].decode(errors="replace") if raw else None})
        self._send(status, out, headers, pretty=pretty)
        log(f"{self.command} {self.path} -> {status} {mid} {ms:.1f}ms{note}")

    def check_response(self, method, out, url):
        """The stand-in's own answer against the document: a mismatch is a
        stand-in bug, answered 500 and logged."""
        s = self.state
        problems = self.disc.check_body(method.response, out, "response", method.id, "response")
        if problems:
            s.counts["response_validation_failures"] += 1
            log(f"RESPONSE INVALID {self.command} {url.path}: " + " | ".join(p.message for p in problems))
            raise ApiError(500, f"standin bug: the response of {method.id} does not match {method.response}: "
                                + "; ".join(p.message for p in problems[:5]), "backendError")

    def wait_for_operation(self, method, params):
        """`wait`: block (without the lock) until the operation is due, at most
        wait_cap seconds, as GCE's wait does (it may return before DONE)."""
        s = self.state
        scope = ("zones/" + params["zone"]) if "zone" in params else (
            "regions/" + params["region"]) if "region" in params else "global"
        with s.lock:
            op = s.operations.get((params.get("project"), scope, params.get("operation")))
            delay = 0 if op is None or op["_done"] else min(op["_due"] - time.time(), s.wait_cap)
        if delay > 0:
            time.sleep(delay + 0.001)

    def check_project(self, method, params, body):
        s = self.state
        proj = params.get("project")
        if proj is None or proj == s.project:
            return
        if proj in PUBLIC_IMAGE_PROJECTS and method.id in PUBLIC_READ_METHODS:
            return
        if proj in PUBLIC_IMAGE_PROJECTS or proj in FOREIGN_PROJECTS:
            action = {"insert": "create"}.get(method.name, method.name)
            target = urllib.parse.unquote(self.path.split("?", 1)[0])[len(self.disc.service_path):]
            if method.name == "insert" and isinstance(body, dict) and body.get("name"):
                target += "/" + body["name"]
            raise ApiError(403, f"Required 'compute.{method.resource}.{action}' permission for '{target}'",
                           "forbidden")
        raise not_found(f"projects/{proj}")

    # ---- control -------------------------------------------------------------------

    def control(self, url, raw):
        """/_standin/ endpoints (no token, not validated): tests steer the stand-in.

        GET  /_standin/health                  {"ok": true}
        GET  /_standin/state                   everything held, and the counters
        GET  /_standin/requests?since=N        API requests recorded after seq N (method id, status, body)
        POST /_standin/images {...}            seed an image: name (required), project (default: the
             test project; or a public image project), family, labels, creationTimestamp (any RFC 3339),
             status (READY|PENDING|FAILED|DELETING), deprecated ({"state": ..., "replacement", "deprecated",
             "obsolete", "deleted"} or just the state), description, diskSizeGb, architecture,
             guestOsFeatures, licenses, storageLocations. The result is checked against the Image schema.
        POST /_standin/ratelimit {"count": N, "retry_after": S, "status": 429}   the next N API requests
             answer 429 (or 403 rateLimitExceeded, as GCE answers rate quota errors); retry_after null: no
             Retry-After header
        POST /_standin/fail-operations {"count": N, "code": C, "message": M, "http": 400}
             the next N operations end DONE with that error (no effect; a new image becomes FAILED)
        POST /_standin/malform {"count": N}    break the next N API response bodies (to show the check)
        POST /_standin/config {"operation_seconds": X, "wait_cap_seconds": Y, "strict": bool}
        POST /_standin/reset                   forget images, disks, instances and operations of the test
             project (the public catalogue stays)
        """
        s = self.state
        path = url.path.rstrip("/")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            return self._send(400, {"error": f"control body is not JSON: {e}"})
        if not isinstance(body, dict):
            return self._send(400, {"error": "control body must be a JSON object"})
        q = dict(urllib.parse.parse_qsl(url.query))
        with s.lock:
            s.advance()
            verb = self.command
            if path == "/_standin/health" and verb == "GET":
                out = {"ok": True}
            elif path == "/_standin/state" and verb == "GET":
                out = {"project": s.project, "images": [s.view(i) | {"project": i["_project"]}
                                                        for i in s.images.values()],
                       "disks": [s.view(d) for d in s.disks.values()],
                       "instances": [s.view(i) for i in s.instances.values()],
                       "operations": [s.op_view(o) for o in s.operations.values()],
                       "project_metadata": s.metadata, "counts": dict(s.counts), "forced_429": s.force_429,
                       "fail_operations": len(s.fail_ops), "malform": s.malform,
                       "operation_seconds": s.operation_seconds, "strict": s.strict}
            elif path == "/_standin/requests" and verb == "GET":
                since = int(q.get("since", "0"))
                out = {"requests": [r for r in s.requests if r["seq"] > since], "last": s.request_seq}
            elif path == "/_standin/ratelimit" and verb == "POST":
                s.force_429 = int(body.get("count", 1))
                ra = body.get("retry_after", 1)
                s.retry_after = None if ra is None else int(ra)
                s.ratelimit_status = int(body.get("status", 429))
                if s.ratelimit_status not in (403, 429):
                    return self._send(400, {"error": "status must be 429 or 403"})
                out = {"forced_429": s.force_429, "retry_after": s.retry_after, "status": s.ratelimit_status}
            elif path == "/_standin/fail-operations" and verb == "POST":
                n = int(body.get("count", 1))
                s.fail_ops = [{k: body[k] for k in ("code", "message", "http", "http_message") if k in body}
                              for _ in range(n)]
                out = {"fail_operations": n}
            elif path == "/_standin/malform" and verb == "POST":
                s.malform = int(body.get("count", 1))
                out = {"malform": s.malform}
            elif path == "/_standin/config" and verb == "POST":
                if "operation_seconds" in body:
                    s.operation_seconds = float(body["operation_seconds"])
                if "wait_cap_seconds" in body:
                    s.wait_cap = float(body["wait_cap_seconds"])
                if "strict" in body:
                    s.strict = bool(body["strict"])
                out = {"operation_seconds": s.operation_seconds, "wait_cap_seconds": s.wait_cap,
                       "strict": s.strict}
            elif path == "/_standin/reset" and verb == "POST":
                for store in (s.images, s.disks, s.instances, s.operations):
                    for k in [k for k in store if k[0] == s.project]:
                        del store[k]
                s.request_ids.clear()
                s.fail_ops, s.force_429, s.malform = [], 0, 0
                s.retry_after, s.ratelimit_status = 1, 429
                out = {"reset": True}
            elif path == "/_standin/images" and verb == "POST":
                try:
                    out = self.seed_image(body)
                except ApiError as e:
                    return self._send(e.code, e.body())
            else:
                return self._send(404, {"error": f"no control endpoint {verb} {path}"})
        self._send(200, out)
        log(f"control {self.command} {path} {json.dumps(body)[:300]}")

    def seed_image(self, b):
        s = self.state
        proj = b.get("project") or s.project
        if proj != s.project and proj not in PUBLIC_IMAGE_PROJECTS:
            raise bad(f"project must be {s.project} or a public image project")
        name = b.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise bad(f"name {name!r} is missing or not a valid image name")
        if (proj, name) in s.images:
            raise ApiError(409, f"The resource 'projects/{proj}/global/images/{name}' already exists")
        check_labels(b.get("labels"), "labels")
        if b.get("creationTimestamp") and parse_rfc3339(b["creationTimestamp"]) is None:
            raise bad(f"creationTimestamp {b['creationTimestamp']!r} is not RFC 3339")
        dep = b.get("deprecated")
        if isinstance(dep, str):
            dep = {"state": dep}
        fields = {k: b.get(k) for k in ("family", "labels", "creationTimestamp", "status", "description",
                                        "diskSizeGb", "architecture", "guestOsFeatures", "licenses",
                                        "storageLocations", "archiveSizeBytes")}
        fields["name"] = name
        if fields["diskSizeGb"] is not None:
            fields["diskSizeGb"] = str(fields["diskSizeGb"])
        if dep:
            fields["deprecated"] = dep
        img = s.add_image(proj, fields)
        problems = self.disc.check_body("Image", s.view(img), "response", None, "image")
        if problems:
            del s.images[(proj, name)]
            raise bad("seeded image does not match the Image schema: " + "; ".join(p.message for p in problems))
        return s.view(img)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--discovery", required=True, help="compute-api.json (setup.sh puts it in the cache)")
    ap.add_argument("--port", type=int, default=0, help="0: a free port (printed in the JSON line)")
    ap.add_argument("--project", default="kiln-test")
    ap.add_argument("--state-dir", required=True, help="where the service-account key file is written")
    ap.add_argument("--token", default="", help="the access token to accept (default: random)")
    ap.add_argument("--operation-seconds", type=float, default=0.5)
    ap.add_argument("--ratelimit-429", type=int, default=0, help="answer the first N API requests with 429")
    ap.add_argument("--no-strict", action="store_true", help="do not check responses against the document")
    a = ap.parse_args()

    t0 = time.time()
    disc = Discovery(a.discovery)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    httpd.daemon_threads = True
    root = f"http://127.0.0.1:{httpd.server_address[1]}"
    api_url = root + disc.service_path
    state = State(disc, a.project, api_url, a.operation_seconds)
    state.force_429 = a.ratelimit_429
    state.strict = not a.no_strict
    sa = ServiceAccount(a.state_dir, a.project, root + "/token")
    token = a.token or "ya29.standin-" + secrets.token_urlsafe(32)
    ro_token = "ya29.standin-ro-" + secrets.token_urlsafe(24)
    Handler.state, Handler.disc, Handler.sa = state, disc, sa
    Handler.tokens = {token: {"who": sa.email, "scopes": {SCOPE_PREFIX + "cloud-platform"}, "exp": None},
                      ro_token: {"who": sa.email, "scopes": {SCOPE_PREFIX + "compute.readonly"}, "exp": None}}
    Handler.jwt_cache = {}
    # Check the catalogue against the document before serving anything.
    for img in state.images.values():
        problems = disc.check_body("Image", state.view(img), "response", None, "image")
        if problems:
            sys.exit(f"standin: catalogue image {img['name']} is invalid: {problems}")
    print(json.dumps({
        "port": httpd.server_address[1], "api_url": api_url, "root_url": root + "/", "token": token,
        "readonly_token": ro_token, "project": a.project, "zones": sorted(ZONES), "regions": sorted(REGIONS),
        "credentials_file": sa.credentials_file, "service_account": sa.email, "token_url": sa.token_url,
        "control_url": root + "/_standin", "metadata_host": root.split("://", 1)[1],
        "discovery_revision": disc.revision,
        "operation_seconds": a.operation_seconds,
    }), flush=True)
    log(f"listening on {root}, Discovery revision {disc.revision}: {len(disc.methods)} methods, "
        f"{len(HANDLERS)} implemented; project {a.project}; started in {time.time() - t0:.2f}s")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
