"""The one stand-in of kiln's local OpenStack: a minimal Nova (compute v2.1).

Real Nova cannot run here (it needs a hypervisor, a message queue and
Neutron, and its fake driver uploads nothing when asked for a snapshot), so
this WSGI app implements just what Packer's `openstack` builder calls, with
Nova's status codes, bodies and microversion rules:

  GET    /  and  /v2.1                     version documents (no auth)
  *      /network/...                      501: the catalogue's placeholder
                                           `network` endpoint (see README)
  GET    /v2.1/flavors[/detail]            fixed m1.* flavors
  GET    /v2.1/flavors/{id}
  GET    /v2.1/os-keypairs                 list (the caller's own)
  POST   /v2.1/os-keypairs                 import or generate (RSA) a key
  GET    /v2.1/os-keypairs/{name}
  DELETE /v2.1/os-keypairs/{name}
  GET    /v2.1/servers[/detail]            list (the caller's project)
  POST   /v2.1/servers                     the image must be active in Glance
  GET    /v2.1/servers/{id}
  DELETE /v2.1/servers/{id}
  POST   /v2.1/servers/{id}/action         os-stop, os-start, createImage

Everything but the version documents sits behind the real keystonemiddleware
auth_token filter, so tokens are checked by the real Keystone. createImage
creates the snapshot image in the real Glance with the caller's token and
copies the source image's bytes into it, as Nova does for an image-backed
server, in the background: Glance shows it queued, then saving, then active.

Configuration (environment, set by run.py):
  KILN_NOVA_CONF        ini file with a [keystone_authtoken] section
  KILN_NOVA_GLANCE_URL  the Glance of this region, e.g. http://127.0.0.1:PORT
  KILN_NOVA_REGION      region name (shown in logs and the version document)

State lives in memory: serve it with ONE gunicorn worker (threads are fine).
"""

import base64
import datetime
import hashlib
import http.client
import json
import logging
import os
import re
import threading
import urllib.parse
import uuid

LOG = logging.getLogger("nova-standin")

MIN_VERSION = (2, 1)
# 2.45 is the last microversion whose behaviour this stand-in fully follows
# for what it implements (createImage answers with a body from 2.45 on).
MAX_VERSION = (2, 45)

FLAVORS = [
    # id, name, ram MiB, vcpus, root disk GiB: devstack's defaults.
    ("1", "m1.tiny", 512, 1, 1),
    ("2", "m1.small", 2048, 1, 20),
    ("3", "m1.medium", 4096, 2, 40),
    ("42", "m1.nano", 128, 1, 1),
]

# Glance image fields that are not custom properties.
GLANCE_CORE = {
    "id", "name", "status", "visibility", "protected", "checksum",
    "os_hash_algo", "os_hash_value", "owner", "size", "virtual_size",
    "min_ram", "min_disk", "disk_format", "container_format", "created_at",
    "updated_at", "tags", "self", "file", "schema", "direct_url",
    "locations", "os_hidden", "stores",
}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class HTTPError(Exception):
    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message


def _fault(code, message):
    kind = {
        400: "badRequest", 403: "forbidden", 404: "itemNotFound",
        406: "notAcceptable", 409: "conflictingRequest",
    }.get(code, "computeFault")
    return HTTPError(code, kind, message)


class Glance:
    """The few Glance v2 calls Nova makes, with the caller's token."""

    def __init__(self, base_url):
        url = urllib.parse.urlsplit(base_url)
        self.base = base_url.rstrip("/")
        self.host = url.hostname
        self.port = url.port or 80
        self.prefix = url.path.rstrip("/")

    def _conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=300)

    def call(self, method, path, token, body=None, headers=None):
        conn = self._conn()
        try:
            hdrs = {"X-Auth-Token": token, "Accept": "application/json"}
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                hdrs["Content-Type"] = "application/json"
            hdrs.update(headers or {})
            conn.request(method, self.prefix + path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, (json.loads(data) if data.strip() else None)
        finally:
            conn.close()

    def get_image(self, token, image_id):
        status, body = self.call("GET", "/v2/images/" + image_id, token)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError("glance GET image %s: %s %s" % (image_id, status, body))
        return body

    def copy_data(self, token, src_id, dst_id):
        """Streams the source image's bytes into the destination image."""
        src = self._conn()
        dst = self._conn()
        try:
            src.request("GET", "%s/v2/images/%s/file" % (self.prefix, src_id),
                        headers={"X-Auth-Token": token})
            resp = src.getresponse()
            if resp.status == 204:  # the source image has no data
                data, length = b"", "0"
            elif resp.status == 200:
                data, length = resp, resp.getheader("Content-Length")
            else:
                raise RuntimeError("glance GET %s/file: %s %s"
                                   % (src_id, resp.status, resp.read()[:300]))
            headers = {"X-Auth-Token": token,
                       "Content-Type": "application/octet-stream"}
            if length is not None:
                headers["Content-Length"] = length
            dst.request("PUT", "%s/v2/images/%s/file" % (self.prefix, dst_id),
                        body=data, headers=headers,
                        encode_chunked=length is None)
            out = dst.getresponse()
            body = out.read()
            if out.status != 204:
                raise RuntimeError("glance PUT %s/file: %s %s"
                                   % (dst_id, out.status, body[:300]))
        finally:
            src.close()
            dst.close()


class Nova:
    def __init__(self, glance_url, region):
        self.glance = Glance(glance_url)
        self.region = region
        self.lock = threading.Lock()
        self.servers = {}   # id -> dict
        self.keypairs = {}  # (user_id, name) -> dict

    # ----------------------------------------------------------- plumbing --

    def version_doc(self, base):
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "%d.%d" % MAX_VERSION,
            "min_version": "%d.%d" % MIN_VERSION,
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": base + "/v2.1/"}],
            "media-types": [{
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }],
        }

    @staticmethod
    def microversion(environ):
        raw = None
        header = environ.get("HTTP_OPENSTACK_API_VERSION", "")
        for part in header.split(","):
            words = part.split()
            if len(words) == 2 and words[0].lower() == "compute":
                raw = words[1]
        if raw is None:
            raw = environ.get("HTTP_X_OPENSTACK_NOVA_API_VERSION")
        if not raw:
            return MIN_VERSION
        if raw.lower() == "latest":
            return MAX_VERSION
        m = re.fullmatch(r"(\d+)\.(\d+)", raw.strip())
        if not m:
            raise _fault(400, "API Version String %s is of invalid format. "
                         "Must be of format MajorNum.MinorNum." % raw)
        version = (int(m.group(1)), int(m.group(2)))
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise _fault(406, "Version %s is not supported by the API. "
                         "Minimum is %d.%d and maximum is %d.%d." %
                         ((raw,) + MIN_VERSION + MAX_VERSION))
        return version

    def __call__(self, environ, start_response):
        """Authenticated API (behind auth_token)."""
        headers = []
        try:
            version = self.microversion(environ)
            vstr = "%d.%d" % version
            headers = [("OpenStack-API-Version", "compute " + vstr),
                       ("X-OpenStack-Nova-API-Version", vstr),
                       ("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")]
            if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
                raise HTTPError(401, "unauthorized", "Authentication required")
            ctx = {
                "token": environ.get("HTTP_X_AUTH_TOKEN", ""),
                "user_id": environ.get("HTTP_X_USER_ID", ""),
                "project_id": environ.get("HTTP_X_PROJECT_ID", ""),
                "version": version,
                "base": _base_url(environ),
            }
            if not ctx["project_id"]:
                raise _fault(403, "A project-scoped token is required")
            method = environ["REQUEST_METHOD"]
            path = environ.get("PATH_INFO", "").rstrip("/")
            body = None
            if method in ("POST", "PUT"):
                length = int(environ.get("CONTENT_LENGTH") or 0)
                raw = environ["wsgi.input"].read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    raise _fault(400, "Malformed request body")
            code, doc, extra = self.route(method, path, environ, body, ctx)
        except HTTPError as e:
            code, doc, extra = e.code, {e.kind: {"code": e.code, "message": e.message}}, []
        except Exception as e:  # noqa: BLE001 - report as Nova does
            LOG.exception("unexpected error")
            code, doc, extra = 500, {"computeFault": {"code": 500, "message": str(e)}}, []
        payload = b"" if doc is None else json.dumps(doc).encode()
        headers += extra
        if doc is not None:
            headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(payload))))
        start_response("%d %s" % (code, http.client.responses.get(code, "")), headers)
        return [payload]

    def route(self, method, path, environ, body, ctx):
        parts = path.split("/")[1:]  # ['v2.1', ...]
        if not parts or parts[0] != "v2.1":
            raise _fault(404, "Not found")
        parts = parts[1:]
        # Tolerate the old /v2.1/{project_id}/... form of the endpoint.
        if parts and parts[0] == ctx["project_id"]:
            parts = parts[1:]
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        n = len(parts)
        if n >= 1 and parts[0] == "flavors":
            if method == "GET" and n == 1:
                return 200, {"flavors": [self.flavor_doc(f, ctx, brief=True)
                                         for f in FLAVORS]}, []
            if method == "GET" and n == 2 and parts[1] == "detail":
                return 200, {"flavors": [self.flavor_doc(f, ctx)
                                         for f in FLAVORS]}, []
            if method == "GET" and n == 2:
                return 200, {"flavor": self.flavor_doc(self.find_flavor(parts[1]), ctx)}, []
        if n >= 1 and parts[0] == "os-keypairs":
            if method == "GET" and n == 1:
                return 200, {"keypairs": [{"keypair": self.keypair_doc(k, ctx)}
                                          for k in self.user_keypairs(ctx)]}, []
            if method == "POST" and n == 1:
                return self.create_keypair(body, ctx)
            if method == "GET" and n == 2:
                return 200, {"keypair": self.keypair_doc(self.find_keypair(parts[1], ctx), ctx, full=True)}, []
            if method == "DELETE" and n == 2:
                return self.delete_keypair(parts[1], ctx)
        if n >= 1 and parts[0] == "servers":
            if method == "GET" and n == 1:
                return 200, {"servers": [{"id": s["id"], "name": s["name"],
                                          "links": self.server_links(s, ctx)}
                                         for s in self.project_servers(ctx, query)]}, []
            if method == "GET" and n == 2 and parts[1] == "detail":
                return 200, {"servers": [self.server_doc(s, ctx)
                                         for s in self.project_servers(ctx, query)]}, []
            if method == "POST" and n == 1:
                return self.create_server(body, ctx)
            if method == "GET" and n == 2:
                server = self.find_server(parts[1], ctx)
                with self.lock:
                    if server["status"] == "BUILD":
                        # The build "finishes" once somebody looks.
                        server.update(status="ACTIVE", vm_state="active",
                                      power_state=1, progress=100,
                                      launched_at=_now(), updated=_now())
                return 200, {"server": self.server_doc(server, ctx)}, []
            if method == "DELETE" and n == 2:
                server = self.find_server(parts[1], ctx)
                with self.lock:
                    self.servers.pop(server["id"], None)
                return 204, None, []
            if method == "POST" and n == 3 and parts[2] == "action":
                return self.server_action(self.find_server(parts[1], ctx), body, ctx)
        raise _fault(404, "The resource could not be found.")

    # ------------------------------------------------------------ flavors --

    @staticmethod
    def find_flavor(ref):
        ref = ref.rstrip("/").rsplit("/", 1)[-1]
        for f in FLAVORS:
            if f[0] == ref:
                return f
        raise _fault(404, "Flavor %s could not be found." % ref)

    @staticmethod
    def flavor_links(fid, ctx):
        return [{"rel": "self", "href": "%s/v2.1/flavors/%s" % (ctx["base"], fid)},
                {"rel": "bookmark", "href": "%s/flavors/%s" % (ctx["base"], fid)}]

    def flavor_doc(self, f, ctx, brief=False):
        fid, name, ram, vcpus, disk = f
        doc = {"id": fid, "name": name, "links": self.flavor_links(fid, ctx)}
        if brief:
            return doc
        doc.update({
            "ram": ram, "vcpus": vcpus, "disk": disk, "swap": "",
            "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": True, "rxtx_factor": 1.0,
        })
        return doc

    # ----------------------------------------------------------- keypairs --

    def user_keypairs(self, ctx):
        with self.lock:
            return [k for (uid, _), k in sorted(self.keypairs.items())
                    if uid == ctx["user_id"]]

    def find_keypair(self, name, ctx):
        name = urllib.parse.unquote(name)
        with self.lock:
            kp = self.keypairs.get((ctx["user_id"], name))
        if kp is None:
            raise _fault(404, "Keypair %s not found for user %s" % (name, ctx["user_id"]))
        return kp

    def keypair_doc(self, kp, ctx, full=False, private_key=None):
        doc = {"name": kp["name"], "public_key": kp["public_key"],
               "fingerprint": kp["fingerprint"]}
        if ctx["version"] >= (2, 2):
            doc["type"] = kp["type"]
        if full:
            doc.update({"user_id": kp["user_id"], "id": kp["id"],
                        "created_at": kp["created_at"], "deleted": False,
                        "deleted_at": None, "updated_at": None})
        if private_key is not None:
            doc["private_key"] = private_key
            doc["user_id"] = kp["user_id"]
        return doc

    def create_keypair(self, body, ctx):
        req = (body or {}).get("keypair")
        if not isinstance(req, dict) or not req.get("name"):
            raise _fault(400, "Invalid input for field/attribute keypair.")
        name = req["name"]
        if not re.fullmatch(r"[A-Za-z0-9 _.@-]{1,255}", name):
            raise _fault(400, "Keypair data is invalid: Keypair name contains unsafe characters")
        ktype = req.get("type", "ssh")
        if ktype not in ("ssh", "x509"):
            raise _fault(400, "Invalid input for field/attribute type.")
        private = None
        public = req.get("public_key")
        if public:
            try:
                blob = base64.b64decode(public.split()[1], validate=True)
            except Exception:  # noqa: BLE001
                raise _fault(400, "Keypair data is invalid: failed to generate fingerprint")
        else:
            private, public = _generate_rsa()
            blob = base64.b64decode(public.split()[1])
        digest = hashlib.md5(blob).hexdigest()
        kp = {"name": name, "public_key": public, "type": ktype,
              "fingerprint": ":".join(digest[i:i + 2] for i in range(0, 32, 2)),
              "user_id": ctx["user_id"], "id": len(self.keypairs) + 1,
              "created_at": _now()}
        with self.lock:
            if (ctx["user_id"], name) in self.keypairs:
                raise _fault(409, "Key pair '%s' already exists." % name)
            self.keypairs[(ctx["user_id"], name)] = kp
        code = 201 if ctx["version"] >= (2, 2) else 200
        return code, {"keypair": self.keypair_doc(kp, ctx, private_key=private)}, []

    def delete_keypair(self, name, ctx):
        kp = self.find_keypair(name, ctx)
        with self.lock:
            self.keypairs.pop((ctx["user_id"], kp["name"]), None)
        return (204 if ctx["version"] >= (2, 2) else 202), None, []

    # ------------------------------------------------------------ servers --

    def project_servers(self, ctx, query):
        with self.lock:
            out = [s for s in self.servers.values()
                   if s["project_id"] == ctx["project_id"]]
        if "name" in query:
            pattern = re.compile(query["name"][0])
            out = [s for s in out if pattern.search(s["name"])]
        if "status" in query:
            out = [s for s in out if s["status"] == query["status"][0].upper()]
        return sorted(out, key=lambda s: s["created"], reverse=True)

    def find_server(self, sid, ctx):
        with self.lock:
            server = self.servers.get(sid)
        if server is None or server["project_id"] != ctx["project_id"]:
            raise _fault(404, "Instance %s could not be found." % sid)
        return server

    def server_links(self, s, ctx):
        return [{"rel": "self", "href": "%s/v2.1/servers/%s" % (ctx["base"], s["id"])},
                {"rel": "bookmark", "href": "%s/servers/%s" % (ctx["base"], s["id"])}]

    def server_doc(self, s, ctx):
        glance = self.glance.base
        return {
            "id": s["id"], "name": s["name"], "status": s["status"],
            "tenant_id": s["project_id"], "user_id": s["user_id"],
            "metadata": s["metadata"], "hostId": hashlib.sha224(
                (s["project_id"] + "standin").encode()).hexdigest(),
            "image": {"id": s["image_id"], "links": [
                {"rel": "bookmark", "href": "%s/images/%s" % (glance, s["image_id"])}]},
            "flavor": {"id": s["flavor_id"], "links": self.flavor_links(s["flavor_id"], ctx)[1:]},
            "created": s["created"], "updated": s["updated"],
            "addresses": {}, "accessIPv4": "", "accessIPv6": "",
            "key_name": s["key_name"], "config_drive": s["config_drive"],
            "progress": s["progress"],
            "security_groups": [{"name": g} for g in s["security_groups"]],
            "links": self.server_links(s, ctx),
            "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": s["availability_zone"],
            "OS-EXT-STS:vm_state": s["vm_state"],
            "OS-EXT-STS:power_state": s["power_state"],
            "OS-EXT-STS:task_state": s["task_state"],
            "OS-SRV-USG:launched_at": s["launched_at"],
            "OS-SRV-USG:terminated_at": None,
            "os-extended-volumes:volumes_attached": [],
        }

    def create_server(self, body, ctx):
        req = (body or {}).get("server")
        if not isinstance(req, dict):
            raise _fault(400, "Invalid input for field/attribute server.")
        name = req.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fault(400, "Invalid input for field/attribute name.")
        if req.get("block_device_mapping_v2") or req.get("block_device_mapping"):
            raise _fault(400, "Booting from volume is not supported by this stand-in.")
        if not req.get("flavorRef"):
            raise _fault(400, "Invalid input for field/attribute flavorRef.")
        try:
            flavor = self.find_flavor(str(req["flavorRef"]))
        except HTTPError:
            raise _fault(400, "Flavor %s could not be found." % req["flavorRef"])
        image_id = str(req.get("imageRef") or "").rstrip("/").rsplit("/", 1)[-1]
        if not image_id:
            raise _fault(400, "Block Device Mapping is Invalid: Boot sequence "
                         "for the instance and image/block device mapping "
                         "combination is not valid.")
        image = self.glance.get_image(ctx["token"], image_id)
        if image is None:
            raise _fault(400, "Image %s could not be found." % image_id)
        if image.get("status") != "active":
            raise _fault(400, "Image %s is not active." % image_id)
        key_name = req.get("key_name")
        if key_name:
            with self.lock:
                if (ctx["user_id"], key_name) not in self.keypairs:
                    raise _fault(400, "Invalid key_name provided.")
        groups = [g.get("name") for g in req.get("security_groups") or [] if isinstance(g, dict)]
        now = _now()
        server = {
            "id": str(uuid.uuid4()), "name": name,
            "project_id": ctx["project_id"], "user_id": ctx["user_id"],
            "image_id": image_id, "flavor_id": flavor[0],
            "key_name": key_name, "metadata": dict(req.get("metadata") or {}),
            "security_groups": groups or ["default"],
            "availability_zone": req.get("availability_zone") or "nova",
            "config_drive": "True" if req.get("config_drive") else "",
            "status": "BUILD", "vm_state": "building", "power_state": 0,
            "task_state": None, "progress": 0, "launched_at": None,
            "created": now, "updated": now,
        }
        with self.lock:
            self.servers[server["id"]] = server
        doc = {"id": server["id"], "links": self.server_links(server, ctx),
               "OS-DCF:diskConfig": "MANUAL",
               "security_groups": [{"name": g} for g in server["security_groups"]],
               "adminPass": base64.b32encode(os.urandom(10)).decode().rstrip("=")[:12]}
        location = "%s/v2.1/servers/%s" % (ctx["base"], server["id"])
        return 202, {"server": doc}, [("Location", location)]

    def server_action(self, server, body, ctx):
        if not isinstance(body, dict) or len(body) != 1:
            raise _fault(400, "Malformed request body")
        action, args = next(iter(body.items()))
        if action == "os-stop":
            with self.lock:
                if server["vm_state"] != "active":
                    raise _fault(409, "Cannot 'stop' instance %s while it is in "
                                 "vm_state %s" % (server["id"], server["vm_state"]))
                server.update(status="SHUTOFF", vm_state="stopped",
                              power_state=4, updated=_now())
            return 202, None, []
        if action == "os-start":
            with self.lock:
                if server["vm_state"] != "stopped":
                    raise _fault(409, "Cannot 'start' instance %s while it is in "
                                 "vm_state %s" % (server["id"], server["vm_state"]))
                server.update(status="ACTIVE", vm_state="active",
                              power_state=1, updated=_now())
            return 202, None, []
        if action == "createImage":
            return self.create_image(server, args, ctx)
        raise _fault(400, "There is no such action: %s" % action)

    def create_image(self, server, args, ctx):
        if not isinstance(args, dict) or not str(args.get("name") or "").strip():
            raise _fault(400, "Invalid input for field/attribute name.")
        if server["vm_state"] not in ("active", "stopped"):
            raise _fault(409, "Cannot 'createImage' instance %s while it is in "
                         "vm_state %s" % (server["id"], server["vm_state"]))
        token = ctx["token"]
        source = self.glance.get_image(token, server["image_id"]) or {}
        # Like Nova: inherit the source image's custom properties, then add
        # the snapshot's own, then the caller's metadata.
        props = {k: v for k, v in source.items()
                 if k not in GLANCE_CORE and isinstance(v, str)}
        props.update({
            "image_type": "snapshot",
            "instance_uuid": server["id"],
            "base_image_ref": server["image_id"],
            "user_id": ctx["user_id"],
        })
        for k, v in (args.get("metadata") or {}).items():
            props[str(k)] = str(v)
        flavor = self.find_flavor(server["flavor_id"])
        req = dict(props)
        req.update({
            "name": args["name"],
            "disk_format": source.get("disk_format") or "raw",
            "container_format": source.get("container_format") or "bare",
            "min_disk": max(flavor[4], int(source.get("min_disk") or 0)),
            "min_ram": int(source.get("min_ram") or 0),
        })
        status, image = self.glance.call("POST", "/v2/images", token, req)
        if status != 201:
            raise _fault(400 if status < 500 else 500,
                         "Glance refused the snapshot image: %s %s" % (status, image))
        image_id = image["id"]
        with self.lock:
            server.update(task_state="image_uploading", updated=_now())
        threading.Thread(target=self._upload, daemon=True,
                         args=(server, source.get("id"), image_id, token)).start()
        location = "%s/v2/images/%s" % (self.glance.base, image_id)
        doc = {"image_id": image_id} if ctx["version"] >= (2, 45) else None
        headers = [] if ctx["version"] >= (2, 45) else [("Location", location)]
        return 202, doc, headers

    def _upload(self, server, source_id, image_id, token):
        try:
            self.glance.copy_data(token, source_id, image_id)
            LOG.info("snapshot %s of server %s uploaded", image_id, server["id"])
        except Exception:  # noqa: BLE001 - Nova deletes a failed snapshot
            LOG.exception("snapshot %s of server %s failed; deleting it",
                          image_id, server["id"])
            try:
                self.glance.call("DELETE", "/v2/images/" + image_id, token)
            except Exception:  # noqa: BLE001
                LOG.exception("could not delete snapshot %s", image_id)
        finally:
            with self.lock:
                server.update(task_state=None, updated=_now())


def _generate_rsa():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public + " Generated-by-Nova"


def _base_url(environ):
    host = environ.get("HTTP_HOST") or "%s:%s" % (environ["SERVER_NAME"], environ["SERVER_PORT"])
    return "%s://%s" % (environ.get("wsgi.url_scheme", "http"), host)


def make_app():
    from keystonemiddleware import auth_token

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    region = os.environ.get("KILN_NOVA_REGION", "RegionOne")
    nova = Nova(os.environ["KILN_NOVA_GLANCE_URL"], region)
    protected = auth_token.AuthProtocol(nova, {
        "oslo_config_project": "nova",
        "oslo_config_file": os.environ["KILN_NOVA_CONF"],
    })

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path == "/network" or path.startswith("/network/"):
            # The catalogue's `network` endpoint: Packer 1.6.6 makes a
            # network client on every build (StepDiscoverNetwork) but only
            # calls it for network discovery or floating IPs. There is no
            # Neutron here; say so instead of pretending.
            payload = json.dumps({"NeutronError": {
                "type": "HTTPNotImplemented", "detail": "",
                "message": "Neutron is not part of kiln's local OpenStack "
                           "(hack/openstack): %s %s" % (environ["REQUEST_METHOD"], path)},
            }).encode()
            start_response("501 Not Implemented", [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload)))])
            return [payload]
        if environ["REQUEST_METHOD"] == "GET" and path in ("", "/v2.1"):
            base = _base_url(environ)
            if path:
                doc = {"version": nova.version_doc(base)}
            else:
                doc = {"versions": [nova.version_doc(base)]}
            payload = json.dumps(doc).encode()
            start_response("200 OK", [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload)))])
            return [payload]
        return protected(environ, start_response)

    LOG.info("nova stand-in for %s, glance at %s", region, nova.glance.base)
    return app


application = make_app() if os.environ.get("KILN_NOVA_GLANCE_URL") else None
