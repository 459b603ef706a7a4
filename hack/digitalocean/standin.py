#!/usr/bin/env python3
"""Stateful, in-memory stand-in for the part of the DigitalOcean API that
Packer's `digitalocean` builder (1.6.6) and kiln use.

It is meant to run behind Prism (`prism proxy <spec> <this> --errors`), which
validates every request and response against DigitalOcean's OpenAPI spec; see
README.md beside this file. `run.py` starts both. Standard library only.

On top of Prism, this server checks that request bodies carry no property the
spec does not declare, and that its own responses carry none either (the spec
seldom sets `required` or `additionalProperties: false`, so a misspelt optional
field would otherwise pass): a request fails with 422, a response with 500.

Control endpoints (not in the spec, so only on this server's own port, never
through Prism) live under /_standin/: see `Handler.control`.
"""

import argparse
import base64
import binascii
import hashlib
import json
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def now_iso(ts=None):
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    sys.stderr.write(f"{now_iso()} standin: {msg}\n")
    sys.stderr.flush()


class ApiError(Exception):
    """An error answered in DigitalOcean's shape: {"id", "message", "request_id"}."""

    def __init__(self, status, ident, message, headers=None):
        super().__init__(message)
        self.status, self.ident, self.message, self.headers = status, ident, message, headers or {}


def not_found():
    return ApiError(404, "not_found", "The resource you were accessing could not be found.")


def unprocessable(message):
    return ApiError(422, "unprocessable_entity", message)


# --------------------------------------------------------------------------
# Catalogue: what an account sees before it creates anything. The region slugs
# are all in the spec's image `regions` enum.

REGIONS = [
    ("nyc1", "New York 1"), ("nyc3", "New York 3"), ("sfo3", "San Francisco 3"),
    ("ams3", "Amsterdam 3"), ("fra1", "Frankfurt 1"), ("lon1", "London 1"),
    ("sgp1", "Singapore 1"), ("tor1", "Toronto 1"), ("blr1", "Bangalore 1"), ("syd1", "Sydney 1"),
]
REGION_FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]

# slug, memory MiB, vcpus, disk GiB, transfer TB, monthly, hourly, description
SIZES = [
    ("s-1vcpu-512mb-10gb", 512, 1, 10, 0.5, 4.0, 0.00595, "Basic"),
    ("s-1vcpu-1gb", 1024, 1, 25, 1.0, 6.0, 0.00893, "Basic"),
    ("s-1vcpu-2gb", 2048, 1, 50, 2.0, 12.0, 0.01786, "Basic"),
    ("s-2vcpu-2gb", 2048, 2, 60, 3.0, 18.0, 0.02679, "Basic"),
    ("s-2vcpu-4gb", 4096, 2, 80, 4.0, 24.0, 0.03571, "Basic"),
    ("s-4vcpu-8gb", 8192, 4, 160, 5.0, 48.0, 0.07143, "Basic"),
]

# Public distribution images: id, slug, name, distribution, min disk GiB
DISTRIBUTIONS = [
    (1001, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu", 7),
    (1002, "ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu", 7),
    (1003, "debian-12-x64", "12 x64", "Debian", 7),
    (1004, "fedora-40-x64", "40 x64", "Fedora", 7),
    (1005, "rockylinux-9-x64", "9 x64", "Rocky Linux", 7),
]
CATALOGUE_CREATED = "2024-05-01T00:00:00Z"
# The image `status` enum of the spec.
IMAGE_STATUSES = ["NEW", "available", "pending", "deleted", "retired"]


# --------------------------------------------------------------------------
# The spec: operation lookup and the undeclared-property check.

class Spec:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.doc = json.load(f)
        self.ops = {}
        for p, item in self.doc["paths"].items():
            for method, op in item.items():
                if isinstance(op, dict) and "operationId" in op:
                    self.ops[op["operationId"]] = op

    def deref(self, node):
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external $ref {ref!r}: the spec must be bundled")
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 50:
                raise ValueError(f"$ref loop at {ref}")
        return node

    def request_schema(self, op_id):
        op = self.ops[op_id]
        body = self.deref(op.get("requestBody") or {})
        return self.deref(body.get("content", {}).get("application/json", {}).get("schema"))

    def response_schema(self, op_id, status):
        responses = self.ops[op_id]["responses"]
        resp = responses.get(str(status)) or responses.get("default")
        if resp is None:
            return None
        resp = self.deref(resp)
        return self.deref(resp.get("content", {}).get("application/json", {}).get("schema"))

    def _branches(self, schema):
        """The schema and every allOf/anyOf/oneOf branch below it, dereferenced."""
        out, todo = [], [schema]
        while todo:
            s = self.deref(todo.pop())
            if not isinstance(s, dict):
                continue
            out.append(s)
            for key in ("allOf", "anyOf", "oneOf"):
                todo.extend(s.get(key, []))
        return out

    def undeclared(self, schema, value, where="", allowed=()):
        """Paths in `value` whose property no branch of `schema` declares.

        A union over allOf/anyOf/oneOf branches: lenient where the spec is
        ambiguous, but a misspelt or invented property is always caught."""
        if schema is None:
            return []
        branches = self._branches(schema)
        problems = []
        if isinstance(value, dict):
            if any(b.get("additionalProperties") not in (None, False) for b in branches):
                return []
            declared = {}
            for b in branches:
                for name, sub in (b.get("properties") or {}).items():
                    declared.setdefault(name, []).append(sub)
            if not declared:
                return []  # a free-form object
            for name, sub_value in value.items():
                path = f"{where}.{name}" if where else name
                if name in declared:
                    problems += self.undeclared({"allOf": declared[name]}, sub_value, path, allowed)
                elif path not in allowed:
                    problems.append(path)
        elif isinstance(value, list):
            items = [b["items"] for b in branches if "items" in b]
            if items:
                for item in value:
                    problems += self.undeclared({"allOf": items}, item, f"{where}[]", allowed)
        return sorted(set(problems))


# Where this stand-in answers what DigitalOcean's API answers although the
# spec's schema does not declare it (see README.md, "Spec defects").
RESPONSE_ALLOWED = {
    # The schema says the action object itself; the response's description and
    # example, godo and the real API wrap it in {"action": ...}.
    "imageActions_post": {"action"},
    "imageActions_get": {"action"},
    # The spec spells the key "imgages"; the API and godo use "images".
    "tags_create": {"tag.resources.images"},
    "tags_get": {"tag.resources.images"},
    "tags_list": {"tags[].resources.images"},
}


# --------------------------------------------------------------------------
# State

class State:
    def __init__(self, public_url, action_seconds, droplet_ipv4):
        self.lock = threading.RLock()
        self.public_url = public_url.rstrip("/")
        self.action_seconds = action_seconds
        self.droplet_ipv4 = droplet_ipv4
        self.next_ids = {"droplet": 3000001, "image": 7000001, "action": 9000001, "key": 5000001}
        self.droplets, self.images, self.actions, self.keys, self.tags = {}, {}, {}, {}, {}
        for image_id, slug, name, distro, min_disk in DISTRIBUTIONS:
            self.images[image_id] = {
                "id": image_id, "name": name, "type": "base", "distribution": distro, "slug": slug,
                "public": True, "regions": [r for r, _ in REGIONS], "created_at": CATALOGUE_CREATED,
                "min_disk_size": min_disk, "size_gigabytes": 2.36, "tags": [], "status": "available",
            }
        # Rate limiting, per DigitalOcean: 5,000 requests an hour.
        self.rl_limit = 5000
        self.rl_window_start = time.time()
        self.rl_used = 0
        self.force_429 = 0
        self.retry_after = 1
        self.malform = 0
        self.counts = {"requests": 0, "strict_request_failures": 0, "strict_response_failures": 0}

    def new_id(self, kind):
        with self.lock:
            n = self.next_ids[kind]
            self.next_ids[kind] += 1
            return n

    # ---- views (what the API answers) --------------------------------------

    def region_view(self, slug):
        name = dict(REGIONS)[slug]
        return {"name": name, "slug": slug, "features": list(REGION_FEATURES), "available": True,
                "sizes": [s[0] for s in SIZES]}

    @staticmethod
    def size_view(slug):
        for s, mem, cpu, disk, transfer, monthly, hourly, desc in SIZES:
            if s == slug:
                return {"slug": s, "memory": mem, "vcpus": cpu, "disk": disk, "transfer": transfer,
                        "price_monthly": monthly, "price_hourly": hourly, "regions": [r for r, _ in REGIONS],
                        "available": True, "description": desc,
                        "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}]}
        return None

    def image_view(self, img):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in img.items() if not k.startswith("_")}

    def droplet_view(self, d):
        size = self.size_view(d["size_slug"])
        return {
            "id": d["id"], "name": d["name"], "memory": size["memory"], "vcpus": size["vcpus"],
            "disk": size["disk"], "disk_info": size["disk_info"], "locked": self.droplet_locked(d["id"]),
            "status": d["status"], "kernel": None, "created_at": d["created_at"], "features": list(d["features"]),
            "backup_ids": [], "next_backup_window": None, "snapshot_ids": list(d["snapshot_ids"]),
            "image": self.image_view(d["image"]), "volume_ids": [], "size": size, "size_slug": d["size_slug"],
            "networks": {"v4": [{"ip_address": d["ipv4"], "netmask": "255.255.255.0",
                                 "gateway": d["ipv4"].rsplit(".", 1)[0] + ".1", "type": "public"}], "v6": []},
            "region": self.region_view(d["region"]), "tags": list(d["tags"]), "vpc_uuid": d["vpc_uuid"],
        }

    def action_view(self, a):
        view = {k: v for k, v in a.items() if not k.startswith("_")}
        if a["region_slug"]:
            view["region"] = self.region_view(a["region_slug"])
        return view

    def tag_view(self, name):
        tagged = self.tags[name]

        def group(items):
            g = {"count": len(items)}
            if items:
                kind, rid = items[-1]
                g["last_tagged_uri"] = f"{self.public_url}/v2/{kind}s/{rid}"
            return g

        resources = group(tagged)
        resources.update({
            "droplets": group([r for r in tagged if r[0] == "droplet"]),
            "images": group([r for r in tagged if r[0] == "image"]),
            "volumes": {"count": 0}, "volume_snapshots": {"count": 0}, "databases": {"count": 0},
        })
        return {"name": name, "resources": resources}

    # ---- time: actions complete `action_seconds` after they start ----------

    def droplet_locked(self, droplet_id):
        return any(a["status"] == "in-progress" and a["resource_type"] == "droplet" and a["resource_id"] == droplet_id
                   for a in self.actions.values())

    def advance(self):
        t = time.time()
        for a in sorted(self.actions.values(), key=lambda a: a["id"]):
            if a["status"] == "in-progress" and a["_due"] <= t:
                a["status"] = "completed"
                a["completed_at"] = now_iso(a["_due"])
                effect = a.pop("_effect", None)
                if effect:
                    effect()

    def start_action(self, kind, resource_type, resource_id, region_slug, effect=None, delay=None):
        aid = self.new_id("action")
        started = time.time()
        self.actions[aid] = {
            "id": aid, "status": "in-progress", "type": kind, "started_at": now_iso(started),
            "completed_at": None, "resource_id": resource_id, "resource_type": resource_type,
            "region_slug": region_slug, "_due": started + (self.action_seconds if delay is None else delay),
            "_effect": effect,
        }
        self.advance()  # with action_seconds = 0 it completes at once
        return self.actions[aid]

    # ---- lookups -----------------------------------------------------------

    def image_by_ref(self, ref):
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            img = self.images.get(int(ref))
        else:
            img = next((i for i in self.images.values() if i["slug"] == ref and i["public"]), None)
        if img is None:
            raise not_found()
        return img

    def key_by_ref(self, ref):
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            key = self.keys.get(int(ref))
        else:
            key = next((k for k in self.keys.values() if k["fingerprint"] == ref), None)
        if key is None:
            raise not_found()
        return key

    def droplet(self, ref):
        d = self.droplets.get(int(ref))
        if d is None:
            raise not_found()
        return d

    def ensure_tag(self, name):
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_\-:]{1,255}", name):
            raise unprocessable(f"Tag name {name!r} is invalid: letters, numbers, ':', '-' and '_' only.")
        self.tags.setdefault(name, [])

    def tag_resource(self, name, kind, rid):
        self.ensure_tag(name)
        if (kind, rid) not in self.tags[name]:
            self.tags[name].append((kind, rid))
        target = self.droplets[rid] if kind == "droplet" else self.images[rid]
        if name not in target["tags"]:
            target["tags"].append(name)

    def untag_everywhere(self, kind, rid):
        for res in self.tags.values():
            if (kind, rid) in res:
                res.remove((kind, rid))

    # ---- paging ------------------------------------------------------------

    def page(self, key, items, query, path):
        try:
            page = int(query.get("page", "1"))
            per_page = int(query.get("per_page", "20"))
        except ValueError:
            raise unprocessable("page and per_page must be integers")
        page, per_page = max(page, 1), min(max(per_page, 1), 200)
        total = len(items)
        last = max((total + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page: page * per_page]

        def link(n):
            q = {k: v for k, v in query.items()} | {"page": str(n), "per_page": str(per_page)}
            return f"{self.public_url}{path}?{urllib.parse.urlencode(sorted(q.items()))}"

        pages = {}
        if page > 1:
            pages["first"], pages["prev"] = link(1), link(min(page - 1, last))
        if page < last:
            pages["next"], pages["last"] = link(page + 1), link(last)
        return {key: chunk, "links": {"pages": pages}, "meta": {"total": total}}


def ssh_fingerprint(public_key):
    parts = (public_key or "").strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise unprocessable("Key invalid, type not supported.")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise unprocessable("Key invalid, base64 data is malformed.")
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


# --------------------------------------------------------------------------
# API operations. Each takes (state, params, query, body) and returns
# (status, body or None). They run with the state lock held.

def op_account_get(s, p, q, b):
    return 200, {"account": {"droplet_limit": 25, "floating_ip_limit": 3, "email": "kiln@example.com",
                             "name": "kiln stand-in", "uuid": "b6f2b9b0-5f0e-4c1a-9d1c-6b1f1a2b3c4d",
                             "email_verified": True, "status": "active", "status_message": ""}}


def op_regions_list(s, p, q, b):
    return 200, s.page("regions", [s.region_view(r) for r, _ in REGIONS], q, "/v2/regions")


def op_sizes_list(s, p, q, b):
    return 200, s.page("sizes", [s.size_view(x[0]) for x in SIZES], q, "/v2/sizes")


def op_images_list(s, p, q, b):
    items = sorted(s.images.values(), key=lambda i: i["id"])
    kind = q.get("type")
    if kind == "distribution":
        items = [i for i in items if i["public"] and i["type"] == "base"]
    elif kind == "application":
        items = []  # no 1-Click images here
    elif kind is not None:
        # Not reachable through Prism: the spec's enum is application|distribution.
        items = [i for i in items if i["type"] == kind]
    if q.get("private") == "true":
        items = [i for i in items if not i["public"]]
    if "tag_name" in q:
        items = [i for i in items if q["tag_name"] in i["tags"]]
    return 200, s.page("images", [s.image_view(i) for i in items], q, "/v2/images")


def op_images_get(s, p, q, b):
    return 200, {"image": s.image_view(s.image_by_ref(p["image_id"]))}


def op_images_delete(s, p, q, b):
    img = s.image_by_ref(int(p["image_id"]))
    if img["public"]:
        raise ApiError(403, "forbidden", "You do not have access for the attempted action.")
    del s.images[img["id"]]
    s.untag_everywhere("image", img["id"])
    for d in s.droplets.values():
        if img["id"] in d["snapshot_ids"]:
            d["snapshot_ids"].remove(img["id"])
    return 204, None


def op_image_actions_post(s, p, q, b):
    img = s.image_by_ref(int(p["image_id"]))
    kind = b.get("type")
    if kind != "transfer":
        raise unprocessable(f"standin: image action {kind!r} is not implemented (only transfer)")
    region = b.get("region")
    if region is None:
        # The spec's anyOf lets {"type": "transfer"} through without a region.
        raise unprocessable("region is required for a transfer")
    if region not in dict(REGIONS):
        raise unprocessable(f"region {region!r} is not available")
    if img["public"]:
        raise unprocessable("Public images cannot be transferred.")

    def done(img_id=img["id"], region=region):
        target = s.images.get(img_id)
        if target is not None and region not in target["regions"]:
            target["regions"].append(region)

    a = s.start_action("transfer", "image", img["id"], region, done)
    return 201, {"action": s.action_view(a)}


def op_image_actions_get(s, p, q, b):
    a = s.actions.get(int(p["action_id"]))
    if a is None:
        raise not_found()
    if not (a["resource_type"] == "image" and a["resource_id"] == int(p["image_id"])):
        # Packer 1.6.6 polls /v2/images/{transfer action id}/actions/{snapshot
        # action id}: answer by action id alone, as the API evidently does.
        log(f"note: image action {a['id']} asked for under image {p['image_id']}, "
            f"it belongs to {a['resource_type']} {a['resource_id']}; answering it anyway")
    return 200, {"action": s.action_view(a)}


def op_actions_list(s, p, q, b):
    items = [s.action_view(a) for a in sorted(s.actions.values(), key=lambda a: -a["id"])]
    return 200, s.page("actions", items, q, "/v2/actions")


def op_actions_get(s, p, q, b):
    a = s.actions.get(int(p["action_id"]))
    if a is None:
        raise not_found()
    return 200, {"action": s.action_view(a)}


def op_keys_list(s, p, q, b):
    return 200, s.page("ssh_keys", [dict(k) for k in sorted(s.keys.values(), key=lambda k: k["id"])], q,
                       "/v2/account/keys")


def op_keys_create(s, p, q, b):
    fp = ssh_fingerprint(b.get("public_key"))
    if any(k["fingerprint"] == fp for k in s.keys.values()):
        raise unprocessable("SSH Key is already in use on your account")
    if not b.get("name"):
        raise unprocessable("Name can't be blank")
    key = {"id": s.new_id("key"), "fingerprint": fp, "public_key": b["public_key"].strip(), "name": b["name"]}
    s.keys[key["id"]] = key
    return 201, {"ssh_key": dict(key)}


def op_keys_get(s, p, q, b):
    return 200, {"ssh_key": dict(s.key_by_ref(p["ssh_key_identifier"]))}


def op_keys_delete(s, p, q, b):
    del s.keys[s.key_by_ref(p["ssh_key_identifier"])["id"]]
    return 204, None


def _create_one(s, name, b):
    region = b.get("region")
    if region is None:
        region = "nyc3"
    if region not in dict(REGIONS):
        raise unprocessable(f"Region {region!r} is not available.")
    if s.size_view(b.get("size")) is None:
        raise unprocessable(f"Size {b.get('size')!r} is not available in this region.")
    try:
        img = s.image_by_ref(b.get("image"))
    except ApiError:
        raise unprocessable("You specified an invalid image for Droplet creation.")
    if region not in img["regions"]:
        raise unprocessable(f"Image {img['id']} is not available in {region}.")
    keys = []
    for ref in b.get("ssh_keys") or []:
        try:
            keys.append(s.key_by_ref(ref)["id"])
        except ApiError:
            raise unprocessable(f"SSH key {ref!r} is not a key on your account.")
    did = s.new_id("droplet")
    n = did - 3000000
    ipv4 = s.droplet_ipv4 or f"203.0.113.{n % 250 + 2}"  # TEST-NET-3: documentation only
    d = {
        "id": did, "name": name, "region": region, "size_slug": b["size"], "image": img,
        "status": "new", "created_at": now_iso(), "features": (["ipv6"] if b.get("ipv6") else []) +
        (["monitoring"] if b.get("monitoring") else []), "snapshot_ids": [], "tags": [],
        "ipv4": ipv4, "vpc_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"vpc/{region}")),
        "ssh_key_ids": keys, "user_data": b.get("user_data"),
    }
    s.droplets[did] = d
    for t in b.get("tags") or []:
        s.tag_resource(t, "droplet", did)

    def booted(did=did):
        if did in s.droplets and s.droplets[did]["status"] == "new":
            s.droplets[did]["status"] = "active"

    a = s.start_action("create", "droplet", did, region, booted)
    return d, a


def op_droplets_create(s, p, q, b):
    if "names" in b:
        made = [_create_one(s, n, b) for n in b["names"]]
        return 202, {"droplets": [s.droplet_view(d) for d, _ in made],
                     "links": {"actions": [_action_link(s, a) for _, a in made]}}
    d, a = _create_one(s, b.get("name"), b)
    return 202, {"droplet": s.droplet_view(d), "links": {"actions": [_action_link(s, a)]}}


def _action_link(s, a):
    return {"id": a["id"], "rel": "create", "href": f"{s.public_url}/v2/actions/{a['id']}"}


def op_droplets_list(s, p, q, b):
    items = sorted(s.droplets.values(), key=lambda d: d["id"])
    if "tag_name" in q:
        items = [d for d in items if q["tag_name"] in d["tags"]]
    if "name" in q:
        items = [d for d in items if d["name"] == q["name"]]
    return 200, s.page("droplets", [s.droplet_view(d) for d in items], q, "/v2/droplets")


def op_droplets_get(s, p, q, b):
    return 200, {"droplet": s.droplet_view(s.droplet(p["droplet_id"]))}


def op_droplets_destroy(s, p, q, b):
    d = s.droplet(p["droplet_id"])
    del s.droplets[d["id"]]
    s.untag_everywhere("droplet", d["id"])
    return 204, None


def op_droplets_list_snapshots(s, p, q, b):
    d = s.droplet(p["droplet_id"])
    snaps = []
    for iid in d["snapshot_ids"]:
        img = s.images.get(iid)
        if img:
            snaps.append({"id": img["id"], "name": img["name"], "created_at": img["created_at"],
                          "regions": list(img["regions"]), "min_disk_size": img["min_disk_size"] or 0,
                          "size_gigabytes": img["size_gigabytes"] or 0.0, "type": "snapshot"})
    return 200, s.page("snapshots", snaps, q, f"/v2/droplets/{d['id']}/snapshots")


def op_droplet_actions_post(s, p, q, b):
    d = s.droplet(p["droplet_id"])
    kind = b.get("type")
    if s.droplet_locked(d["id"]):
        raise unprocessable("Droplet already has a pending event.")
    did = d["id"]

    def set_status(status):
        def effect():
            if did in s.droplets:
                s.droplets[did]["status"] = status
        return effect

    if kind in ("shutdown", "power_off"):
        if d["status"] == "off":
            raise unprocessable("Droplet is already powered off.")
        effect = set_status("off")
    elif kind in ("power_on",):
        if d["status"] == "active":
            raise unprocessable("Droplet is already powered on.")
        effect = set_status("active")
    elif kind in ("reboot", "power_cycle"):
        effect = set_status("active")
    elif kind == "snapshot":
        name = b.get("name") or f"{d['name']}-{int(time.time())}"
        size = s.size_view(d["size_slug"])
        source = d["image"]

        def effect(name=name, disk=size["disk"], source=source):
            iid = s.new_id("image")
            s.images[iid] = {
                "id": iid, "name": name, "type": "snapshot", "distribution": source["distribution"],
                "slug": None, "public": False, "regions": [d["region"]], "created_at": now_iso(),
                "min_disk_size": disk, "size_gigabytes": 1.42, "tags": [], "status": "available",
                "_droplet_id": did,
            }
            if did in s.droplets:
                s.droplets[did]["snapshot_ids"].append(iid)
    else:
        raise unprocessable(f"standin: droplet action {kind!r} is not implemented")
    a = s.start_action(kind, "droplet", did, d["region"], effect)
    return 201, {"action": s.action_view(a)}


def op_droplet_actions_get(s, p, q, b):
    d = s.droplet(p["droplet_id"])
    a = s.actions.get(int(p["action_id"]))
    if a is None or a["resource_type"] != "droplet" or a["resource_id"] != d["id"]:
        raise not_found()
    return 200, {"action": s.action_view(a)}


def op_tags_list(s, p, q, b):
    return 200, s.page("tags", [s.tag_view(n) for n in sorted(s.tags)], q, "/v2/tags")


def op_tags_create(s, p, q, b):
    s.ensure_tag(b.get("name"))
    return 201, {"tag": s.tag_view(b["name"])}


def op_tags_get(s, p, q, b):
    if p["tag_id"] not in s.tags:
        raise not_found()
    return 200, {"tag": s.tag_view(p["tag_id"])}


def op_tags_delete(s, p, q, b):
    name = p["tag_id"]
    if name not in s.tags:
        raise not_found()
    for kind, rid in s.tags.pop(name):
        target = (s.droplets if kind == "droplet" else s.images).get(rid)
        if target and name in target["tags"]:
            target["tags"].remove(name)
    return 204, None


def _resources(s, b):
    out = []
    for r in b.get("resources") or []:
        kind, rid = r.get("resource_type"), r.get("resource_id")
        if kind not in ("droplet", "image"):
            raise unprocessable(f"standin: tagging resource_type {kind!r} is not implemented")
        if not isinstance(rid, str) or not rid.isdigit():
            raise unprocessable(f"resource_id {rid!r} is not a valid {kind} id")
        if int(rid) not in (s.droplets if kind == "droplet" else s.images):
            raise ApiError(404, "not_found", f"{kind} {rid} not found")
        out.append((kind, int(rid)))
    if not out:
        raise unprocessable("resources must not be empty")
    return out


def op_tags_assign(s, p, q, b):
    name = p["tag_id"]
    if name not in s.tags:
        raise not_found()
    for kind, rid in _resources(s, b):
        s.tag_resource(name, kind, rid)
    return 204, None


def op_tags_unassign(s, p, q, b):
    name = p["tag_id"]
    if name not in s.tags:
        raise not_found()
    for kind, rid in _resources(s, b):
        if (kind, rid) in s.tags[name]:
            s.tags[name].remove((kind, rid))
        target = (s.droplets if kind == "droplet" else s.images)[rid]
        if name in target["tags"]:
            target["tags"].remove(name)
    return 204, None


INT = r"(?P<{}>\d+)"
ROUTES = [
    ("GET", r"/v2/account", "account_get", op_account_get),
    ("GET", r"/v2/regions", "regions_list", op_regions_list),
    ("GET", r"/v2/sizes", "sizes_list", op_sizes_list),
    ("GET", r"/v2/images", "images_list", op_images_list),
    ("GET", r"/v2/images/(?P<image_id>[^/]+)", "images_get", op_images_get),
    ("DELETE", r"/v2/images/" + INT.format("image_id"), "images_delete", op_images_delete),
    ("POST", r"/v2/images/" + INT.format("image_id") + "/actions", "imageActions_post", op_image_actions_post),
    ("GET", r"/v2/images/" + INT.format("image_id") + "/actions/" + INT.format("action_id"),
     "imageActions_get", op_image_actions_get),
    ("GET", r"/v2/actions", "actions_list", op_actions_list),
    ("GET", r"/v2/actions/" + INT.format("action_id"), "actions_get", op_actions_get),
    ("GET", r"/v2/account/keys", "sshKeys_list", op_keys_list),
    ("POST", r"/v2/account/keys", "sshKeys_create", op_keys_create),
    ("GET", r"/v2/account/keys/(?P<ssh_key_identifier>[^/]+)", "sshKeys_get", op_keys_get),
    ("DELETE", r"/v2/account/keys/(?P<ssh_key_identifier>[^/]+)", "sshKeys_delete", op_keys_delete),
    ("GET", r"/v2/droplets", "droplets_list", op_droplets_list),
    ("POST", r"/v2/droplets", "droplets_create", op_droplets_create),
    ("GET", r"/v2/droplets/" + INT.format("droplet_id"), "droplets_get", op_droplets_get),
    ("DELETE", r"/v2/droplets/" + INT.format("droplet_id"), "droplets_destroy", op_droplets_destroy),
    ("GET", r"/v2/droplets/" + INT.format("droplet_id") + "/snapshots", "droplets_list_snapshots",
     op_droplets_list_snapshots),
    ("POST", r"/v2/droplets/" + INT.format("droplet_id") + "/actions", "dropletActions_post", op_droplet_actions_post),
    ("GET", r"/v2/droplets/" + INT.format("droplet_id") + "/actions/" + INT.format("action_id"),
     "dropletActions_get", op_droplet_actions_get),
    ("GET", r"/v2/tags", "tags_list", op_tags_list),
    ("POST", r"/v2/tags", "tags_create", op_tags_create),
    ("GET", r"/v2/tags/(?P<tag_id>[^/]+)", "tags_get", op_tags_get),
    ("DELETE", r"/v2/tags/(?P<tag_id>[^/]+)", "tags_delete", op_tags_delete),
    ("POST", r"/v2/tags/(?P<tag_id>[^/]+)/resources", "tags_assign_resources", op_tags_assign),
    ("DELETE", r"/v2/tags/(?P<tag_id>[^/]+)/resources", "tags_unassign_resources", op_tags_unassign),
]
ROUTES = [(m, re.compile(pat + r"/?"), op_id, fn) for m, pat, op_id, fn in ROUTES]


def malform(body):
    """Break a response body so that the spec rejects it (debug switch)."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("meta"), dict):
        body["meta"]["total"] = "not-an-integer"
        return body
    for v in body.values():
        if isinstance(v, dict) and "id" in v:
            v["id"] = "not-an-integer"
            return body
    body["id"] = 12345  # error bodies: id must be a string
    return body


# --------------------------------------------------------------------------
# HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to each answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server_version = "kiln-do-standin/1"
    state: State = None
    spec: Spec = None
    tokens: dict = {}
    strict: bool = True

    def log_message(self, fmt, *args):  # replaced by one line per request
        pass

    def _send(self, status, body, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "bad_request", f"request body is not JSON: {e}")

    def _ratelimit_headers(self):
        s = self.state
        t = time.time()
        if t - s.rl_window_start >= 3600:
            s.rl_window_start, s.rl_used = t, 0
        return {"ratelimit-limit": s.rl_limit, "ratelimit-remaining": max(s.rl_limit - s.rl_used, 0),
                "ratelimit-reset": int(s.rl_window_start + 3600)}

    def _handle(self):
        t0 = time.time()
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path.startswith("/_standin"):
            return self.control(path, url)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        op_id, note = "-", ""
        s = self.state
        with s.lock:
            s.counts["requests"] += 1
            s.advance()
            headers = self._ratelimit_headers()
            try:
                body = self._read_body()
                auth = self.headers.get("Authorization", "")
                token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
                role = self.tokens.get(token)
                if role is None:
                    raise ApiError(401, "Unauthorized", "Unable to authenticate you")
                if s.force_429 > 0 or s.rl_used >= s.rl_limit:
                    s.force_429 = max(s.force_429 - 1, 0)
                    raise ApiError(429, "too_many_requests", "API Rate limit exceeded.",
                                   {"Retry-After": s.retry_after, "ratelimit-remaining": 0})
                s.rl_used += 1
                headers = self._ratelimit_headers()
                route = None
                for method, pattern, rid, fn in ROUTES:
                    m = pattern.fullmatch(path)
                    if m and method == self.command:
                        route = (rid, fn, m.groupdict())
                        break
                if route is None:
                    # Not 501: Prism's proxy answers a 501 from upstream with
                    # a mock of its own (verified), which would hide the gap.
                    raise ApiError(400, "standin_not_implemented",
                                   f"standin: {self.command} {path} is in the spec but not implemented "
                                   f"by the stand-in")
                op_id, fn, params = route
                if role == "read" and self.command not in ("GET", "HEAD"):
                    raise ApiError(403, "forbidden", "You do not have access for the attempted action.")
                if body is not None and not isinstance(body, dict):
                    raise unprocessable("request body must be a JSON object")
                if self.strict and body is not None:
                    extra = self.spec.undeclared(self.spec.request_schema(op_id), body)
                    if extra:
                        s.counts["strict_request_failures"] += 1
                        raise unprocessable(f"standin strict check: request body of {op_id} has "
                                            f"properties the spec does not declare: {', '.join(extra)}")
                status, out = fn(s, params, query, body or {})
            except ApiError as e:
                status = e.status
                out = {"id": e.ident, "message": e.message, "request_id": str(uuid.uuid4())}
                headers.update(e.headers)
                note = f" ({e.message})"
            if self.strict and out is not None and op_id != "-":
                extra = self.spec.undeclared(self.spec.response_schema(op_id, status), out,
                                             allowed=RESPONSE_ALLOWED.get(op_id, set()))
                if extra:
                    s.counts["strict_response_failures"] += 1
                    msg = (f"standin strict check: response of {op_id} ({status}) has properties "
                           f"the spec does not declare: {', '.join(extra)}")
                    status, out = 500, {"id": "server_error", "message": msg, "request_id": str(uuid.uuid4())}
                    note = f" ({msg})"
            if out is not None and s.malform > 0:
                s.malform -= 1
                out = malform(out)
                note += " (malformed on purpose: debug switch)"
        self._send(status, out, headers)
        log(f"{self.command} {self.path} -> {status} {op_id} {1000 * (time.time() - t0):.1f}ms{note}")

    def control(self, path, url):
        """/_standin/ endpoints: tests steer the stand-in with these.

        GET  /_standin/health                 200 {"ok": true}
        GET  /_standin/state                  everything held, plus counters
        POST /_standin/ratelimit {"count": N, "retry_after": S, "limit": L, "remaining": R}
             the next N API requests answer 429 with Retry-After: S; limit/remaining
             set the hourly budget that the ratelimit-* headers report
        POST /_standin/malform {"count": N}   the next N API response bodies are broken
        POST /_standin/images {...}           seed an image (a snapshot by default); any of
             name, regions, created_at, tags, type, distribution, min_disk_size,
             size_gigabytes, droplet_id, status (the spec's enum; default available);
             answers {"image": ...}
        POST /_standin/config {"action_seconds": X}
        """
        s = self.state
        try:
            body = self._read_body() or {}
        except ApiError as e:
            return self._send(e.status, {"id": e.ident, "message": e.message})
        with s.lock:
            s.advance()
            if path == "/_standin/health" and self.command == "GET":
                out = {"ok": True}
            elif path == "/_standin/state" and self.command == "GET":
                out = {"droplets": [s.droplet_view(d) for d in s.droplets.values()],
                       "images": [s.image_view(i) for i in s.images.values() if not i["public"]],
                       "actions": [s.action_view(a) for a in s.actions.values()],
                       "ssh_keys": list(s.keys.values()),
                       "tags": {n: [f"{k}:{r}" for k, r in v] for n, v in s.tags.items()},
                       "ratelimit": self._ratelimit_headers() | {"forced_429": s.force_429},
                       "malform": s.malform, "counts": dict(s.counts), "action_seconds": s.action_seconds}
            elif path == "/_standin/ratelimit" and self.command == "POST":
                s.force_429 = int(body.get("count", 1))
                s.retry_after = int(body.get("retry_after", 1))
                if "limit" in body:
                    s.rl_limit = int(body["limit"])
                if "remaining" in body:
                    s.rl_used = s.rl_limit - int(body["remaining"])
                out = {"forced_429": s.force_429, "retry_after": s.retry_after} | self._ratelimit_headers()
            elif path == "/_standin/malform" and self.command == "POST":
                s.malform = int(body.get("count", 1))
                out = {"malform": s.malform}
            elif path == "/_standin/config" and self.command == "POST":
                if "action_seconds" in body:
                    s.action_seconds = float(body["action_seconds"])
                out = {"action_seconds": s.action_seconds}
            elif path == "/_standin/images" and self.command == "POST":
                regions = body.get("regions") or ["nyc3"]
                bad = [r for r in regions if r not in dict(REGIONS)]
                if bad:
                    return self._send(422, {"id": "unprocessable_entity", "message": f"unknown regions {bad}"})
                status = body.get("status", "available")
                if status not in IMAGE_STATUSES:
                    return self._send(422, {"id": "unprocessable_entity",
                                            "message": f"status {status!r} is not one of {IMAGE_STATUSES}"})
                iid = s.new_id("image")
                img = {"id": iid, "name": body.get("name") or f"seeded-{iid}", "type": body.get("type", "snapshot"),
                       "distribution": body.get("distribution", "Ubuntu"), "slug": None, "public": False,
                       "regions": list(regions), "created_at": body.get("created_at") or now_iso(),
                       "min_disk_size": int(body.get("min_disk_size", 25)),
                       "size_gigabytes": float(body.get("size_gigabytes", 1.42)), "tags": [], "status": status}
                s.images[iid] = img
                did = body.get("droplet_id")
                if did is not None and int(did) in s.droplets:
                    s.droplets[int(did)]["snapshot_ids"].append(iid)
                try:
                    for t in body.get("tags") or []:
                        s.tag_resource(t, "image", iid)
                except ApiError as e:
                    del s.images[iid]
                    return self._send(e.status, {"id": e.ident, "message": e.message})
                out = {"image": s.image_view(img)}
            else:
                return self._send(404, {"id": "not_found", "message": f"no control endpoint {self.command} {path}"})
        self._send(200, out)
        log(f"control {self.command} {path} {json.dumps(body)}")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="the bundled spec as JSON (setup.sh writes it)")
    ap.add_argument("--port", type=int, default=0, help="0: a free port; the port is printed as JSON")
    ap.add_argument("--public-url", required=True, help="the URL clients use (Prism's), for pagination links")
    ap.add_argument("--token", action="append", default=[], help="a read-write token (repeatable)")
    ap.add_argument("--readonly-token", action="append", default=[], help="a read-only token (repeatable)")
    ap.add_argument("--action-seconds", type=float, default=1.0, help="how long every action stays in-progress")
    ap.add_argument("--droplet-ipv4", default="", help="the public IPv4 every droplet reports (default 203.0.113.x)")
    ap.add_argument("--no-strict", action="store_true", help="skip the undeclared-property checks")
    ap.add_argument("--ratelimit-429", type=int, default=0, help="answer the first N API requests with 429")
    a = ap.parse_args()

    Handler.spec = Spec(a.spec)
    Handler.state = State(a.public_url, a.action_seconds, a.droplet_ipv4)
    Handler.state.force_429 = a.ratelimit_429
    Handler.strict = not a.no_strict
    tokens = a.token or [f"dop_v1_{secrets.token_hex(32)}"]
    Handler.tokens = {t: "write" for t in tokens} | {t: "read" for t in a.readonly_token}
    httpd = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(json.dumps({"port": httpd.server_address[1]}), flush=True)
    log(f"listening on 127.0.0.1:{httpd.server_address[1]}, {len(Handler.spec.ops)} operations in the spec, "
        f"{len(ROUTES)} implemented, strict={Handler.strict}")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
