"""What a real Packer `azure-arm` build (plugin v1.4.5) needs from the stand-in.

Hooked into standin.py by `install(standin, Handler)`, which returns the
handler class to serve with. Adds, without changing the stand-in's own routes:

* the cloud-metadata document (`GET /metadata/endpoints?api-version=2020-06-01`,
  the list hashicorp/go-azure-helpers reads from `https://{metadata_host}`;
  served over TLS on a second port, see `--packer-tls`), naming the stand-in
  as resource manager and login endpoint of a cloud called `KilnStandin`;
* Entra ID's v1 token endpoint (`POST /{tenant}/oauth2/token`, form with
  `resource=`), which go-autorest's adal uses;
* the ARM operations the plugin calls, at the api-versions it sends (its
  azure-sdk-for-go v64 packages): Microsoft.Resources 2018-02-01 (resource
  groups, deployments and their operations), Microsoft.Network 2018-01-01
  (NICs, virtual networks, public IPs, security groups), Microsoft.Compute
  2021-11-01 (VMs, managed images), 2021-10-01 (gallery images and versions),
  2021-08-01 (disks). Their schemas come from Microsoft's generated Python
  SDKs of exactly those api-versions (requirements-packer.txt, unpacked by
  packer-setup.sh), read with schemas.py's reader; each request and response
  goes through the stand-in's one validator like every other route.
* a template deployment interpreter: the deployment's template is evaluated
  (parameters, variables, concat, resourceId, resourceGroup, not, empty,
  equals, if, condition) just enough to create the resources it declares in
  the state (public IP, virtual network, NIC, network security group, VM and
  its OS disk); deployment operations list them, so Packer deletes them after.

Managed images and gallery versions at the plugin's api-versions share the
stand-in's state and handlers (op_Images_*, op_GalleryImageVersions_*):
answers are pruned to the older api-version's model (fields that version does
not know are left out, as ARM does for older api-versions).
"""

import ast
import copy
import json
import os
import re
import ssl
import threading
import uuid
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import schemas
import validate

CLOUD_NAME = "KilnStandin"
SDK_DIR_ENV = "KILN_AZURE_PACKER_SDK_DIR"

# (package folder under azure/mgmt, operation files or None for the single
# _operations.py layout, model prefix): the api-versions azure-arm v1.4.5 sends.
SOURCES = [
    ("compute/v2021_11_01", ("_images_operations.py", "_virtual_machines_operations.py"), "Compute2021-11-01."),
    ("compute/v2021_10_01", ("_gallery_images_operations.py", "_gallery_image_versions_operations.py"),
     "Compute2021-10-01."),
    ("compute/v2021_08_01", ("_disks_operations.py",), "Compute2021-08-01."),
    ("network/v2018_01_01", ("NetworkInterfaces", "VirtualNetworks", "PublicIPAddresses", "NetworkSecurityGroups",
                             "Subnets"), "Network2018-01-01.", "Error"),
    ("resource/resources/v2018_02_01", ("Deployments", "DeploymentOperations", "ResourceGroups"),
     "Resources2018-02-01.", "ResourceManagementErrorWithDetails"),
]
PINS = "azure-mgmt-compute==29.1.0, azure-mgmt-network==21.0.1, azure-mgmt-resource==23.0.1"
# ops whose answers come from standin.py's handlers (built for newer api-versions): pruned to the old model
SHARED_HANDLERS = ("Images_", "GalleryImages_", "GalleryImageVersions_")


def sdk_dir():
    return os.environ.get(SDK_DIR_ENV) or os.path.join(schemas.cache_dir(), "azure-sdk-packer")


def _seg(lines, node):
    """A node's source by whole lines (ast.get_source_segment is quadratic on 1 MB files)."""
    return "".join(lines[node.lineno - 1:node.end_lineno])


def _builder(lines, fn):
    """The builder alone, re-parsed: schemas.py's reader then works on a small text."""
    text = _seg(lines, fn)
    return ast.parse(text).body[0], text


class _Reader(schemas._SdkReader):
    def add(self, op_id, stem, fn, lines, texts):
        node, text = _builder(lines, fn)
        self.cat.operations.append(self._operation(op_id, stem, stem, node, text, texts))

    def per_file(self, path):
        """One file per operation group (`_images_operations.py`, `build_get_request`)."""
        f = os.path.basename(path)
        group = "".join(w.capitalize() for w in f[1:-len("_operations.py")].split("_"))
        src = open(path).read()
        lines = src.splitlines(keepends=True)
        tree = ast.parse(src, path)
        texts = {}
        for c in tree.body:
            if isinstance(c, ast.ClassDef):
                for m in c.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        texts.setdefault(m.name, []).append(_seg(lines, m))
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("build_"):
                stem = fn.name[len("build_"):-len("_request")]
                self.add(group + "_" + "".join(w.capitalize() for w in stem.split("_")), stem, fn, lines, texts)

    def single_file(self, path, groups):
        """The `_operations.py` layout (one file, builders named build_<group>_<op>_request[_initial],
        called by the group's class)."""
        src = _normalise(open(path).read())
        lines = src.splitlines(keepends=True)
        tree = ast.parse(src, path)
        builders = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("build_")}
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef) or not cls.name.endswith("Operations"):
                continue
            group = cls.name[:-len("Operations")]
            if group not in groups:
                continue
            texts = {m.name: _seg(lines, m) for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for bname, fn in builders.items():
                users = [n for n, t in texts.items() if f"{bname}(" in t]
                if not users:
                    continue
                public = re.sub(r"_initial$", "", min(users, key=len).lstrip("_"))
                renamed = {n: [t.replace(f"{bname}(", f"build_{public}_request(")] for n, t in texts.items()}
                op_id = group + "_" + "".join(w.capitalize() for w in public.split("_"))
                self.add(op_id, public, fn, lines, renamed)


def _normalise(src):
    """azure-mgmt-network 21's older code style (single quotes, a wrapped
    HttpRequest call) in the form schemas.py's regular expressions read."""
    src = re.sub(r"HttpRequest\(\s*method=", "HttpRequest(method=", src)
    src = re.sub(r"_params\.pop\('api-version', ", '_params.pop("api-version", ', src)
    src = re.sub(r"_serialize\.body\((\w+), '(\w+)'\)", r'_serialize.body(\1, "\2")', src)
    src = re.sub(r"_deserialize\('(\w+)', pipeline_response", r'_deserialize("\1", pipeline_response', src)
    src = re.sub(r"response_headers\['([\w-]+)'\] = self\._deserialize\('(\w+)'",
                 r'response_headers["\1"] = self._deserialize("\2"', src)
    return src


def load_catalog():
    """One catalog with the operations of SOURCES, models prefixed per api-version."""
    root = sdk_dir()
    out = schemas.Catalog(f"{PINS} (Packer azure-arm routes)")
    for folder, what, prefix, *err in SOURCES:
        d = os.path.join(root, "azure", "mgmt", folder)
        if not os.path.isdir(os.path.join(d, "operations")):
            raise schemas.SchemaError(f"packer routes: {d} is missing: run hack/azure/packer-setup.sh")
        cat = schemas.Catalog(folder)
        r = _Reader(d, cat, package=folder, error_model=(err or ["ApiError"])[0])
        if what[0].endswith(".py"):
            for f in what:
                r.per_file(os.path.join(d, "operations", f))
        else:
            r.single_file(os.path.join(d, "operations", "_operations.py"), what)
        r.cloud_error()
        for o in cat.operations:
            o["source"] = "sdk"
            o["packer"] = folder
        schemas._merge_renamed(out, cat, prefix)
    return out


# ---------------------------------------------------------------- pruning and expressions


def prune(cat, schema, value):
    """The value without the properties the schema does not declare (answers
    of the shared handlers at an older api-version: ARM leaves out what that
    version does not know)."""
    while isinstance(schema, dict) and "ref" in schema:
        schema = cat.models.get(schema["ref"]) or {}
    if isinstance(value, list):
        items = (schema or {}).get("items")
        return [prune(cat, items, v) for v in value] if items else value
    if not isinstance(value, dict) or not isinstance(schema, dict) or schema.get("type") not in ("object", None):
        return value
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    out = {}
    for k, v in value.items():
        if k in props:
            out[k] = prune(cat, props[k], v)
        elif extra is True:
            out[k] = v
        elif isinstance(extra, dict):
            out[k] = prune(cat, extra, v)
    return out


class TemplateError(Exception):
    pass


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][\w]*)|(?P<punct>[(),.\[\]]))")


class Template:
    """Just enough of ARM's template language for the templates Packer sends."""

    def __init__(self, template, parameters, sub, rg, location):
        self.t = template or {}
        self.params = {k: (v or {}).get("value") for k, v in (parameters or {}).items()}
        self.sub, self.rg, self.location = sub, rg, location
        self._vars = {}

    def parameter(self, name):
        if name in self.params:
            return self.params[name]
        d = (self.t.get("parameters") or {}).get(name)
        if d is None:
            raise TemplateError(f"The template parameter '{name}' is not found.")
        if "defaultValue" not in d:
            raise TemplateError(f"The value for the template parameter '{name}' is not provided.")
        return self.value(d["defaultValue"])

    def variable(self, name):
        if name not in self._vars:
            vs = self.t.get("variables") or {}
            if name not in vs:
                raise TemplateError(f"The template variable '{name}' is not found.")
            self._vars[name] = self.value(vs[name])
        return self._vars[name]

    def value(self, v):
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
            if v.startswith("[["):
                return v[1:]
            return self.expression(v[1:-1])
        return v

    def expression(self, text):
        toks = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise TemplateError(f"The template language expression '{text}' is not valid at {pos}.")
            pos = m.end()
            kind = m.lastgroup
            toks.append((kind, m.group(kind)))
        saved = getattr(self, "_toks", None), getattr(self, "_i", 0)  # variables() re-enters
        self._toks, self._i = toks, 0
        try:
            out = self._expr()
            if self._i != len(toks):
                raise TemplateError(f"The template language expression '{text}' has trailing tokens.")
        finally:
            self._toks, self._i = saved
        return out

    def _peek(self):
        return self._toks[self._i] if self._i < len(self._toks) else (None, None)

    def _take(self, want=None):
        t = self._peek()
        if t[0] is None or (want and t[1] != want):
            raise TemplateError(f"expected {want or 'a token'}, got {t[1]!r}")
        self._i += 1
        return t

    def _expr(self):
        kind, tok = self._take()
        if kind == "str":
            v = tok[1:-1].replace("''", "'")
        elif kind == "num":
            v = int(tok)
        elif kind == "name":
            args = []
            self._take("(")
            if self._peek()[1] != ")":
                args.append(self._expr())
                while self._peek()[1] == ",":
                    self._take(",")
                    args.append(self._expr())
            self._take(")")
            v = self.call(tok, args)
        else:
            raise TemplateError(f"unexpected {tok!r}")
        while self._peek()[1] in (".", "["):
            if self._take()[1] == ".":
                key = self._take()[1]
                v = (v or {}).get(key) if isinstance(v, dict) else None
            else:
                idx = self._expr()
                self._take("]")
                v = v[idx]
        return v

    def call(self, name, a):
        n = name.lower()
        if n == "parameters":
            return self.parameter(a[0])
        if n == "variables":
            return self.variable(a[0])
        if n == "concat":
            if a and all(isinstance(x, list) for x in a):
                return [y for x in a for y in x]
            return "".join("" if x is None else str(x) for x in a)
        if n == "resourcegroup":
            return {"name": self.rg, "location": self.location,
                    "id": f"/subscriptions/{self.sub}/resourceGroups/{self.rg}"}
        if n == "subscription":
            return {"subscriptionId": self.sub, "id": f"/subscriptions/{self.sub}"}
        if n == "resourceid":
            i = next(k for k, x in enumerate(a) if isinstance(x, str) and "/" in x.strip("/") and "." in x.split("/")[0])
            sub, rg = self.sub, self.rg
            if i == 2:
                sub, rg = a[0], a[1]
            elif i == 1:
                rg = a[0]
            rtype = a[i].strip("/").split("/")
            names = a[i + 1:]
            path = rtype[0] + "/" + rtype[1] + "/" + names[0]
            for t, nm in zip(rtype[2:], names[1:]):
                path += f"/{t}/{nm}"
            return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{path}"
        if n == "not":
            return not a[0]
        if n == "empty":
            return a[0] is None or len(a[0]) == 0
        if n == "equals":
            return a[0] == a[1]
        if n == "if":
            return a[1] if a[0] else a[2]
        if n == "and":
            return all(a)
        if n == "or":
            return any(a)
        if n == "tolower":
            return str(a[0]).lower()
        if n == "string":
            return a[0] if isinstance(a[0], str) else json.dumps(a[0])
        if n == "uniquestring":
            return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, a))).hex[:13]
        if n == "base64":
            import base64
            return base64.b64encode(str(a[0]).encode()).decode()
        raise TemplateError(f"The template function '{name}' is not supported by the stand-in.")

    def resources(self):
        """[(type, name, location, properties, raw)] of the resources whose condition holds."""
        out = []
        for r in self.t.get("resources") or []:
            if "condition" in r and not self.value(r["condition"]):
                continue
            if "copy" in r:
                raise TemplateError("copy loops are not supported by the stand-in")
            out.append({"type": self.value(r["type"]), "name": self.value(r["name"]),
                        "location": self.value(r.get("location", self.location)),
                        "properties": self.value(r.get("properties") or {}),
                        "tags": self.value(r.get("tags") or {}), "apiVersion": self.value(r.get("apiVersion"))})
        return out


# ---------------------------------------------------------------- the handler


def _v1_token_schema():
    """Entra ID v1 (`/oauth2/token`) client-credentials answer: numbers as strings, as Entra sends them."""
    num = {"type": "string", "pattern": r"^\d+$"}
    return {"type": "object", "title": "TokenResponseV1 (hand-written)",
            "required": ["token_type", "expires_in", "expires_on", "resource", "access_token"],
            "properties": {"token_type": {"type": "string", "enum": ["Bearer"]}, "expires_in": num,
                           "ext_expires_in": num, "expires_on": num, "not_before": num,
                           "resource": {"type": "string", "minLength": 1},
                           "access_token": {"type": "string", "minLength": 1}}}


class _View:
    """The stand-in as one request sees it: routes and operation ids resolved
    for the request's api-version first (the same path can be served at the
    stand-in's api-version and at the plugin's)."""

    def __init__(self, si, api):
        self._si, self._api = si, api

    def __getattr__(self, k):
        return getattr(self._si, k)

    def match(self, method, path):
        methods, first = [], None
        for rx, names, _, op in self._si.routes:
            m = rx.match(path)
            if not m:
                continue
            if op["method"] != method:
                methods.append(op["method"])
                continue
            if op["api_version"] == self._api:
                return op, dict(zip(names, m.groups()))
            if first is None:
                first = (op, dict(zip(names, m.groups())))
        return first if first else (None, methods)

    def op_by_id(self, op_id):
        ops = [o for o in self._si.catalog.operations if o["id"] == op_id]
        return next((o for o in ops if o["api_version"] == self._api), ops[0])


# What a deployment may declare, and the model its evaluated resource is checked
# against (the SDK models of the api-versions the plugin itself uses for those
# types; the template names 2017-04-01 for network resources, whose nearest
# available schema is 2018-01-01; its VMs are 2021-11-01, exact).
TEMPLATE_MODELS = {"Microsoft.Network/publicIPAddresses": "Network2018-01-01.PublicIPAddress",
                   "Microsoft.Network/virtualNetworks": "Network2018-01-01.VirtualNetwork",
                   "Microsoft.Network/networkInterfaces": "Network2018-01-01.NetworkInterface",
                   "Microsoft.Network/networkSecurityGroups": "Network2018-01-01.NetworkSecurityGroup",
                   "Microsoft.Compute/virtualMachines": "Compute2021-11-01.VirtualMachine",
                   "Microsoft.Compute/virtualMachines/extensions": None}

NETWORK_KINDS = {"Microsoft.Network/publicIPAddresses": "publicIPAddress",
                 "Microsoft.Network/virtualNetworks": "virtualNetwork",
                 "Microsoft.Network/networkInterfaces": "networkInterface",
                 "Microsoft.Network/networkSecurityGroups": "networkSecurityGroup"}


def make_handler(base, mod):
    """The stand-in's Handler plus the Packer routes (mod: standin's module, for its helpers)."""
    HttpError, iso, now = mod.HttpError, mod.iso, mod.now

    class PackerHandler(base):
        @property
        def si(self):
            return _View(self.server.standin, getattr(self, "_api", None))

        def dispatch(self):
            u = urlsplit(self.path)
            self._api = dict(parse_qsl(u.query)).get("api-version")
            path = re.sub(r"^/{2,}", "/", u.path)
            if self.command == "GET" and path.rstrip("/") == "/metadata/endpoints":
                self.read_body()
                return self.metadata()
            if re.match(r"^/[^/]+/oauth2/token/?$", path):
                try:
                    return self.token_v1(path.split("/")[1], self.read_body())
                except Exception as e:  # a stand-in bug
                    mod.traceback.print_exc()
                    return self.send(500, {"error": "server_error", "error_description": repr(e)})
            return super().dispatch()

        # ---- cloud metadata and Entra ID v1

        def metadata(self):
            b = self.base_url()
            self.count("Metadata_Endpoints")
            self.send(200, [{
                "portal": b, "authentication": {"loginEndpoint": b, "audiences": [b, "https://management.azure.com/"],
                                                "tenant": "common", "identityProvider": "AAD"},
                "media": "", "graphAudience": "", "graph": "", "name": CLOUD_NAME,
                "suffixes": {"azureDataLakeStoreFileSystem": "", "acrLoginServer": "", "sqlServerHostname": "",
                             "azureDataLakeAnalyticsCatalogAndJob": "", "keyVaultDns": "vault.kiln.invalid",
                             "storage": "core.kiln.invalid", "azureFrontDoorEndpointSuffix": ""},
                "batch": "", "resourceManager": b, "vmImageAliasDoc": "", "activeDirectoryDataLake": "",
                "sqlManagement": "", "gallery": ""}])

        def token_v1(self, tenant, raw):
            """`POST {login}/{tenant}/oauth2/token` (Entra ID v1, what go-autorest's adal uses): like
            the v2 endpoint, with `resource=` instead of `scope=`."""
            self.op_id = "TokenV1"
            self.count("TokenV1")
            st = self.st
            if self.command != "POST":
                return self.aad_error(405, "invalid_request", 900561, "The endpoint only accepts POST requests.")
            if tenant.lower() != st.tenant.lower():
                return self.aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
            form = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
            if form.get("grant_type") != "client_credentials":
                return self.aad_error(400, "unsupported_grant_type", 70003,
                                      f"The app requested an unsupported grant type '{form.get('grant_type')}'.")
            with st.lock:
                p = st.principals.get(form.get("client_id", "").lower())
            if p is None:
                return self.aad_error(400, "unauthorized_client", 700016,
                                      f"Application with identifier '{form.get('client_id')}' was not found in the "
                                      f"directory '{st.tenant}'.")
            resource = form.get("resource", "")
            ok = {self.base_url().rstrip("/"), "https://management.azure.com", "https://management.core.windows.net",
                  "https://vault.kiln.invalid"}
            if resource.rstrip("/") not in ok:
                return self.aad_error(400, "invalid_resource", 500011,
                                      f"The resource principal named {resource} was not found in the tenant.")
            if "client_secret" not in form:
                return self.aad_error(401, "invalid_client", 7000218, "The request body must contain the following "
                                      "parameter: 'client_assertion' or 'client_secret'.")
            if not mod.secrets.compare_digest(form["client_secret"], p["client_secret"]):
                return self.aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
            with st.lock:
                token, ttl = st.issue_token(p)
            t = int(now().timestamp())
            self.send_checked(200, _v1_token_schema(), {
                "token_type": "Bearer", "expires_in": str(ttl), "ext_expires_in": str(ttl),
                "expires_on": str(t + ttl), "not_before": str(t), "resource": resource, "access_token": token},
                headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

        def control_locked(self, what, q, data):
            if what == "packer" and self.command == "GET":
                p = self.server.standin.packer
                return {"schemas": p.get("schemas"), "ssh": p.get("ssh"), "rg_locations": p["rg_locations"],
                        "ssh_port": p.get("ssh_port")}
            p = self.server.standin.packer
            out = super().control_locked(what, q, data)
            if what == "resource-groups" and self.command == "POST" and out is not None:
                p["rg_locations"][data["name"].lower()] = self.location(data.get("location", "westeurope"),
                                                                        "location", "resourceGroups")
                out = dict(out, location=p["rg_locations"][data["name"].lower()])
            if what == "reset" and self.command == "POST" and p.get("ssh"):
                p["ssh"].update(logins=[], refused=0, commands=[])
            return out

        # ---- answers

        def respond(self, op, status, body, headers=None):
            if op is not None and op.get("packer") and op["id"].startswith(SHARED_HANDLERS) \
                    and status < 300 and isinstance(body, dict):
                body = prune(self.st.cat, op["responses"].get(str(status)), body)
            return super().respond(op, status, body, headers)

        # ---- helpers

        def rg_location(self, pp):
            rg = self.group(pp)
            return self.server.standin.packer["rg_locations"].get(rg.lower(), "westeurope"), rg

        def arm_id(self, pp, rg, rtype, name):
            return f"/subscriptions/{pp['subscriptionId']}/resourceGroups/{rg}/providers/{rtype}/{name}"

        def need(self, pp, rtype, key, kind):
            rg = self.group(pp)
            r = self.st.get(self.arm_id(pp, rg, rtype, pp[key]))
            if r is None or r["kind"] != kind:
                raise HttpError(404, "ResourceNotFound",
                                f"The Resource '{rtype}/{pp[key]}' under resource group '{pp['resourceGroupName']}' "
                                "was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")
            return r

        def delete_lro(self, pp, rtype, key, kind, op):
            rg = self.group(pp)
            r = self.st.get(self.arm_id(pp, rg, rtype, pp[key]))
            if r is None or r["kind"] != kind:
                return 204, None, {}
            if "provisioningState" in r["body"].get("properties", {}):
                r["body"]["properties"]["provisioningState"] = "Deleting"
            _, headers = self.start_operation(kind, "delete", r["body"]["id"], r["body"].get("location", "westeurope"),
                                              op)
            return 202, None, headers

        # ---- Microsoft.Resources 2018-02-01

        def op_ResourceGroups_Get(self, op, pp, q, body):
            loc, rg = self.rg_location(pp)
            return 200, {"id": f"/subscriptions/{pp['subscriptionId']}/resourceGroups/{rg}", "name": rg,
                         "location": loc, "properties": {"provisioningState": "Succeeded"}}, {}

        def op_ResourceGroups_CheckExistence(self, op, pp, q, body):
            ok = self.st.group_name(pp["subscriptionId"], pp["resourceGroupName"]) is not None
            return (204 if ok else 404), None, {}

        def deployment_rid(self, pp, rg):
            return f"/subscriptions/{pp['subscriptionId']}/resourceGroups/{rg}/providers/Microsoft.Resources/" \
                   f"deployments/{pp['deploymentName']}"

        def evaluate(self, pp, body):
            loc, rg = self.rg_location(pp)
            props = body["properties"]
            if props.get("templateLink") or props.get("parametersLink"):
                raise HttpError(400, "InvalidTemplate", "templateLink/parametersLink are not supported by the "
                                                        "stand-in: send the template inline.")
            if props.get("mode") != "Incremental":
                raise HttpError(400, "InvalidDeploymentMode", "The stand-in only runs Incremental deployments.")
            t = Template(props.get("template"), props.get("parameters"), pp["subscriptionId"], rg, loc)
            try:
                res = t.resources()
            except (TemplateError, KeyError, IndexError, TypeError, StopIteration) as e:
                raise HttpError(400, "InvalidTemplate", f"Deployment template validation failed: {e}")
            for i, r in enumerate(res):
                if r["type"] not in TEMPLATE_MODELS:
                    raise HttpError(400, "InvalidTemplate", f"The stand-in cannot deploy resources of type "
                                                            f"'{r['type']}'.")
                self.location(r["location"], "location", r["type"])
                model = TEMPLATE_MODELS[r["type"]]
                if model:  # the resource as its PUT body, at the plugin's api-version of that type
                    doc = {"location": r["location"], "properties": r["properties"]}
                    if r["tags"]:
                        doc["tags"] = r["tags"]
                    problems = validate.check(self.st.cat, {"ref": model}, doc, "request")
                    if problems:
                        raise HttpError(400, "InvalidTemplate", f"Deployment template validation failed: resource "
                                        f"'{r['type']}/{r['name']}' (checked against {model}): "
                                        f"{problems[0]['target']}: {problems[0]['message']}",
                                        details=[{"code": p["code"], "target": f"resources[{i}].{p['target']}",
                                                  "message": p["message"]} for p in problems])
            return rg, loc, res

        def deployment_body(self, pp, rg, body, state):
            params = {}
            tparams = (body["properties"].get("template") or {}).get("parameters") or {}
            for k, v in (body["properties"].get("parameters") or {}).items():
                typ = (tparams.get(k) or {}).get("type", "string")
                params[k] = {"type": "SecureString"} if typ.lower() == "securestring" else \
                    {"type": typ[:1].upper() + typ[1:], "value": (v or {}).get("value")}
            return {"id": self.deployment_rid(pp, rg), "name": pp["deploymentName"],
                    "properties": {"provisioningState": state, "correlationId": str(uuid.uuid4()),
                                   "timestamp": iso(now()), "parameters": params,
                                   "mode": body["properties"]["mode"], "dependencies": [], "providers": []}}

        def op_Deployments_Validate(self, op, pp, q, body):
            rg, loc, res = self.evaluate(pp, body)
            return 200, {"properties": self.deployment_body(pp, rg, body, "Succeeded")["properties"]}, {}

        def op_Deployments_CreateOrUpdate(self, op, pp, q, body):
            st = self.st
            rg, loc, res = self.evaluate(pp, body)
            rid = self.deployment_rid(pp, rg)
            existing = st.get(rid)
            created = []
            for r in res:
                created += self.create(pp, rg, r)
            d = self.deployment_body(pp, rg, body, "Accepted")
            st.put(rid, "deployment", d)
            st.get(rid)["created"] = created
            d["location"] = loc  # for the operation's URL only
            _, headers = self.start_operation("deployment", "update" if existing else "create", rid, loc, op)
            d.pop("location")
            return (200 if existing else 201), copy.deepcopy(d), headers

        def op_Deployments_Get(self, op, pp, q, body):
            r = self.need_deployment(pp)
            return 200, copy.deepcopy(r["body"]), {}

        def need_deployment(self, pp):
            rg = self.group(pp)
            r = self.st.get(self.deployment_rid(pp, rg))
            if r is None:
                raise HttpError(404, "DeploymentNotFound", f"Deployment '{pp['deploymentName']}' could not be found.")
            return r

        def op_Deployments_Delete(self, op, pp, q, body):
            rg = self.group(pp)
            r = self.st.get(self.deployment_rid(pp, rg))
            if r is None:
                return 204, None, {}
            loc = self.server.standin.packer["rg_locations"].get(rg.lower(), "westeurope")
            _, headers = self.start_operation("deployment", "delete", r["body"]["id"], loc, op)
            return 202, None, headers

        def op_DeploymentOperations_List(self, op, pp, q, body):
            r = self.need_deployment(pp)
            out = []
            for rtype, rid, name in r.get("created", []):
                out.append({"id": f"{r['body']['id']}/operations/{uuid.uuid5(uuid.NAMESPACE_URL, rid).hex.upper()}",
                            "operationId": uuid.uuid5(uuid.NAMESPACE_URL, rid).hex.upper(),
                            "properties": {"provisioningState": "Succeeded", "timestamp": iso(now()),
                                           "serviceRequestId": str(uuid.uuid4()), "statusCode": "OK",
                                           "targetResource": {"id": rid, "resourceName": name,
                                                              "resourceType": rtype}}})
            top = int(q.get("$top") or 0)
            return 200, {"value": out[:top] if top > 0 else out}, {}

        # ---- what a deployment creates

        def create(self, pp, rg, r):
            st = self.st
            rtype, name, loc = r["type"], r["name"], mod.norm_location(r["location"])
            if rtype == "Microsoft.Compute/virtualMachines/extensions":
                return []
            rid = self.arm_id(pp, rg, rtype, name)
            props = copy.deepcopy(r["properties"])
            guid = str(uuid.uuid4())
            etag = f'W/"{uuid.uuid4()}"'
            body = {"id": rid, "name": name, "type": rtype, "location": loc}
            if r["tags"]:
                body["tags"] = dict(r["tags"])
            out = [(rtype, rid, name)]
            if rtype == "Microsoft.Network/publicIPAddresses":
                body["etag"] = etag
                props.update(provisioningState="Succeeded", resourceGuid=guid, publicIPAddressVersion="IPv4",
                             idleTimeoutInMinutes=4, ipAddress="127.0.0.1")
                if (props.get("dnsSettings") or {}).get("domainNameLabel"):
                    props["dnsSettings"]["fqdn"] = f"{props['dnsSettings']['domainNameLabel']}.{loc}.cloudapp.kiln.invalid"
            elif rtype == "Microsoft.Network/virtualNetworks":
                body["etag"] = etag
                for s in props.get("subnets") or []:
                    s["id"] = f"{rid}/subnets/{s['name']}"
                    s["etag"] = etag
                    s.setdefault("properties", {})["provisioningState"] = "Succeeded"
                props.update(provisioningState="Succeeded", resourceGuid=guid)
            elif rtype == "Microsoft.Network/networkInterfaces":
                body["etag"] = etag
                for i, c in enumerate(props.get("ipConfigurations") or []):
                    c["id"] = f"{rid}/ipConfigurations/{c['name']}"
                    c["etag"] = etag
                    c.setdefault("properties", {}).update(provisioningState="Succeeded", primary=(i == 0),
                                                          privateIPAddress=f"10.0.0.{4 + i}",
                                                          privateIPAddressVersion="IPv4")
                props.update(provisioningState="Succeeded", resourceGuid=guid, primary=True,
                             enableAcceleratedNetworking=False, enableIPForwarding=False,
                             macAddress="00-0D-3A-00-00-01")
            elif rtype == "Microsoft.Network/networkSecurityGroups":
                body["etag"] = etag
                props.update(provisioningState="Succeeded", resourceGuid=guid)
            elif rtype == "Microsoft.Compute/virtualMachines":
                os_disk = props.setdefault("storageProfile", {}).setdefault("osDisk", {})
                disk_name = os_disk.get("name") or f"{name}_OsDisk_1_{guid.replace('-', '')}"
                disk_id = self.arm_id(pp, rg, "Microsoft.Compute/disks", disk_name)
                md = os_disk.setdefault("managedDisk", {})
                md["id"] = disk_id
                md.setdefault("storageAccountType", "Standard_LRS")
                os_disk.update(name=disk_name, osType="Linux", diskSizeGB=os_disk.get("diskSizeGB") or 30)
                os_disk.setdefault("createOption", "FromImage")
                props["storageProfile"].setdefault("dataDisks", [])
                osp = props.get("osProfile") or {}
                for secret in ("adminPassword", "customData"):
                    osp.pop(secret, None)
                props.update(provisioningState="Succeeded", vmId=guid)
                for n in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
                    nic = st.get(n.get("id", ""))
                    if nic is not None:
                        nic["body"]["properties"]["virtualMachine"] = {"id": rid}
                image_ref = props["storageProfile"].get("imageReference") or {}
                disk = {"id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks", "location": loc,
                        "managedBy": rid, "sku": {"name": md["storageAccountType"]},
                        "properties": {"osType": "Linux", "hyperVGeneration": "V1",
                                       "creationData": {"createOption": "FromImage"},
                                       "diskSizeGB": os_disk["diskSizeGB"], "diskState": "Attached",
                                       "provisioningState": "Succeeded", "timeCreated": iso(now()),
                                       "uniqueId": str(uuid.uuid4())}}
                if image_ref.get("id"):
                    disk["properties"]["creationData"]["imageReference"] = {"id": image_ref["id"]}
                st.put(disk_id, "disk", disk)
            body["properties"] = props
            st.put(rid, NETWORK_KINDS.get(rtype, "virtualMachine"), body)
            if rtype == "Microsoft.Compute/virtualMachines":
                st.get(rid)["power"] = "running"  # kept beside the body, not in it
            return out

        # ---- Microsoft.Network 2018-01-01

        def op_PublicIPAddresses_Get(self, op, pp, q, body):
            r = self.need(pp, "Microsoft.Network/publicIPAddresses", "publicIpAddressName", "publicIPAddress")
            return 200, copy.deepcopy(r["body"]), {}

        def op_NetworkInterfaces_Get(self, op, pp, q, body):
            r = self.need(pp, "Microsoft.Network/networkInterfaces", "networkInterfaceName", "networkInterface")
            return 200, copy.deepcopy(r["body"]), {}

        def op_VirtualNetworks_Get(self, op, pp, q, body):
            r = self.need(pp, "Microsoft.Network/virtualNetworks", "virtualNetworkName", "virtualNetwork")
            return 200, copy.deepcopy(r["body"]), {}

        def op_PublicIPAddresses_Delete(self, op, pp, q, body):
            return self.delete_lro(pp, "Microsoft.Network/publicIPAddresses", "publicIpAddressName",
                                   "publicIPAddress", op)

        def op_NetworkInterfaces_Delete(self, op, pp, q, body):
            return self.delete_lro(pp, "Microsoft.Network/networkInterfaces", "networkInterfaceName",
                                   "networkInterface", op)

        def op_VirtualNetworks_Delete(self, op, pp, q, body):
            return self.delete_lro(pp, "Microsoft.Network/virtualNetworks", "virtualNetworkName", "virtualNetwork", op)

        def op_NetworkSecurityGroups_Delete(self, op, pp, q, body):
            return self.delete_lro(pp, "Microsoft.Network/networkSecurityGroups", "networkSecurityGroupName",
                                   "networkSecurityGroup", op)

        # ---- Microsoft.Compute: VMs 2021-11-01, disks 2021-08-01

        def vm(self, pp):
            return self.need(pp, "Microsoft.Compute/virtualMachines", "vmName", "virtualMachine")

        def op_VirtualMachines_Get(self, op, pp, q, body):
            r = self.vm(pp)
            out = copy.deepcopy(r["body"])
            if q.get("$expand") == "instanceView":
                out["properties"]["instanceView"] = self.instance_view(r)
            return 200, out, {}

        def instance_view(self, r):
            power = r.get("power", "running")
            st = [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded",
                   "time": iso(now())},
                  {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"}]
            if r.get("generalized"):
                st.append({"code": "OSState/generalized", "level": "Info", "displayStatus": "VM generalized"})
            return {"computerName": r["body"]["name"], "osName": "linux", "statuses": st}

        def op_VirtualMachines_InstanceView(self, op, pp, q, body):
            return 200, self.instance_view(self.vm(pp)), {}

        def power(self, pp, op, state):
            r = self.vm(pp)
            r["power"] = state
            _, headers = self.start_operation("virtualMachine", "update", r["body"]["id"], r["body"]["location"], op)
            return 202, None, headers

        def op_VirtualMachines_Deallocate(self, op, pp, q, body):
            return self.power(pp, op, "deallocated")

        def op_VirtualMachines_PowerOff(self, op, pp, q, body):
            return self.power(pp, op, "stopped")

        def op_VirtualMachines_Generalize(self, op, pp, q, body):
            r = self.vm(pp)
            if r.get("power") not in ("stopped", "deallocated"):
                raise HttpError(409, "OperationNotAllowed", "Operation 'generalize' is not allowed since the "
                                "VM is running. Stop or deallocate the VM first.")
            r["generalized"] = True
            return 200, None, {}

        def op_VirtualMachines_Delete(self, op, pp, q, body):
            return self.delete_lro(pp, "Microsoft.Compute/virtualMachines", "vmName", "virtualMachine", op)

        def op_Disks_Get(self, op, pp, q, body):
            r = self.need(pp, "Microsoft.Compute/disks", "diskName", "disk")
            return 200, copy.deepcopy(r["body"]), {}

        def op_Disks_Delete(self, op, pp, q, body):
            rg = self.group(pp)
            r = self.st.get(self.arm_id(pp, rg, "Microsoft.Compute/disks", pp["diskName"]))
            if r is not None and r["body"].get("managedBy") and self.st.get(r["body"]["managedBy"]) is not None:
                raise HttpError(409, "OperationNotAllowed", f"Disk {pp['diskName']} is attached to VM "
                                f"{r['body']['managedBy']}.")
            return self.delete_lro(pp, "Microsoft.Compute/disks", "diskName", "disk", op)

        def op_Images_CreateOrUpdate(self, op, pp, q, body):
            src = ((body.get("properties") or {}).get("sourceVirtualMachine") or {}).get("id")
            vm = self.st.get(src) if src else None
            if vm is not None and vm["kind"] == "virtualMachine" and not vm.get("generalized"):
                raise HttpError(409, "OperationNotAllowed", f"The source virtual machine '{src}' must be "
                                "generalized to create an image (POST .../generalize).")
            return super().op_Images_CreateOrUpdate(op, pp, q, body)

    return PackerHandler


# ---------------------------------------------------------------- hooks for standin.py


def install(standin, handler_cls):
    """Adds the Packer routes to the stand-in; returns the handler class to serve with."""
    mod = __import__("sys").modules[handler_cls.__module__]
    standin.packer = {"rg_locations": {}, "schemas": None, "log": mod.log}
    try:
        cat = load_catalog()
    except schemas.SchemaError as e:
        mod.log(f"packer routes: not served ({e})")
        return handler_cls
    standin.catalog.models.update(cat.models)
    standin.catalog.operations += cat.operations
    standin.routes = []
    for op in standin.catalog.operations:
        segs = [s for s in op["path"].split("/") if s]
        rx = "^/" + "/".join("([^/]+)" if s.startswith("{") else re.escape(s) for s in segs) + "/?$"
        names = [s[1:-1] for s in segs if s.startswith("{")]
        literals = sum(1 for s in segs if not s.startswith("{"))
        standin.routes.append((re.compile(rx, re.IGNORECASE), names, literals, op))
    standin.routes.sort(key=lambda r: -r[2])
    standin.packer["schemas"] = cat.source
    mod.log(f"packer routes: {len(cat.operations)} operations from {cat.source}")
    return make_handler(handler_cls, mod)


def start(standin, handler_cls, host):
    """A second listener with TLS (a fresh self-signed certificate for 127.0.0.1):
    go-azure-helpers fetches `https://{metadata_host}/metadata/endpoints`.
    Returns the ready line's extra keys."""
    if not standin.packer.get("schemas"):
        return {}
    import atexit
    import shutil
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="kiln-azure-tls-")
    atexit.register(shutil.rmtree, d, True)
    cert, key = os.path.join(d, "ca.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "7", "-subj", "/CN=kiln-azure-standin", "-keyout", key, "-out", cert,
                    "-addext", f"subjectAltName=IP:{host},DNS:localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = ThreadingHTTPServer((host, 0), handler_cls)
    srv.daemon_threads = True
    srv.standin = standin
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    port = srv.server_address[1]
    out = {"metadata_host": f"{host}:{port}", "cloud_environment_name": CLOUD_NAME, "tls_ca_file": cert,
           "packer_schemas": standin.packer["schemas"]}
    ssh = start_ssh(standin, host)
    if ssh:
        out["ssh_port"] = standin.packer["ssh_port"] = ssh
    else:
        standin.packer["log"]("packer routes: no SSH responder (paramiko is not installed: "
                              "hack/azure/packer-setup.sh); Linux builds cannot connect")
    return out


# ---------------------------------------------------------------- the VMs' SSH


def start_ssh(standin, host):
    """An SSH responder on host:port standing in for the VMs that deployments
    create (their public IP is 127.0.0.1). azure-arm v1.4.5 always runs its
    SSH step on Linux, whatever `communicator` says, so a build needs one.
    It accepts a public key only for a VM that exists, runs, and was deployed
    with that admin user and key (osProfile.linuxConfiguration.ssh), answers
    exec requests with exit status 0 without running anything (the commands
    are recorded: GET /_control/packer), and has no shell, scp or sftp.
    Needs paramiko (packer-setup.sh installs it into the venv); None without."""
    try:
        import logging
        import socket
        import paramiko
    except ImportError:
        return None
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    key = paramiko.ECDSAKey.generate()
    log = standin.packer.setdefault("ssh", {"logins": [], "refused": 0, "commands": []})
    st = standin.state

    class Server(paramiko.ServerInterface):
        def __init__(self):
            self.vm = None

        def get_allowed_auths(self, username):
            return "publickey"

        def check_auth_publickey(self, username, k):
            want = k.get_base64()
            with st.lock:
                for r in list(st.resources.values()):
                    b = r["body"]
                    if r["kind"] != "virtualMachine" or r.get("power", "running") != "running":
                        continue
                    osp = b["properties"].get("osProfile") or {}
                    keys = (((osp.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys")) or []
                    if osp.get("adminUsername") == username and any(
                            (x.get("keyData") or "").split()[1:2] == [want] for x in keys):
                        self.vm = b["id"]
                        log["logins"].append({"vm": b["id"], "user": username, "key_type": k.get_name()})
                        return paramiko.AUTH_SUCCESSFUL
                log["refused"] += 1
            return paramiko.AUTH_FAILED

        def check_channel_request(self, kind, chanid):
            return paramiko.OPEN_SUCCEEDED if kind == "session" else \
                paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_pty_request(self, *a):
            return True

        def check_channel_env_request(self, *a):
            return True

        def check_channel_exec_request(self, channel, command):
            cmd = command.decode(errors="replace")
            entry = {"vm": self.vm, "command": cmd}
            with st.lock:
                log["commands"].append(entry)

            def run():
                try:
                    if re.match(r"^scp\b.*\s-\w*t\w*\b", cmd):  # `scp -t DIR`: Packer uploads a file
                        entry["files"] = scp_sink(channel)
                    channel.send_exit_status(0)
                    channel.shutdown_write()
                    channel.close()
                except Exception as e:
                    entry["error"] = repr(e)
            # after paramiko has sent this request's reply (it does so when this returns)
            threading.Timer(0.1, run).start()
            return True

    def scp_sink(ch):
        """The receiving end of scp's protocol (one ack byte per header and per file); the
        content is read and dropped, the names and sizes are kept."""
        files = []
        f = ch.makefile("rb")
        ch.sendall(b"\0")
        while True:
            line = f.readline()
            if not line:
                return files
            kind = line[:1]
            if kind == b"C":
                mode, size, name = line[1:].decode().rstrip("\n").split(" ", 2)
                ch.sendall(b"\0")
                left = int(size)
                while left > 0:
                    got = f.read(min(left, 65536))
                    if not got:
                        return files
                    left -= len(got)
                f.read(1)
                files.append({"name": name, "size": int(size), "mode": mode})
            ch.sendall(b"\0")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(16)

    def serve(conn):
        t = paramiko.Transport(conn)
        t.add_server_key(key)
        try:
            t.start_server(server=Server())
            while t.is_active():
                ch = t.accept(timeout=1)
                if ch is None:
                    continue
        except Exception:
            pass
        finally:
            t.close()

    def accept():
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return sock.getsockname()[1]
