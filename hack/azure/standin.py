#!/usr/bin/env python3
"""Azure Resource Manager stand-in: Compute Gallery image versions and managed
images, the Microsoft.Compute resource provider (Providers_Get), Microsoft
Entra ID client-credentials tokens, and a control API. Every ARM request and
response is validated against the schemas that schemas.py loads (Azure's
Swagger, or the azure-mgmt-compute and azure-mgmt-resource SDKs).
Python standard library only; one process; state in memory. See README.md.

    python3 standin.py [--port 0] [--polls 1] [--retry-after 0] [--page-size 100]

Prints one JSON line on stdout once it listens; logs go to stderr.
"""

import argparse
import base64
import copy
import datetime
import json
import os
import re
import secrets
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schemas  # noqa: E402
import validate  # noqa: E402

# Region names ARM accepts here (lower-case, no spaces; "West Europe" is
# normalised to westeurope as ARM does). The ready line names the two the
# tests use; the others exist so that a multi-region build can be tried.
KNOWN_LOCATIONS = ["westeurope", "eastus2", "northeurope", "uksouth", "ukwest", "eastus", "westus2",
                   "centralus", "swedencentral", "germanywestcentral", "francecentral", "southeastasia"]
TEST_LOCATIONS = ["westeurope", "eastus2"]
# How ARM spells them in Providers_Get (display names, as real ARM answers).
LOCATION_DISPLAY_NAMES = {
    "westeurope": "West Europe", "eastus2": "East US 2", "northeurope": "North Europe", "uksouth": "UK South",
    "ukwest": "UK West", "eastus": "East US", "westus2": "West US 2", "centralus": "Central US",
    "swedencentral": "Sweden Central", "germanywestcentral": "Germany West Central",
    "francecentral": "France Central", "southeastasia": "Southeast Asia"}
# The resource types Providers_Get lists for Microsoft.Compute (those served
# here), with the key of api_versions() whose api-version they take.
PROVIDER_RESOURCE_TYPES = [("galleries", "galleries"), ("galleries/images", "galleries"),
                           ("galleries/images/versions", "galleries"), ("images", "images")]
ARM_SCOPES = {"https://management.azure.com/.default", "https://management.azure.com//.default",
              "https://management.core.windows.net/.default", "https://management.core.windows.net//.default"}
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
VERSION_NAME = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
TAG_KEY_FORBIDDEN = set("<>%&\\?/")

TYPE_OF = {"gallery": "Microsoft.Compute/galleries", "galleryImage": "Microsoft.Compute/galleries/images",
           "galleryImageVersion": "Microsoft.Compute/galleries/images/versions", "image": "Microsoft.Compute/images"}


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0+00:00"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def norm_location(s):
    return s.replace(" ", "").lower() if isinstance(s, str) else s


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class HttpError(Exception):
    def __init__(self, status, code, message, target=None, headers=None, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target
        self.headers = headers or {}
        self.details = details

    def body(self):
        e = {"code": self.code, "message": self.message}
        if self.target:
            e["target"] = self.target
        if self.details:
            e["details"] = self.details
        return {"error": e}


class State:
    """Everything the stand-in knows, under one lock."""

    def __init__(self, args, catalog):
        self.lock = threading.RLock()
        self.args = args
        self.cat = catalog
        self.polls = args.polls
        self.retry_after = args.retry_after
        self.page_size = args.page_size
        self.strict = not args.no_strict
        self.tenant = args.tenant or str(uuid.uuid4())
        self.subscription = args.subscription or str(uuid.uuid4())
        self.other_subscription = str(uuid.uuid4())
        self.resource_group = args.resource_group
        self.principals = {}
        self.tokens = {}
        self.counters = {k: 0 for k in ("requests", "request_validation_failures", "response_validation_failures",
                                        "auth_failures", "forbidden", "tokens_issued", "token_failures",
                                        "not_implemented", "unknown_paths", "crashes")}
        self.main = self.add_principal([self.subscription], client_id=args.client_id, secret=args.client_secret,
                                       name="kiln-test")
        self.reset()

    def reset(self):
        self.resources = {}     # lower-case ARM id -> {"kind", "body"}
        self.groups = {(self.subscription.lower(), self.resource_group.lower()): self.resource_group,
                       (self.other_subscription.lower(), "kiln-other"): "kiln-other"}
        self.operations = {}
        self.fail_next = []     # [{"operation", "type", "code", "message", "http"}]
        self.malform = 0        # break the next N ARM response bodies (to show the response check)
        self.calls = {}
        self.requests = []
        self.seq = 0
        gal = self.put_gallery(self.subscription, self.resource_group, self.args.gallery, "westeurope", {})
        assert gal
        self.put_image_definition(self.subscription, self.resource_group, self.args.gallery,
                                  self.args.image_definition, "westeurope", {})

    # ---- identities

    def add_principal(self, subscriptions, client_id=None, secret=None, name=None, federated_subjects=None):
        cid = client_id or str(uuid.uuid4())
        p = {"client_id": cid, "client_secret": secret or ("kiln~" + secrets.token_urlsafe(30)),
             "object_id": str(uuid.uuid4()), "name": name or f"principal-{len(self.principals) + 1}",
             "subscriptions": [s.lower() for s in subscriptions], "federated_subjects": federated_subjects or []}
        self.principals[cid.lower()] = p
        return p

    def issue_token(self, principal):
        t = now()
        exp = int(t.timestamp()) + 3599
        claims = {"aud": "https://management.azure.com", "iss": f"https://sts.windows.net/{self.tenant}/",
                  "iat": int(t.timestamp()), "nbf": int(t.timestamp()), "exp": exp, "appid": principal["client_id"],
                  "oid": principal["object_id"], "sub": principal["object_id"], "tid": self.tenant,
                  "jti": str(uuid.uuid4()), "ver": "1.0", "idtyp": "app"}
        token = ".".join([b64url(json.dumps({"typ": "JWT", "alg": "none", "kid": "kiln-standin"}).encode()),
                          b64url(json.dumps(claims).encode()), b64url(b"kiln-azure-standin")])
        self.tokens[token] = {"principal": principal["client_id"].lower(), "exp": exp}
        self.counters["tokens_issued"] += 1
        return token, 3599

    # ---- resources

    def rid(self, sub, rg, *parts):
        return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/" + "/".join(parts)

    def get(self, rid):
        return self.resources.get(rid.lower())

    def put(self, rid, kind, body):
        self.resources[rid.lower()] = {"kind": kind, "body": body}

    def children(self, prefix, kind):
        pre = prefix.lower() + "/"
        return [r for k, r in self.resources.items() if r["kind"] == kind and k.startswith(pre)
                and "/" not in k[len(pre):]]

    def group_name(self, sub, rg):
        return self.groups.get((sub.lower(), rg.lower()))

    def put_gallery(self, sub, rg, name, location, tags, description=None):
        rgn = self.group_name(sub, rg)
        if rgn is None:
            return None
        rid = self.rid(sub, rgn, "galleries", name)
        props = {"identifier": {"uniqueName": f"{sub}-{name.upper()}"}, "provisioningState": "Succeeded"}
        if description:
            props["description"] = description
        body = {"id": rid, "name": name, "type": TYPE_OF["gallery"], "location": location, "properties": props}
        if tags:
            body["tags"] = dict(tags)
        self.put(rid, "gallery", body)
        return body

    def put_image_definition(self, sub, rg, gallery, name, location, tags, os_type="Linux", os_state="Generalized",
                             hyperv="V2", identifier=None, architecture="x64"):
        g = self.get(self.rid(sub, rg, "galleries", gallery))
        if g is None:
            return None
        rid = g["body"]["id"] + "/images/" + name
        body = {"id": rid, "name": name, "type": TYPE_OF["galleryImage"], "location": location,
                "properties": {"osType": os_type, "osState": os_state, "hyperVGeneration": hyperv,
                               "architecture": architecture,
                               "identifier": identifier or {"publisher": "kiln", "offer": "kiln-test", "sku": name},
                               "provisioningState": "Succeeded"}}
        if tags:
            body["tags"] = dict(tags)
        self.put(rid, "galleryImage", body)
        return body


class Operation:
    def __init__(self, state, kind, action, rid, location, api_version, fail):
        self.id = str(uuid.uuid4())
        self.kind, self.action, self.rid, self.location = kind, action, rid, location
        self.api_version = api_version
        self.fail = fail
        self.status = "InProgress"
        self.polls = 0
        self.needed = state.polls
        self.start = now()
        self.end = None
        self.error = None
        sub = rid.split("/")[2]
        leaf = "capsOperations" if kind != "image" else "operations"
        self.path = f"/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/{leaf}/{self.id}"

    def status_body(self):
        b = {"name": self.id, "status": self.status, "startTime": iso(self.start)}
        if self.end:
            b["endTime"] = iso(self.end)
        if self.error:
            b["error"] = {"code": self.error["code"], "message": self.error["message"]}
        return b

    def describe(self):
        return {"id": self.id, "kind": self.kind, "action": self.action, "resource": self.rid, "status": self.status,
                "polls": self.polls, "polls_needed": self.needed, "error": self.error}


class StandIn:
    def __init__(self, args):
        t0 = time.time()
        self.catalog, self.schema_source = schemas.load()
        log(f"schemas: {self.schema_source} ({len(self.catalog.operations)} operations, "
            f"{len(self.catalog.models)} models, {time.time() - t0:.2f}s)")
        self.state = State(args, self.catalog)
        self.routes = []
        for op in self.catalog.operations:
            segs = [s for s in op["path"].split("/") if s]
            rx = "^/" + "/".join("([^/]+)" if s.startswith("{") else re.escape(s) for s in segs) + "/?$"
            names = [s[1:-1] for s in segs if s.startswith("{")]
            literals = sum(1 for s in segs if not s.startswith("{"))
            self.routes.append((re.compile(rx, re.IGNORECASE), names, literals, op))
        self.routes.sort(key=lambda r: -r[2])
        self.status_schema = schemas.operation_status_schema()
        if "ApiError" not in self.catalog.models:
            self.catalog.models["ApiError"] = self.catalog.models.get("ComputeRP.ApiError")
        self.api_url = ""

    # ------------------------------------------------------------ helpers

    def op_by_id(self, op_id):
        return next(o for o in self.catalog.operations if o["id"] == op_id)

    def api_versions(self):
        out = {}
        for o in self.catalog.operations:
            out.setdefault(o["id"].split("_")[0], o["api_version"])
        return {"galleries": out.get("GalleryImageVersions"), "images": out.get("Images"),
                "providers": out.get("Providers")}

    def match(self, method, path):
        """(op, params) for the path, or (None, methods that exist for it)."""
        methods = []
        for rx, names, _, op in self.routes:
            m = rx.match(path)
            if m:
                if op["method"] == method:
                    return op, dict(zip(names, m.groups()))
                methods.append(op["method"])
        return None, methods


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-azure-standin"
    sys_version = ""

    def log_message(self, fmt, *a):
        pass

    # ------------------------------------------------------------ plumbing

    @property
    def si(self):
        return self.server.standin

    @property
    def st(self):
        return self.server.standin.state

    def base_url(self):
        return self.si.api_url

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=None, headers=None, ctype="application/json; charset=utf-8"):
        data = b""
        if body is not None:
            data = (json.dumps(body) if not isinstance(body, (bytes, str)) else body)
            data = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("x-ms-correlation-request-id", self.headers.get("x-ms-correlation-request-id") or str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)
        self.last_status = status

    def send_checked(self, status, schema, body, headers=None):
        """For the answers no Swagger describes (Entra ID): a hand-written schema."""
        problems = validate.check(self.st.cat, schema, body, "response") if self.st.strict else []
        if problems:
            with self.st.lock:
                self.st.counters["response_validation_failures"] += 1
            log(f"RESPONSE INVALID (a stand-in bug) for {self.path} {status}: {problems}")
            status, body = 500, {"error": "server_error", "error_description": f"stand-in bug: {problems}"}
        self.send(status, body, headers)

    def do_GET(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def dispatch(self):
        t0 = time.time()
        u = urlsplit(self.path)
        self.last_status = 0
        self.op_id = None
        raw = b""
        try:
            raw = self.read_body()
            path = re.sub(r"^/{2,}", "/", u.path)  # a base URL joined with an extra slash
            if path.startswith("/_control"):
                self.control(path[len("/_control"):].strip("/"), u.query, raw)
            elif re.match(r"^/[^/]+/oauth2/v2\.0/token/?$", path):
                self.token(path.split("/")[1], raw)
            elif re.match(r"^/[^/]+/v2\.0/\.well-known/openid-configuration/?$", path) or \
                    re.match(r"^/[^/]+/\.well-known/openid-configuration/?$", path):
                self.openid(path.split("/")[1])
            elif path.rstrip("/") == "/common/discovery/instance":
                self.send(200, {"tenant_discovery_endpoint":
                                f"{self.base_url()}{{tenant}}/v2.0/.well-known/openid-configuration",
                                "api-version": "1.1", "metadata": []})
            elif path.lower().startswith("/subscriptions/"):
                with self.st.lock:
                    self.st.counters["requests"] += 1
                self.arm(path, u.query, raw)
            else:
                with self.st.lock:
                    self.st.counters["unknown_paths"] += 1
                self.send(404, {"error": {"code": "NotFound", "message": f"no such endpoint: {path}"}})
        except BrokenPipeError:
            pass
        except Exception as e:  # a stand-in bug: say so loudly
            traceback.print_exc()
            with self.st.lock:
                self.st.counters["crashes"] += 1
            try:
                self.send(500, {"error": {"code": "InternalServerError", "message": f"stand-in crash: {e!r}"}})
            except Exception:
                pass
        if not u.path.startswith("/_control"):
            with self.st.lock:
                self.st.seq += 1
                self.st.requests.append({"seq": self.st.seq, "method": self.command, "path": u.path, "query": u.query,
                                         "operation": self.op_id, "status": self.last_status,
                                         "ms": round((time.time() - t0) * 1000, 2),
                                         "body": raw[:4096].decode(errors="replace") if raw else None})
                del self.st.requests[:-2000]

    # ------------------------------------------------------------ Entra ID

    def aad_error(self, status, error, code, text):
        t = now()
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        desc = (f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\n"
                f"Timestamp: {t.strftime('%Y-%m-%d %H:%M:%SZ')}")
        with self.st.lock:
            self.st.counters["token_failures"] += 1
        self.send_checked(status, schemas.aad_error_schema(), {"error": error, "error_description": desc, "error_codes": [code],
                           "timestamp": t.strftime("%Y-%m-%d %H:%M:%SZ"), "trace_id": trace, "correlation_id": corr,
                           "error_uri": f"{self.base_url()}error?code={code}"})

    def token(self, tenant, raw):
        self.op_id = "Token"
        self.count("Token")
        st = self.st
        if self.command != "POST":
            return self.aad_error(405, "invalid_request", 900561, "The endpoint only accepts POST requests.")
        if tenant.lower() not in (st.tenant.lower(), "organizations") :
            return self.aad_error(400, "invalid_request", 90002,
                                  f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                                  "and are signing into the correct cloud.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self.aad_error(400, "invalid_request", 900144,
                                  "The request body must contain the following parameter: 'grant_type'.")
        form = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            if not form.get("grant_type"):
                return self.aad_error(400, "invalid_request", 900144,
                                      "The request body must contain the following parameter: 'grant_type'.")
            return self.aad_error(400, "unsupported_grant_type", 70003,
                                  f"The app requested an unsupported grant type '{form['grant_type']}'.")
        cid = form.get("client_id", "")
        if not cid:
            return self.aad_error(400, "invalid_request", 900144,
                                  "The request body must contain the following parameter: 'client_id'.")
        with st.lock:
            p = st.principals.get(cid.lower())
        if p is None:
            return self.aad_error(400, "unauthorized_client", 700016,
                                  f"Application with identifier '{cid}' was not found in the directory "
                                  f"'{st.tenant}'.")
        scope = form.get("scope", "")
        if not scope:
            return self.aad_error(400, "invalid_request", 900144,
                                  "The request body must contain the following parameter: 'scope'.")
        if not set(scope.split()) <= ARM_SCOPES:
            return self.aad_error(400, "invalid_scope", 1002012,
                                  f"The provided value for scope {scope} is not valid. Client credential flows "
                                  "must have a scope value with /.default suffixed to the resource identifier "
                                  "(application ID URI); this stand-in only issues tokens for "
                                  "https://management.azure.com/.default.")
        if "client_secret" in form:
            if not secrets.compare_digest(form["client_secret"], p["client_secret"]):
                return self.aad_error(401, "invalid_client", 7000215,
                                      "Invalid client secret provided. Ensure the secret being sent in the request "
                                      "is the client secret value, not the client secret ID, for a secret added to "
                                      f"app '{cid}'.")
        elif "client_assertion" in form:
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                return self.aad_error(400, "invalid_request", 50027,
                                      f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}.")
            problem = self.check_assertion(form["client_assertion"], p)
            if problem:
                return self.aad_error(*problem)
        else:
            return self.aad_error(401, "invalid_client", 7000218,
                                  "The request body must contain the following parameter: 'client_assertion' "
                                  "or 'client_secret'.")
        with st.lock:
            token, ttl = st.issue_token(p)
        self.send_checked(200, schemas.token_response_schema(), {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token},
                  headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def check_assertion(self, assertion, p):
        """Workload identity federation: a well-formed JWT, loosely checked (no signature)."""
        parts = assertion.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not three parts")
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            if not isinstance(header, dict) or "alg" not in header or not isinstance(claims, dict):
                raise ValueError("no alg")
        except Exception:
            return (400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        token_url = f"{self.base_url()}{self.st.tenant}/oauth2/v2.0/token"
        if not any(isinstance(a, str) and ("AzureADTokenExchange" in a or a.rstrip("/") == token_url.rstrip("/"))
                   for a in auds):
            return (400, "invalid_client", 700212,
                    f"No matching federated identity record found for presented assertion audience '{aud}'.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return (400, "invalid_client", 700211, "No matching federated identity record found for presented "
                                                   "assertion issuer: the assertion has no subject.")
        if p["federated_subjects"] and sub not in p["federated_subjects"]:
            return (400, "invalid_client", 70021,
                    f"No matching federated identity record found for presented assertion. Assertion Subject: "
                    f"'{sub}'. Assertion Audience: '{aud}'.")
        exp = claims.get("exp")
        if exp is not None and (not isinstance(exp, (int, float)) or exp < time.time()):
            return (400, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        return None

    def openid(self, tenant):
        b = self.base_url()
        t = self.st.tenant if tenant in ("common", "organizations") else tenant
        self.send(200, {"token_endpoint": f"{b}{t}/oauth2/v2.0/token",
                        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                                  "client_secret_basic"],
                        "jwks_uri": f"{b}{t}/discovery/v2.0/keys", "response_modes_supported": ["query", "fragment",
                                                                                               "form_post"],
                        "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
                        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                        "scopes_supported": ["openid", "profile", "email", "offline_access"],
                        "issuer": f"{b}{t}/v2.0", "request_uri_parameter_supported": False,
                        "authorization_endpoint": f"{b}{t}/oauth2/v2.0/authorize",
                        "device_authorization_endpoint": f"{b}{t}/oauth2/v2.0/devicecode",
                        "tenant_region_scope": "EU", "cloud_instance_name": "kiln.standin"})

    # ------------------------------------------------------------ ARM front door

    def count(self, op_id):
        with self.st.lock:
            self.st.calls[op_id] = self.st.calls.get(op_id, 0) + 1

    def arm(self, path, query, raw):
        st = self.st
        params = parse_qsl(query, keep_blank_values=True)
        try:
            principal = self.authenticate()
            segs = path.split("/")
            sub = segs[2] if len(segs) > 2 else ""
            self.authorize(principal, sub)
            m = re.match(r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/([^/]+)/"
                         r"(capsOperations|operations)/([^/]+)/?$", path, re.IGNORECASE)
            if m:
                return self.operation_status(m.group(3), params, m.group(2))
            op, pp = self.si.match(self.command, path)
            if op is None:
                self.reject_path(path, pp)
            self.op_id = op["id"]
            self.count(op["id"])
            q = self.check_query(op, params, pp)
            body = self.check_body(op, raw)
            handler = getattr(self, "op_" + op["id"], None)
            if handler is None:
                with st.lock:
                    st.counters["not_implemented"] += 1
                raise HttpError(501, "NotImplemented",
                                f"stand-in: {op['id']} ({op['method']} {op['path']}) is in the "
                                f"{'Swagger' if op['source'] == 'swagger' else 'SDK'} but not implemented here")
            with st.lock:
                status, out, headers = handler(op, pp, q, body)
            self.respond(op, status, out, headers)
        except HttpError as e:
            if e.status == 400 and e.code in ("InvalidRequestContent", "InvalidParameter", "MissingApiVersionParameter",
                                              "NoRegisteredProviderFound", "InvalidApiVersionParameter",
                                              "InvalidResourceType",
                                              "InvalidQueryParameter", "UnsupportedMediaType"):
                with st.lock:
                    st.counters["request_validation_failures"] += 1
            op = self.si.op_by_id(self.op_id) if self.op_id else None
            self.respond(op, e.status, e.body(), e.headers)

    def respond(self, op, status, body, headers=None):
        """Checks the answer against the operation's responses, then sends it."""
        st = self.st
        with st.lock:
            if st.malform > 0 and isinstance(body, dict) and op is not None:
                st.malform -= 1
                body = dict(body, kilnMalformed=True)
        if st.strict:
            if op is not None:
                problems = self.check_response(op, status, body, headers or {})
            elif body is not None:  # an error before any operation was found
                problems = validate.check(st.cat, schemas.arm_error_schema(), body, "response")
            else:
                problems = [{"target": "(body)", "message": "an answer outside any operation needs a body"}]
            if problems:
                with st.lock:
                    st.counters["response_validation_failures"] += 1
                msg = "; ".join(f"{p['target']}: {p['message']}" for p in problems[:10])
                log(f"RESPONSE INVALID (a stand-in bug) for {op['id'] if op else self.path} {status}: {msg}\n"
                    f"    body: {json.dumps(body)[:2000]}")
                status, headers = 500, {}
                body = {"error": {"code": "InternalServerError",
                                  "message": f"stand-in bug: the {status} response of "
                                             f"{op['id'] if op else self.path} does not match its schema: {msg}"}}
        self.send(status, body, headers)

    def check_response(self, op, status, body, headers):
        resps = op["responses"]
        key = str(status)
        if key not in resps:
            if status < 400 or "default" not in resps:
                return [{"target": "(status)", "message": f"status {status} is not declared "
                                                          f"(declared: {', '.join(sorted(resps))})"}]
            key = "default"
        schema = resps[key]
        problems = []
        if schema is None and body is not None:
            problems.append({"target": "(body)", "message": f"status {status} declares no body"})
        elif schema is not None:
            if body is None:
                problems.append({"target": "(body)", "message": f"status {status} needs a body"})
            else:
                problems += validate.check(self.st.cat, schema, body, "response")
        for h, hs in (op["headers"].get(key) or {}).items():
            v = headers.get(h)
            if v is not None:
                problems += validate.check_string(self.st.cat, hs, str(v), "header " + h)
        return problems

    def authenticate(self):
        st = self.st
        auth = self.headers.get("Authorization")
        www = f'Bearer authorization_uri="{self.base_url()}{st.tenant}", error="invalid_token", ' \
              f'error_description="{{}}"'
        if not auth:
            with st.lock:
                st.counters["auth_failures"] += 1
            raise HttpError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                            headers={"WWW-Authenticate": www.format("The authentication failed because of missing "
                                                                    "'Authorization' header.")})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            with st.lock:
                st.counters["auth_failures"] += 1
            raise HttpError(401, "AuthenticationFailedInvalidHeader",
                            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                            headers={"WWW-Authenticate": www.format("The authentication scheme is not Bearer.")})
        with st.lock:
            t = st.tokens.get(token.strip())
            if t is None:
                st.counters["auth_failures"] += 1
                raise HttpError(401, "InvalidAuthenticationToken", "The access token is invalid.",
                                headers={"WWW-Authenticate": www.format("The access token is invalid.")})
            if t["exp"] < time.time():
                st.counters["auth_failures"] += 1
                raise HttpError(401, "ExpiredAuthenticationToken",
                                "The access token expiry UTC time '"
                                + datetime.datetime.fromtimestamp(t["exp"], datetime.timezone.utc).strftime(
                                    "%m/%d/%Y %I:%M:%S %p") + "' is earlier than current UTC time.",
                                headers={"WWW-Authenticate": www.format("The access token has expired.")})
            return st.principals[t["principal"]]

    def authorize(self, p, sub):
        st = self.st
        if not re.match(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", sub):
            raise HttpError(400, "InvalidSubscriptionId", f"The provided subscription identifier '{sub}' is malformed "
                                                          "or invalid.")
        if sub.lower() in p["subscriptions"]:
            return
        with st.lock:
            st.counters["forbidden"] += 1
        if sub.lower() not in (st.subscription.lower(), st.other_subscription.lower()):
            raise HttpError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        action = self.action_name()
        raise HttpError(403, "AuthorizationFailed",
                        f"The client '{p['client_id']}' with object id '{p['object_id']}' does not have authorization "
                        f"to perform action '{action}' over scope '{urlsplit(self.path).path}' or the scope is "
                        "invalid. If access was recently granted, please refresh your credentials.")

    def action_name(self):
        path = urlsplit(self.path).path
        if re.match(r"^/subscriptions/[^/]+/providers/[^/]+/?$", path, re.IGNORECASE):
            return "Microsoft.Resources/subscriptions/providers/read"
        m = re.search(r"/providers/(Microsoft\.\w+)/(.*)$", path, re.IGNORECASE)
        if not m:
            return "Microsoft.Resources/subscriptions/read"
        parts = m.group(2).split("/")
        types = "/".join(parts[0::2])
        verb = {"GET": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(self.command, "action")
        return f"{m.group(1)}/{types}/{verb}"

    def reject_path(self, path, methods):
        with self.st.lock:
            self.st.counters["unknown_paths"] += 1
        if methods:
            raise HttpError(405, "MethodNotAllowed",
                            f"The resource type does not support the HTTP method '{self.command}' at '{path}'; "
                            f"it supports {', '.join(sorted(set(methods)))}.")
        m = re.search(r"/providers/([^/]+)/(.*)$", path)
        rtype = "/".join(m.group(2).split("/")[0::2]) if m else path
        ns = m.group(1) if m else "Microsoft.Resources"
        raise HttpError(400, "InvalidResourceType",
                        f"The resource type '{rtype}' could not be found in the namespace '{ns}' for api version "
                        f"'{dict(parse_qsl(urlsplit(self.path).query)).get('api-version', '')}' (no operation of "
                        f"the stand-in's schemas matches {self.command} {path}).")

    def check_query(self, op, params, pp):
        seen = {}
        for k, v in params:
            if k in seen:
                raise HttpError(400, "InvalidQueryParameter", f"The query parameter '{k}' is given more than once.")
            seen[k] = v
        api = seen.get("api-version")
        if api is None:
            raise HttpError(400, "MissingApiVersionParameter",
                            "The api-version query parameter (?api-version=) is required for all requests.")
        if api != op["api_version"] and "/providers/Microsoft." not in op["path"]:
            # Microsoft.Resources itself (Providers_Get): ARM's own answer
            raise HttpError(400, "InvalidApiVersionParameter",
                            f"The api-version '{api}' is invalid. The supported versions are '{op['api_version']}' "
                            f"(the stand-in's {'Swagger' if op['source'] == 'swagger' else 'SDK'} schemas).")
        if api != op["api_version"]:
            rtype = "/".join([s for s in op["path"].split("/providers/")[-1].split("/")][1::2])
            raise HttpError(400, "NoRegisteredProviderFound",
                            f"No registered resource provider found for location 'westeurope' and API version "
                            f"'{api}' for type '{rtype}'. The supported api-versions are '{op['api_version']}' "
                            f"(the stand-in's {'Swagger' if op['source'] == 'swagger' else 'SDK'} schemas).")
        declared = op["params"]["query"]
        problems = []
        for k, v in seen.items():
            if k == "api-version":
                continue
            if k == "$skiptoken" and op["pageable"]:
                continue  # our own nextLink's; the spec does not declare what a nextLink carries
            if k not in declared:
                raise HttpError(400, "InvalidQueryParameter",
                                f"The query parameter '{k}' is not declared for {op['id']} "
                                f"(declared: {', '.join(sorted(declared))}).")
            problems += validate.check_string(self.st.cat, declared[k], v, k)
        for k, s in declared.items():
            if s.get("required") and k not in seen:
                problems.append({"code": "InvalidParameter", "target": k,
                                 "message": f"the query parameter '{k}' is required"})
        for name, raw in pp.items():
            s = op["params"]["path"].get(name)
            if s:
                problems += validate.check_string(self.st.cat, s, raw, name)
        if problems:
            raise HttpError(400, "InvalidParameter", problems[0]["message"], target=problems[0]["target"],
                            details=[{"code": p["code"], "target": p["target"], "message": p["message"]}
                                     for p in problems])
        return seen

    def check_body(self, op, raw):
        if not raw.strip():
            if op["body"] is not None and op["body_required"]:
                raise HttpError(400, "InvalidRequestContent",
                                f"The request content is empty: {op['id']} needs a JSON body.")
            return None
        if op["body"] is None:
            raise HttpError(400, "InvalidRequestContent", f"{op['id']} takes no request body.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "UnsupportedMediaType",
                            f"The content media type '{ctype or '(none)'}' is not supported. Only "
                            "'application/json' is supported.")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise HttpError(400, "InvalidRequestContent",
                            f"The request content was invalid and could not be deserialized: {e}.")
        problems = validate.check(self.st.cat, op["body"], body, "request")
        if problems:
            raise HttpError(400, "InvalidRequestContent",
                            f"The request content was invalid: {problems[0]['message']}"
                            + (f" (and {len(problems) - 1} more problem(s), see details)" if len(problems) > 1 else ""),
                            target=problems[0]["target"],
                            details=[{"code": p["code"], "target": p["target"], "message": p["message"]}
                                     for p in problems])
        return body

    # ------------------------------------------------------------ semantics helpers

    def group(self, pp):
        st = self.st
        name = st.group_name(pp["subscriptionId"], pp["resourceGroupName"])
        if name is None:
            raise HttpError(404, "ResourceGroupNotFound", f"Resource group '{pp['resourceGroupName']}' could not "
                                                          "be found.")
        return name

    def not_found(self, kind, pp, name_path):
        raise HttpError(404, "ResourceNotFound",
                        f"The Resource '{TYPE_OF[kind].split('/')[0]}/{name_path}' under resource group "
                        f"'{pp['resourceGroupName']}' was not found. For more details please go to "
                        "https://aka.ms/ARMResourceNotFoundFix")

    def gallery(self, pp):
        rg = self.group(pp)
        g = self.st.get(self.st.rid(pp["subscriptionId"], rg, "galleries", pp["galleryName"]))
        return g

    def image_definition(self, pp, parent_missing_status=404):
        g = self.gallery(pp)
        if g is None:
            raise HttpError(404, "ParentResourceNotFound",
                            f"Can not perform requested operation on nested resource. Parent resource "
                            f"'{pp['galleryName']}' not found.")
        d = self.st.get(g["body"]["id"] + "/images/" + pp["galleryImageName"])
        return g, d

    def location(self, value, target, rtype):
        loc = norm_location(value)
        if loc not in KNOWN_LOCATIONS:
            raise HttpError(400, "LocationNotAvailableForResourceType",
                            f"The provided location '{value}' is not available for resource type '{rtype}'. "
                            f"List of available regions for the resource type is '{','.join(KNOWN_LOCATIONS)}'.",
                            target=target)
        return loc

    def check_tags(self, tags):
        if not tags:
            return
        if len(tags) > 50:
            raise HttpError(400, "InvalidTag", "The number of tags exceeds the limit of 50.")
        for k, v in tags.items():
            if len(k) > 512 or set(k) & TAG_KEY_FORBIDDEN or not k.strip():
                raise HttpError(400, "InvalidTagNameCharacters",
                                f"The tag names '{k}' have reserved characters '<,>,%,&,\\,?,/' or control "
                                "characters, or are longer than 512 characters.")
            if v is not None and len(v) > 256:
                raise HttpError(400, "InvalidTag", f"The value of tag '{k}' is longer than 256 characters.")

    def start_operation(self, kind, action, rid, location, op):
        st = self.st
        fail = None
        for i, f in enumerate(st.fail_next):
            if f["operation"] == action and f.get("type") in (None, "", kind):
                fail = st.fail_next.pop(i)
                break
        o = Operation(st, kind, action, rid, location, op["api_version"], fail)
        st.operations[o.id] = o
        if o.needed <= 0:
            self.finish_operation(o)
        q = urlencode({"api-version": o.api_version})
        headers = {"Azure-AsyncOperation": f"{self.base_url().rstrip('/')}{o.path}?{q}",
                   "Retry-After": st.retry_after}
        if action == "delete":
            headers["Location"] = f"{self.base_url().rstrip('/')}{o.path}?monitor=true&{q}"
        return o, headers

    def finish_operation(self, o):
        st = self.st
        o.end = now()
        r = st.get(o.rid)
        if o.fail:
            o.status = "Failed"
            o.error = {"code": o.fail.get("code") or "InternalExecutionError",
                       "message": o.fail.get("message") or
                       f"The {o.action} operation on '{o.rid}' failed halfway (injected by the stand-in's "
                       "/_control/fail-next)."}
            if r is not None:
                r["body"]["properties"]["provisioningState"] = "Failed"
                self.replication(r, "Failed")
            return
        o.status = "Succeeded"
        if o.action == "delete":
            st.resources.pop(o.rid.lower(), None)
        elif r is not None:
            r["body"]["properties"]["provisioningState"] = "Succeeded"
            self.replication(r, "Completed")

    def replication(self, r, state):
        if r["kind"] != "galleryImageVersion":
            return
        regions = r["body"]["properties"].get("publishingProfile", {}).get("targetRegions", [])
        r["replication"] = {"aggregatedState": "Completed" if state == "Completed" else
                            ("Failed" if state == "Failed" else "InProgress"),
                            "summary": [{"region": t["name"], "state": state,
                                         "details": "" if state != "Failed" else "Replication failed (injected).",
                                         "progress": 100 if state == "Completed" else 0} for t in regions]}

    def operation_status(self, op_id, params, leaf):
        st = self.st
        self.op_id = None
        q = dict(params)
        with st.lock:
            o = st.operations.get(op_id)
            if o is None:
                raise HttpError(404, "NotFound", f"The operation '{op_id}' was not found.")
            monitor = q.get("monitor") == "true"
            self.count("OperationResults_Get" if monitor else "OperationStatus_Get")
            if q.get("api-version") != o.api_version:
                raise HttpError(400, "InvalidApiVersionParameter" if q.get("api-version") else
                                "MissingApiVersionParameter",
                                f"The api-version '{q.get('api-version', '')}' is invalid for this operation; "
                                f"use '{o.api_version}'.")
            if o.status == "InProgress":
                o.polls += 1
                if o.polls >= o.needed:
                    self.finish_operation(o)
            if monitor:  # the Location header: 202 until done, then the outcome
                if o.status == "InProgress":
                    return self.send(202, None, {"Location": f"{self.base_url().rstrip('/')}{o.path}?"
                                                             f"monitor=true&api-version={o.api_version}",
                                                 "Retry-After": st.retry_after})
                if o.status == "Failed":
                    body = {"error": dict(o.error)}
                    problems = validate.check(st.cat, {"type": "object", "properties": {"error": {"ref": "ApiError"}}},
                                              body, "response")
                    assert not problems, problems
                    return self.send(int((o.fail or {}).get("http") or 400), body)
                if o.action == "delete":
                    return self.send(200, None)
                r = st.get(o.rid)
                return self.send(200, self.render(r, {}) if r else None)
            body = o.status_body()
            problems = validate.check(st.cat, self.si.status_schema, body, "response")
            if problems:
                st.counters["response_validation_failures"] += 1
                log(f"RESPONSE INVALID (a stand-in bug) for the operation status: {problems}")
                return self.send(500, {"error": {"code": "InternalServerError", "message": str(problems)}})
            headers = {"Retry-After": st.retry_after} if o.status == "InProgress" else {}
            self.send(200, body, headers)

    def render(self, r, q):
        body = copy.deepcopy(r["body"])
        if r["kind"] == "galleryImageVersion" and q.get("$expand") == "ReplicationStatus":
            body["properties"]["replicationStatus"] = copy.deepcopy(
                r.get("replication") or {"aggregatedState": "InProgress", "summary": []})
        return body

    def page(self, items, q, op):
        st = self.st
        try:
            start = int(q.get("$skiptoken") or 0)
        except ValueError:
            raise HttpError(400, "InvalidParameter", "The $skiptoken is invalid.", target="$skiptoken")
        size = max(1, st.page_size)
        out = {"value": items[start:start + size]}
        if start + size < len(items):
            nq = {k: v for k, v in q.items() if k != "$skiptoken"}
            nq["$skiptoken"] = str(start + size)
            out["nextLink"] = f"{self.base_url().rstrip('/')}{urlsplit(self.path).path}?{urlencode(nq)}"
        return out

    # ------------------------------------------------------------ operations: galleries

    def op_Galleries_Get(self, op, pp, q, body):
        g = self.gallery(pp)
        if g is None:
            self.not_found("gallery", pp, f"galleries/{pp['galleryName']}")
        return 200, self.render(g, q), {}

    def op_Galleries_ListByResourceGroup(self, op, pp, q, body):
        rg = self.group(pp)
        pre = f"/subscriptions/{pp['subscriptionId']}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries"
        items = [self.render(r, {}) for r in self.st.children(pre, "gallery")]
        return 200, self.page(sorted(items, key=lambda b: b["name"].lower()), q, op), {}

    def op_Galleries_List(self, op, pp, q, body):
        sub = pp["subscriptionId"].lower()
        items = [self.render(r, {}) for k, r in self.st.resources.items()
                 if r["kind"] == "gallery" and k.startswith(f"/subscriptions/{sub}/")]
        return 200, self.page(sorted(items, key=lambda b: b["id"].lower()), q, op), {}

    def op_GalleryImages_Get(self, op, pp, q, body):
        _, d = self.image_definition(pp)
        if d is None:
            self.not_found("galleryImage", pp, f"galleries/{pp['galleryName']}/images/{pp['galleryImageName']}")
        return 200, self.render(d, q), {}

    def op_GalleryImages_ListByGallery(self, op, pp, q, body):
        g = self.gallery(pp)
        if g is None:
            self.not_found("gallery", pp, f"galleries/{pp['galleryName']}")
        items = [self.render(r, {}) for r in self.st.children(g["body"]["id"] + "/images", "galleryImage")]
        return 200, self.page(sorted(items, key=lambda b: b["name"].lower()), q, op), {}

    # ------------------------------------------------------------ operations: image versions

    def version_path(self, pp):
        return (f"galleries/{pp['galleryName']}/images/{pp['galleryImageName']}/versions/"
                f"{pp['galleryImageVersionName']}")

    def op_GalleryImageVersions_Get(self, op, pp, q, body):
        _, d = self.image_definition(pp)
        r = self.st.get(d["body"]["id"] + "/versions/" + pp["galleryImageVersionName"]) if d else None
        if r is None:
            self.not_found("galleryImageVersion", pp, self.version_path(pp))
        return 200, self.render(r, q), {}

    def op_GalleryImageVersions_ListByGalleryImage(self, op, pp, q, body):
        _, d = self.image_definition(pp)
        if d is None:
            self.not_found("galleryImage", pp, f"galleries/{pp['galleryName']}/images/{pp['galleryImageName']}")
        items = [self.render(r, {}) for r in self.st.children(d["body"]["id"] + "/versions", "galleryImageVersion")]

        def order(b):
            m = VERSION_NAME.match(b["name"])
            return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
        return 200, self.page(sorted(items, key=order), q, op), {}

    def target_regions(self, regions, default_count, default_sku, at):
        out = []
        seen = set()
        for i, t in enumerate(regions):
            loc = self.location(t["name"], f"{at}[{i}].name", TYPE_OF["galleryImageVersion"])
            if loc in seen:
                raise HttpError(400, "InvalidParameter", f"The region '{loc}' is listed more than once in "
                                                         "targetRegions.", target=f"{at}[{i}].name")
            seen.add(loc)
            n = dict(t, name=loc)
            n.setdefault("regionalReplicaCount", default_count)
            n.setdefault("storageAccountType", default_sku)
            if not 1 <= n["regionalReplicaCount"] <= 100:
                raise HttpError(400, "InvalidParameter", "regionalReplicaCount must be between 1 and 100.",
                                target=f"{at}[{i}].regionalReplicaCount")
            out.append(n)
        return out

    def op_GalleryImageVersions_CreateOrUpdate(self, op, pp, q, body):
        st = self.st
        _, d = self.image_definition(pp)
        if d is None:
            raise HttpError(404, "ParentResourceNotFound",
                            f"Can not perform requested operation on nested resource. Parent resource "
                            f"'{pp['galleryName']}/{pp['galleryImageName']}' not found.")
        name = pp["galleryImageVersionName"]
        m = VERSION_NAME.match(name)
        if not m or any(int(x) > 2**31 - 1 for x in m.groups()):
            raise HttpError(400, "InvalidParameter",
                            f"The gallery image version name '{name}' is invalid. It must be of the form "
                            "<MajorVersion>.<MinorVersion>.<Patch>, each a 32-bit integer.",
                            target="galleryImageVersionName")
        loc = self.location(body["location"], "location", TYPE_OF["galleryImageVersion"])
        if loc != d["body"]["location"]:
            raise HttpError(400, "InvalidParameter",
                            f"The location '{loc}' of the gallery image version must be the location of its gallery "
                            f"image '{d['body']['location']}'.", target="location")
        self.check_tags(body.get("tags"))
        props = copy.deepcopy(body.get("properties") or {})
        rid = d["body"]["id"] + "/versions/" + name
        existing = st.get(rid)
        sp = props.get("storageProfile") or {}
        src = sp.get("source") or {}
        has_source = src.get("id") or src.get("virtualMachineId") or src.get("communityGalleryImageId") or \
            ((sp.get("osDiskImage") or {}).get("source") or {}).get("id") or \
            ((sp.get("osDiskImage") or {}).get("source") or {}).get("uri")
        if existing is None and not has_source:
            raise HttpError(400, "InvalidParameter",
                            "Required parameter 'properties.storageProfile.source' is missing (null): a new image "
                            "version needs a source (source.id of a managed image, snapshot or gallery image "
                            "version, source.virtualMachineId, or osDiskImage.source).",
                            target="properties.storageProfile.source")
        if existing is not None and src.get("id"):
            old = ((existing["body"]["properties"].get("storageProfile") or {}).get("source") or {}).get("id")
            if old and old.lower() != src["id"].lower():
                raise HttpError(409, "PropertyChangeNotAllowed", "Changing property "
                                "'galleryImageVersion.properties.storageProfile.source.id' is not allowed.",
                                target="galleryImageVersion.properties.storageProfile.source.id")
        pub = props.get("publishingProfile") or {}
        count = pub.get("replicaCount") or 1
        sku = pub.get("storageAccountType") or "Standard_LRS"
        regions = pub.get("targetRegions") or [{"name": loc}]
        pub["targetRegions"] = self.target_regions(regions, count, sku, "properties.publishingProfile.targetRegions")
        if loc not in [t["name"] for t in pub["targetRegions"]]:
            raise HttpError(400, "InvalidParameter",
                            f"The target regions must include the gallery image version's own region '{loc}'.",
                            target="properties.publishingProfile.targetRegions")
        pub.setdefault("replicaCount", count)
        pub.setdefault("excludeFromLatest", False)
        pub.setdefault("storageAccountType", sku)
        if "endOfLifeDate" in pub and pub["endOfLifeDate"] is None:
            del pub["endOfLifeDate"]
        pub["publishedDate"] = (existing["body"]["properties"]["publishingProfile"].get("publishedDate")
                                if existing else iso(now()))
        props["publishingProfile"] = pub
        if existing is not None and not has_source:
            sp = existing["body"]["properties"].get("storageProfile") or {}
        sp = copy.deepcopy(sp)
        sp.setdefault("osDiskImage", {})
        sp["osDiskImage"].setdefault("hostCaching", "ReadWrite")
        sp["osDiskImage"]["sizeInGB"] = 30
        props["storageProfile"] = sp
        safety = props.get("safetyProfile") or {}
        safety.setdefault("allowDeletionOfReplicatedLocations", True)
        safety.setdefault("blockDeletionBeforeEndOfLife", False)
        safety["reportedForPolicyViolation"] = False
        props["safetyProfile"] = safety
        props["provisioningState"] = "Updating" if existing else "Creating"
        out = {"id": rid, "name": name if not existing else existing["body"]["name"],
               "type": TYPE_OF["galleryImageVersion"], "location": loc, "properties": props}
        if body.get("tags"):
            out["tags"] = dict(body["tags"])
        st.put(rid, "galleryImageVersion", out)
        self.replication(st.get(rid), "Replicating")
        o, headers = self.start_operation("galleryImageVersion", "update" if existing else "create", rid, loc, op)
        return (200 if existing else 201), self.render(st.get(rid), {}), headers

    def op_GalleryImageVersions_Update(self, op, pp, q, body):
        st = self.st
        _, d = self.image_definition(pp)
        r = st.get(d["body"]["id"] + "/versions/" + pp["galleryImageVersionName"]) if d else None
        if r is None:
            self.not_found("galleryImageVersion", pp, self.version_path(pp))
        b = r["body"]
        props = body.get("properties") or {}
        if "tags" in body:
            self.check_tags(body["tags"])
            if body["tags"]:
                b["tags"] = dict(body["tags"])
            else:
                b.pop("tags", None)
        sp = props.get("storageProfile") or {}
        old_src = ((b["properties"].get("storageProfile") or {}).get("source") or {}).get("id")
        new_src = (sp.get("source") or {}).get("id")
        if new_src and old_src and new_src.lower() != old_src.lower():
            raise HttpError(409, "PropertyChangeNotAllowed", "Changing property "
                            "'galleryImageVersion.properties.storageProfile.source.id' is not allowed.",
                            target="galleryImageVersion.properties.storageProfile.source.id")
        pub = props.get("publishingProfile") or {}
        bp = b["properties"]["publishingProfile"]
        for k in ("excludeFromLatest", "endOfLifeDate", "replicaCount"):
            if k in pub:
                if pub[k] is None:
                    bp.pop(k, None)
                else:
                    bp[k] = pub[k]
        if pub.get("targetRegions"):
            bp["targetRegions"] = self.target_regions(pub["targetRegions"], bp.get("replicaCount", 1),
                                                      bp.get("storageAccountType", "Standard_LRS"),
                                                      "properties.publishingProfile.targetRegions")
        if pub.get("storageAccountType") and pub["storageAccountType"] != bp.get("storageAccountType"):
            raise HttpError(409, "PropertyChangeNotAllowed", "Changing property "
                            "'galleryImageVersion.properties.publishingProfile.storageAccountType' is not allowed.",
                            target="properties.publishingProfile.storageAccountType")
        for k, v in (props.get("safetyProfile") or {}).items():
            b["properties"]["safetyProfile"][k] = v
        b["properties"]["provisioningState"] = "Updating"
        o, headers = self.start_operation("galleryImageVersion", "update", b["id"], b["location"], op)
        return 200, self.render(r, {}), headers

    def op_GalleryImageVersions_Delete(self, op, pp, q, body):
        st = self.st
        _, d = self.image_definition(pp)
        r = st.get(d["body"]["id"] + "/versions/" + pp["galleryImageVersionName"]) if d else None
        if r is None:
            return 204, None, {}
        b = r["body"]
        safety = b["properties"].get("safetyProfile") or {}
        eol = b["properties"]["publishingProfile"].get("endOfLifeDate")
        eol_t = validate.parse_datetime(eol) if eol else None
        if safety.get("blockDeletionBeforeEndOfLife") and eol_t and eol_t > now():
            raise HttpError(409, "OperationNotAllowed",
                            f"The gallery image version '{b['name']}' cannot be deleted before its end of life date "
                            f"'{eol}' because safetyProfile.blockDeletionBeforeEndOfLife is set. Wait until the end "
                            "of life date, or update blockDeletionBeforeEndOfLife to false first.",
                            target="properties.safetyProfile.blockDeletionBeforeEndOfLife")
        b["properties"]["provisioningState"] = "Deleting"
        o, headers = self.start_operation("galleryImageVersion", "delete", b["id"], b["location"], op)
        return 202, None, headers

    # ------------------------------------------------------------ operations: managed images

    def image_rid(self, pp, rg):
        return self.st.rid(pp["subscriptionId"], rg, "images", pp["imageName"])

    def op_Images_Get(self, op, pp, q, body):
        r = self.st.get(self.image_rid(pp, self.group(pp)))
        if r is None:
            self.not_found("image", pp, f"images/{pp['imageName']}")
        return 200, self.render(r, q), {}

    def op_Images_ListByResourceGroup(self, op, pp, q, body):
        rg = self.group(pp)
        pre = f"/subscriptions/{pp['subscriptionId']}/resourceGroups/{rg}/providers/Microsoft.Compute/images"
        items = [self.render(r, {}) for r in self.st.children(pre, "image")]
        return 200, self.page(sorted(items, key=lambda b: b["name"].lower()), q, op), {}

    def op_Images_List(self, op, pp, q, body):
        sub = pp["subscriptionId"].lower()
        items = [self.render(r, {}) for k, r in self.st.resources.items()
                 if r["kind"] == "image" and k.startswith(f"/subscriptions/{sub}/")]
        return 200, self.page(sorted(items, key=lambda b: b["id"].lower()), q, op), {}

    def op_Images_CreateOrUpdate(self, op, pp, q, body):
        st = self.st
        rg = self.group(pp)
        rid = self.image_rid(pp, rg)
        existing = st.get(rid)
        loc = self.location(body["location"], "location", TYPE_OF["image"])
        self.check_tags(body.get("tags"))
        props = copy.deepcopy(body.get("properties") or {})
        os_disk = (props.get("storageProfile") or {}).get("osDisk")
        if not (props.get("sourceVirtualMachine") or {}).get("id") and not os_disk:
            raise HttpError(400, "InvalidParameter",
                            "Either 'properties.sourceVirtualMachine' or 'properties.storageProfile.osDisk' must be "
                            "given.", target="properties.storageProfile.osDisk")
        if os_disk is not None and not (os_disk.get("blobUri") or (os_disk.get("managedDisk") or {}).get("id")
                                        or (os_disk.get("snapshot") or {}).get("id")):
            raise HttpError(400, "InvalidParameter", "The OS disk needs one of blobUri, managedDisk or snapshot.",
                            target="properties.storageProfile.osDisk")
        if existing is not None and existing["body"]["location"] != loc:
            raise HttpError(409, "PropertyChangeNotAllowed", "Changing property 'location' is not allowed.",
                            target="location")
        sp = props.setdefault("storageProfile", {})
        if os_disk is None:
            sp["osDisk"] = {"osType": "Linux", "osState": "Generalized", "caching": "ReadWrite",
                            "storageAccountType": "Standard_LRS", "diskSizeGB": 30,
                            "managedDisk": {"id": props["sourceVirtualMachine"]["id"].replace(
                                "/virtualMachines/", "/disks/") + "_OsDisk"}}
        sp.setdefault("dataDisks", [])
        sp.setdefault("zoneResilient", False)
        props.setdefault("hyperVGeneration", "V1")
        props["provisioningState"] = "Updating" if existing else "Creating"
        out = {"id": rid, "name": existing["body"]["name"] if existing else pp["imageName"], "type": TYPE_OF["image"],
               "location": loc, "properties": props}
        if body.get("tags"):
            out["tags"] = dict(body["tags"])
        st.put(rid, "image", out)
        o, headers = self.start_operation("image", "update" if existing else "create", rid, loc, op)
        return (200 if existing else 201), self.render(st.get(rid), {}), headers

    # ------------------------------------------------------------ Microsoft.Resources

    def op_Providers_Get(self, op, pp, q, body):
        ns = pp["resourceProviderNamespace"]
        if ns.lower() != "microsoft.compute":
            raise HttpError(404, "InvalidResourceNamespace",
                            f"The resource namespace '{ns}' is invalid. (The stand-in knows only Microsoft.Compute.)")
        apis = self.si.api_versions()
        types = []
        for rtype, key in PROVIDER_RESOURCE_TYPES:
            t = {"resourceType": rtype, "locations": [LOCATION_DISPLAY_NAMES[loc] for loc in KNOWN_LOCATIONS]}
            if apis.get(key):
                t["apiVersions"] = [apis[key]]
            types.append(t)
        return 200, {"id": f"/subscriptions/{pp['subscriptionId']}/providers/Microsoft.Compute",
                     "namespace": "Microsoft.Compute", "registrationState": "Registered",
                     "registrationPolicy": "RegistrationRequired", "resourceTypes": types}, {}

    def op_Images_Update(self, op, pp, q, body):
        st = self.st
        r = st.get(self.image_rid(pp, self.group(pp)))
        if r is None:
            self.not_found("image", pp, f"images/{pp['imageName']}")
        b = r["body"]
        if "tags" in body:
            self.check_tags(body["tags"])
            if body["tags"]:
                b["tags"] = dict(body["tags"])
            else:
                b.pop("tags", None)
        props = body.get("properties") or {}
        if props.get("hyperVGeneration"):
            b["properties"]["hyperVGeneration"] = props["hyperVGeneration"]
        b["properties"]["provisioningState"] = "Updating"
        o, headers = self.start_operation("image", "update", b["id"], b["location"], op)
        return 200, self.render(r, {}), headers

    def op_Images_Delete(self, op, pp, q, body):
        st = self.st
        r = st.get(self.image_rid(pp, self.group(pp)))
        if r is None:
            return 204, None, {}
        r["body"]["properties"]["provisioningState"] = "Deleting"
        o, headers = self.start_operation("image", "delete", r["body"]["id"], r["body"]["location"], op)
        return 202, None, headers

    # ------------------------------------------------------------ control API

    def control(self, what, query, raw):
        st = self.st
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            return self.send(400, {"error": f"not JSON: {e}"})
        try:
            with st.lock:
                out = self.control_locked(what, dict(parse_qsl(query)), data)
        except HttpError as e:
            return self.send(e.status, e.body())
        except (KeyError, TypeError, ValueError) as e:
            return self.send(400, {"error": {"code": "BadControlRequest", "message": f"{type(e).__name__}: {e}"}})
        if out is None:
            return self.send(404, {"error": {"code": "NotFound", "message": f"no control endpoint /_control/{what} "
                                                                             f"for {self.command}"}})
        self.send(200, out)

    def seed_check(self, kind, body):
        get = {"gallery": "Galleries_Get", "galleryImage": "GalleryImages_Get",
               "galleryImageVersion": "GalleryImageVersions_Get", "image": "Images_Get"}[kind]
        problems = validate.check(self.st.cat, self.si.op_by_id(get)["responses"]["200"], body, "response")
        if problems:
            raise HttpError(400, "InvalidSeed", "; ".join(f"{p['target']}: {p['message']}" for p in problems))

    def control_locked(self, what, q, data):
        st = self.st
        cmd = self.command
        sub = data.get("subscription_id") or st.subscription
        rg = data.get("resource_group") or st.resource_group
        if what == "health" and cmd == "GET":
            return {"ok": True, "schemas": self.si.schema_source}
        if what == "state" and cmd == "GET":
            return {"schemas": self.si.schema_source, "schema_details": self.st.cat.details,
                    "config": {"polls": st.polls, "retry_after": st.retry_after, "page_size": st.page_size,
                               "strict": st.strict},
                    "counters": st.counters, "calls": st.calls,
                    "resources": {r["body"]["id"]: dict(kind=r["kind"], body=r["body"],
                                                        replication=r.get("replication"))
                                  for r in st.resources.values()},
                    "operations": [o.describe() for o in st.operations.values()],
                    "fail_next": st.fail_next,
                    "principals": [{k: v for k, v in p.items() if k != "client_secret"}
                                   for p in st.principals.values()],
                    "resource_groups": [{"subscription_id": s, "name": n} for (s, _), n in st.groups.items()]}
        if what == "calls":
            if cmd == "GET":
                return {"calls": st.calls}
            if cmd == "DELETE":
                st.calls = {}
                return {"calls": {}}
        if what == "requests" and cmd == "GET":
            since = int(q.get("since", 0))
            return {"requests": [r for r in st.requests if r["seq"] > since]}
        if what == "config" and cmd == "POST":
            for k, attr in (("polls", "polls"), ("retry_after", "retry_after"), ("page_size", "page_size")):
                if k in data:
                    setattr(st, attr, int(data[k]))
            if "strict" in data:
                st.strict = bool(data["strict"])
            return {"polls": st.polls, "retry_after": st.retry_after, "page_size": st.page_size, "strict": st.strict}
        if what == "reset" and cmd == "POST":
            st.reset()
            return {"ok": True}
        if what == "fail-next" and cmd == "POST":
            action = data.get("operation", "create")
            if action not in ("create", "update", "delete"):
                raise ValueError("operation must be create, update or delete")
            kind = data.get("type")
            if kind not in (None, "", "galleryImageVersion", "image"):
                raise ValueError("type must be galleryImageVersion or image (or absent for any)")
            for _ in range(int(data.get("count", 1))):
                st.fail_next.append({"operation": action, "type": kind, "code": data.get("code"),
                                     "message": data.get("message"), "http": data.get("http")})
            return {"fail_next": st.fail_next}
        if what == "principals" and cmd == "POST":
            subs = data.get("subscriptions") or [st.other_subscription]
            p = st.add_principal(subs, name=data.get("name"), secret=data.get("client_secret"),
                                 federated_subjects=data.get("federated_subjects"))
            return {"tenant_id": st.tenant, "client_id": p["client_id"], "client_secret": p["client_secret"],
                    "subscription_id": subs[0], "subscriptions": subs, "object_id": p["object_id"]}
        if what == "malform" and cmd == "POST":
            st.malform = int(data.get("count", 1))
            return {"malform": st.malform}
        if what == "expire-tokens" and cmd == "POST":
            for t in st.tokens.values():
                t["exp"] = 0
            return {"expired": len(st.tokens)}
        if what == "resource-groups" and cmd == "POST":
            st.groups[(sub.lower(), data["name"].lower())] = data["name"]
            return {"subscription_id": sub, "name": data["name"]}
        if what == "galleries" and cmd == "POST":
            loc = self.location(data.get("location", "westeurope"), "location", TYPE_OF["gallery"])
            b = st.put_gallery(sub, rg, data["name"], loc, data.get("tags"), data.get("description"))
            if b is None:
                raise HttpError(404, "ResourceGroupNotFound", f"no resource group {rg} in {sub}")
            self.seed_check("gallery", b)
            return b
        if what == "image-definitions" and cmd == "POST":
            g = st.get(st.rid(sub, rg, "galleries", data.get("gallery") or self.st.args.gallery))
            if g is None:
                raise HttpError(404, "ParentResourceNotFound", "no such gallery")
            loc = self.location(data.get("location") or g["body"]["location"], "location", TYPE_OF["galleryImage"])
            b = st.put_image_definition(sub, rg, g["body"]["name"], data["name"], loc, data.get("tags"),
                                        data.get("osType", "Linux"), data.get("osState", "Generalized"),
                                        data.get("hyperVGeneration", "V2"), data.get("identifier"),
                                        data.get("architecture", "x64"))
            self.seed_check("galleryImage", b)
            return b
        if what == "image-versions" and cmd == "POST":
            return self.seed_version(sub, rg, data)
        if what == "images" and cmd == "POST":
            return self.seed_image(sub, rg, data)
        return None

    def seed_version(self, sub, rg, data):
        st = self.st
        g = st.get(st.rid(sub, rg, "galleries", data.get("gallery") or st.args.gallery))
        d = st.get(g["body"]["id"] + "/images/" + (data.get("image_definition") or st.args.image_definition)) if g else None
        if d is None:
            raise HttpError(404, "ParentResourceNotFound", "no such gallery or image definition")
        name = data["name"]
        if not VERSION_NAME.match(name):
            raise HttpError(400, "InvalidParameter", f"version name {name} is not Major.Minor.Patch")
        loc = d["body"]["location"]
        regions = [{"name": norm_location(r) if isinstance(r, str) else norm_location(r["name"]),
                    "regionalReplicaCount": 1 if isinstance(r, str) else r.get("regionalReplicaCount", 1),
                    "storageAccountType": "Standard_LRS" if isinstance(r, str) else
                    r.get("storageAccountType", "Standard_LRS")}
                   for r in data.get("targetRegions") or [loc]]
        for r in regions:
            self.location(r["name"], "targetRegions", TYPE_OF["galleryImageVersion"])
        pub = {"targetRegions": regions, "replicaCount": 1, "excludeFromLatest": bool(data.get("excludeFromLatest")),
               "publishedDate": data.get("publishedDate") or iso(now()), "storageAccountType": "Standard_LRS"}
        if data.get("endOfLifeDate"):
            pub["endOfLifeDate"] = data["endOfLifeDate"]
        rid = d["body"]["id"] + "/versions/" + name
        body = {"id": rid, "name": name, "type": TYPE_OF["galleryImageVersion"], "location": loc,
                "properties": {"publishingProfile": pub,
                               "storageProfile": {"source": {"id": data.get("source") or st.rid(
                                   sub, rg, "images", "kiln-seed-" + name.replace(".", "-"))},
                                   "osDiskImage": {"hostCaching": "ReadWrite", "sizeInGB": 30}},
                               "safetyProfile": {"allowDeletionOfReplicatedLocations": True,
                                                 "reportedForPolicyViolation": False,
                                                 "blockDeletionBeforeEndOfLife":
                                                     bool(data.get("blockDeletionBeforeEndOfLife"))},
                               "provisioningState": data.get("provisioningState", "Succeeded")}}
        if data.get("tags"):
            body["tags"] = dict(data["tags"])
        self.seed_check("galleryImageVersion", body)
        st.put(rid, "galleryImageVersion", body)
        r = st.get(rid)
        self.replication(r, {"Succeeded": "Completed", "Failed": "Failed"}.get(body["properties"]["provisioningState"],
                                                                               "Replicating"))
        return body

    def seed_image(self, sub, rg, data):
        st = self.st
        if st.group_name(sub, rg) is None:
            raise HttpError(404, "ResourceGroupNotFound", f"no resource group {rg} in {sub}")
        rg = st.group_name(sub, rg)
        loc = self.location(data.get("location", "westeurope"), "location", TYPE_OF["image"])
        rid = st.rid(sub, rg, "images", data["name"])
        body = {"id": rid, "name": data["name"], "type": TYPE_OF["image"], "location": loc,
                "properties": {"storageProfile": {"osDisk": {"osType": data.get("osType", "Linux"),
                                                             "osState": "Generalized", "caching": "ReadWrite",
                                                             "diskSizeGB": 30, "storageAccountType": "Standard_LRS",
                                                             "managedDisk": {"id": st.rid(sub, rg, "disks",
                                                                                          data["name"] + "-osdisk")}},
                                                  "dataDisks": [], "zoneResilient": False},
                               "hyperVGeneration": data.get("hyperVGeneration", "V2"),
                               "provisioningState": data.get("provisioningState", "Succeeded")}}
        if data.get("tags"):
            body["tags"] = dict(data["tags"])
        self.seed_check("image", body)
        st.put(rid, "image", body)
        return body


def main():
    ap = argparse.ArgumentParser(description="Azure Resource Manager stand-in (see README.md)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--polls", type=int, default=int(os.environ.get("KILN_AZURE_POLLS", "1")),
                    help="status reads after which a long-running operation is done (default 1)")
    ap.add_argument("--retry-after", type=int, default=int(os.environ.get("KILN_AZURE_RETRY_AFTER", "0")))
    ap.add_argument("--page-size", type=int, default=int(os.environ.get("KILN_AZURE_PAGE_SIZE", "100")))
    ap.add_argument("--tenant", default="")
    ap.add_argument("--subscription", default="")
    ap.add_argument("--client-id", default="")
    ap.add_argument("--client-secret", default="")
    ap.add_argument("--resource-group", default="kiln-test")
    ap.add_argument("--gallery", default="kilngallery")
    ap.add_argument("--image-definition", default="base")
    ap.add_argument("--no-strict", action="store_true", help="do not check responses")
    args = ap.parse_args()
    try:
        standin = StandIn(args)
    except schemas.SchemaError as e:
        sys.exit(f"standin: {e}")
    import packer_routes  # what a real Packer azure-arm build calls (packer_routes.py, README.md)
    handler = packer_routes.install(standin, Handler)
    srv = ThreadingHTTPServer((args.host, args.port), handler)
    srv.daemon_threads = True
    srv.standin = standin
    port = srv.server_address[1]
    base = f"http://{args.host}:{port}/"
    standin.api_url = base
    st = standin.state
    info = {"api_url": base, "authority_host": base, "tenant_id": st.tenant, "client_id": st.main["client_id"],
            "client_secret": st.main["client_secret"], "subscription_id": st.subscription,
            "resource_group": st.resource_group, "gallery": args.gallery, "image_definition": args.image_definition,
            "locations": TEST_LOCATIONS, "control_url": base + "_control/", "schemas": standin.schema_source,
            "known_locations": KNOWN_LOCATIONS, "other_subscription_id": st.other_subscription,
            "api_versions": standin.api_versions(), "polls": st.polls, "port": port}
    info.update(packer_routes.start(standin, handler, args.host))
    log(f"listening on {base}; schemas from {standin.schema_source}")
    print(json.dumps(info), flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown, daemon=True).start())
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    log("stopped")


if __name__ == "__main__":
    main()
