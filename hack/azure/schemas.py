"""Where the Azure stand-in's schemas come from, in one neutral form.

Two sources, one result (a `Catalog`):

* Swagger 2.0 (`from_swagger`): Azure's published resource-manager specs for
  the Compute Gallery, GalleryRP 2024-03-03, and for Microsoft.Resources
  2025-04-01 (only `Providers_Get` is taken from it), read at run time from
  $KILN_AZURE_SPECS, <repo>/../shared/specs/azure or
  $KILN_CACHE_DIR/specs/azure (never copied into the repository).
* The Python SDKs (`from_sdk`, `from_resource_sdk`): `azure-mgmt-compute` and
  `azure-mgmt-resource`, which AutoRest generates from the same Swaggers. Its source is read with `ast` (never imported):
  models' `_attribute_map` (wire key -> msrest type), `_validation`
  (required, readonly, constraints), the `__init__` annotations that name
  enum classes, the enum classes' values, and the operations' request
  builders (verb, URL template, api-version, path and query parameters) and
  methods (body model, response model, status codes, headers, LRO, paging).
  Managed images (Microsoft.Compute/images, ComputeRP) only come this way:
  their Swagger is not in shared/specs/azure.

The neutral form (plain dicts, JSON-able):

  schema:    {"ref": "ModelName"}          a named object model (may add "readOnly")
             {"type": "object", "properties": {name: schema}, "required": [..],
              "additionalProperties": schema | True | None, "title": "..."}
             {"type": "string", "enum", "format", "pattern", "minLength", "maxLength"}
             {"type": "integer", "format": "int32"|"int64", "minimum", "maximum"}
             {"type": "number"} {"type": "boolean"} {"type": "any"}
             {"type": "array", "items": schema, "minItems", "maxItems"}
             any of them may carry "readOnly": True, "nullable": True
  operation: {"id", "method", "path", "api_version", "params": {"path": {n: p},
              "query": {n: p}}, "body": schema | None, "body_required",
              "responses": {"200": schema | None, ..., "default": schema},
              "headers": {"201": {"Retry-After": schema}}, "lro", "pageable"}
             p = schema + {"required": bool}
"""

import ast
import glob
import json
import os
import re
import sys

GALLERY_API = "2024-03-03"
SDK_PACKAGE = "azure-mgmt-compute"
SDK_PIN = "37.1.0"  # hack/azure/requirements.txt
RESOURCES_API = "2025-04-01"
RESOURCE_SDK_PACKAGE = "azure-mgmt-resource"
RESOURCE_SDK_PIN = "25.0.0"  # hack/azure/requirements.txt
# The operations of Microsoft.Resources the stand-in takes from its schemas
# (the rest of resources.json, generic paths such as Resources_Get among
# them, would swallow every unknown path).
RESOURCES_OPERATIONS = ("Providers_Get",)

HERE = os.path.dirname(os.path.abspath(__file__))


class SchemaError(Exception):
    pass


class Catalog:
    def __init__(self, source):
        self.source = source
        self.models = {}
        self.operations = []

    def merge(self, other):
        for name, m in other.models.items():
            self.models.setdefault(name, m)
        self.operations += other.operations
        return self


def cache_dir():
    return os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kiln")


# ---------------------------------------------------------------- Swagger


def spec_dirs():
    """The places to look for shared/specs/azure, in order."""
    out = []
    if os.environ.get("KILN_AZURE_SPECS"):
        out.append(("KILN_AZURE_SPECS", os.environ["KILN_AZURE_SPECS"]))
    out.append(("../shared beside the repository", os.path.join(HERE, "..", "..", "..", "shared", "specs", "azure")))
    out.append(("KILN_CACHE_DIR", os.path.join(cache_dir(), "specs", "azure")))
    return out


GALLERY_BUNDLED = "bundled/GalleryRP-2024-03-03.bundled.json"
GALLERY_ORIGINAL = ("specification/compute/resource-manager/Microsoft.Compute/GalleryRP/stable/"
                    "2024-03-03/GalleryRP.json")


RESOURCES_BUNDLED = "bundled/resources-2025-04-01.bundled.json"
RESOURCES_ORIGINAL = ("specification/resources/resource-manager/Microsoft.Resources/resources/stable/"
                      "2025-04-01/resources.json")


def find_gallery_spec():
    """(path, how) of the GalleryRP Swagger, or (None, reasons)."""
    return find_spec(GALLERY_BUNDLED, GALLERY_ORIGINAL)


def find_resources_spec():
    """(path, how) of the Microsoft.Resources Swagger, or (None, reasons)."""
    return find_spec(RESOURCES_BUNDLED, RESOURCES_ORIGINAL)


def find_spec(bundled, original):
    tried = []
    for how, d in spec_dirs():
        for rel in (bundled, original):
            p = os.path.normpath(os.path.join(d, rel))
            if os.path.isfile(p):
                return p, how
            tried.append(p)
    return None, tried


class _Refs:
    """Resolves $refs, also across files (the originals under specification/)."""

    def __init__(self):
        self.docs = {}

    def load(self, path):
        path = os.path.normpath(path)
        if path not in self.docs:
            with open(path) as f:
                self.docs[path] = json.load(f)
        return self.docs[path]

    def resolve(self, ref, base):
        file, _, pointer = ref.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(base), file)) if file else base
        node = self.load(path)
        for part in [p for p in pointer.split("/") if p]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node, path, pointer


def _pattern_ok(p):
    """Swagger patterns are ECMA regexes; Python's re reads nearly all of them."""
    try:
        re.compile(p)
        return p
    except re.error:
        fixed = re.sub(r"(\\[wdsWDS])-", r"\1\\-", p)
        re.compile(fixed)
        return fixed


def _copy_constraints(src, dst):
    for k in ("format", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems",
              "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems"):
        if k in src:
            dst[k] = src[k]
    if "pattern" in src:
        dst["pattern"] = _pattern_ok(src["pattern"])
    if "enum" in src:
        dst["enum"] = list(src["enum"])
    if src.get("readOnly"):
        dst["readOnly"] = True
    if src.get("x-nullable"):
        dst["nullable"] = True


class _SwaggerConverter:
    def __init__(self, path, catalog):
        self.refs = _Refs()
        self.path = path
        self.cat = catalog

    def is_model(self, d):
        return bool(d.get("properties") or d.get("allOf") or
                    (d.get("type") == "object" and "additionalProperties" not in d and "enum" not in d) or
                    ("type" not in d and "enum" not in d and "additionalProperties" not in d and "items" not in d))

    def convert(self, node, base):
        if "$ref" in node:
            target, tpath, pointer = self.refs.resolve(node["$ref"], base)
            name = pointer.rsplit("/", 1)[-1]
            if pointer.startswith("/definitions/") and self.is_model(target):
                self.model(name, target, tpath)
                out = {"ref": name}
            else:
                out = self.convert(target, tpath)
            extra = {k: v for k, v in node.items() if k != "$ref"}
            if extra.get("readOnly"):
                out = dict(out, readOnly=True)
            if extra.get("x-nullable"):
                out = dict(out, nullable=True)
            return out
        t = node.get("type")
        if t == "array":
            out = {"type": "array", "items": self.convert(node.get("items", {}), base)}
        elif t in ("string", "integer", "number", "boolean"):
            out = {"type": t}
        elif t == "file":
            out = {"type": "any"}
        elif node.get("properties") or node.get("allOf") or "additionalProperties" in node or t == "object":
            out = self.object(node, base, None)
        elif "enum" in node:
            out = {"type": "string"}
        else:
            out = {"type": "any"}
        _copy_constraints(node, out)
        return out

    def object(self, node, base, title):
        props, required = {}, []
        for parent in node.get("allOf", []):
            p = self.convert(parent, base)
            if "ref" in p:
                p = self.cat.models[p["ref"]]
            props.update(p.get("properties", {}))
            required += p.get("required", [])
        for k, v in node.get("properties", {}).items():
            props[k] = self.convert(v, base)
        required += node.get("required", [])
        out = {"type": "object", "properties": props, "required": sorted(set(required))}
        ap = node.get("additionalProperties")
        if ap is True or ap == {}:
            out["additionalProperties"] = True
        elif isinstance(ap, dict):
            out["additionalProperties"] = self.convert(ap, base)
        elif not props and not node.get("allOf") and ap is None:
            out["additionalProperties"] = True  # a free-form object
        if title:
            out["title"] = title
        return out

    def model(self, name, node, base):
        if name in self.cat.models:
            return
        self.cat.models[name] = {"type": "object", "title": name, "properties": {}, "required": []}  # recursion guard
        m = self.object(node, base, name)
        if node.get("discriminator"):
            m["discriminator"] = node["discriminator"]
        self.cat.models[name] = m

    def param(self, p, base):
        if "$ref" in p:
            p, base, _ = self.refs.resolve(p["$ref"], base)
        if p["in"] == "body":
            return p, self.convert(p["schema"], base)
        s = {"type": p.get("type", "string")}
        _copy_constraints(p, s)
        if p.get("type") == "array":
            s["items"] = self.convert(p.get("items", {}), base)
        s["required"] = bool(p.get("required"))
        return p, s

    def operations(self, only=None):
        doc = self.refs.load(self.path)
        version = doc["info"]["version"]
        for path, item in doc["paths"].items():
            common = item.get("parameters", [])
            for method, op in item.items():
                if method == "parameters" or (only and op["operationId"] not in only):
                    continue
                o = {"id": op["operationId"], "method": method.upper(), "path": path, "api_version": version,
                     "params": {"path": {}, "query": {}, "header": {}}, "body": None, "body_required": False,
                     "responses": {}, "headers": {}, "lro": bool(op.get("x-ms-long-running-operation")),
                     "pageable": (op.get("x-ms-pageable") or {}).get("nextLinkName") if "x-ms-pageable" in op else None,
                     "source": "swagger"}
                for p in common + op.get("parameters", []):
                    raw, s = self.param(p, self.path)
                    if raw["in"] == "body":
                        o["body"], o["body_required"] = s, bool(raw.get("required"))
                    else:
                        o["params"][raw["in"]][raw["name"]] = s
                for code, r in op["responses"].items():
                    if "$ref" in r:
                        r, _, _ = self.refs.resolve(r["$ref"], self.path)
                    o["responses"][code] = self.convert(r["schema"], self.path) if "schema" in r else None
                    if r.get("headers"):
                        o["headers"][code] = {h: self.convert(v, self.path) for h, v in r["headers"].items()}
                self.cat.operations.append(o)


def from_swagger(path, how="", only=None):
    """The operations of one Swagger file (those named in `only`, if given)
    and the models they use."""
    shown = os.path.dirname(os.path.dirname(os.path.abspath(path))) if "/bundled/" in path else path
    cat = Catalog(f"spec files {shown}")
    cat.source_detail = {"kind": "swagger", "path": os.path.abspath(path), "found_via": how}
    _SwaggerConverter(path, cat).operations(only)
    return cat


# ---------------------------------------------------------------- SDK


def find_sdk(where=("azure", "mgmt", "compute"), env="KILN_AZURE_SDK_DIR"):
    """The installed SDK directory (azure/mgmt/compute, or where) and its
    version, or (None, None)."""
    cands = []
    if env and os.environ.get(env):
        cands.append(os.environ[env])
    for p in sys.path:
        cands.append(os.path.join(p, *where))
    cands += glob.glob(os.path.join(cache_dir(), "venv", "lib", "python3*", "site-packages", *where))
    for c in cands:
        if os.path.isfile(os.path.join(c, "_version.py")) and os.path.isdir(os.path.join(c, "operations")):
            m = re.search(r'VERSION\s*=\s*"([^"]+)"', open(os.path.join(c, "_version.py")).read())
            return os.path.abspath(c), (m.group(1) if m else "unknown")
    return None, None


_MSREST_PRIMITIVE = {
    "str": {"type": "string"}, "int": {"type": "integer", "format": "int32"},
    "long": {"type": "integer", "format": "int64"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
    "iso-8601": {"type": "string", "format": "date-time"}, "rfc-1123": {"type": "string", "format": "date-time-rfc1123"},
    "date": {"type": "string", "format": "date"}, "duration": {"type": "string", "format": "duration"},
    "unix-time": {"type": "integer", "format": "unixtime"}, "object": {"type": "any"},
    "bytearray": {"type": "string", "format": "byte"}, "base64": {"type": "string", "format": "base64url"},
    "decimal": {"type": "number"}, "time": {"type": "string", "format": "time"},
}

_VALIDATION_KEYS = {"max_length": "maxLength", "min_length": "minLength", "maximum": "maximum",
                    "minimum": "minimum", "max_items": "maxItems", "min_items": "minItems",
                    "multiple": "multipleOf", "unique": "uniqueItems",
                    "maximum_ex": "exclusiveMaximum", "minimum_ex": "exclusiveMinimum"}


def _lit(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


class _SdkReader:
    def __init__(self, root, cat, package=SDK_PACKAGE, error_model="ApiError"):
        self.root = root
        self.cat = cat
        self.package = package
        self.error_model = error_model  # the model of ARM's {"error": ...}
        self.classes = {}   # name -> {"bases", "attribute_map", "validation", "enums": {attr: enumname}}
        self.enums = {}     # name -> [values]
        self._load_models()

    def _load_models(self):
        mdir = os.path.join(self.root, "models")
        for f in sorted(glob.glob(os.path.join(mdir, "*.py"))):
            tree = ast.parse(open(f).read(), f)
            for cls in tree.body:
                if not isinstance(cls, ast.ClassDef):
                    continue
                bases = [ast.unparse(b) for b in cls.bases]
                if any(b.endswith("Enum") for b in bases):
                    self.enums[cls.name] = [s.value.value for s in cls.body if isinstance(s, ast.Assign)
                                            and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)]
                    continue
                info = {"bases": bases, "enums": {}}
                # read-only attributes are no constructor arguments: their enum
                # class is named only in the docstring's ":vartype x: str or ~...Enum"
                for attr, names in re.findall(r":vartype (\w+): ([^\n]+)", ast.get_docstring(cls) or ""):
                    found = re.findall(r"~azure\.mgmt\.(?:\w+\.)*?models\.(\w+)", names)
                    if found:
                        info["enums"][attr] = found
                for s in cls.body:
                    if isinstance(s, (ast.Assign, ast.AnnAssign)):
                        tgt = s.targets[0] if isinstance(s, ast.Assign) else s.target
                        if isinstance(tgt, ast.Name) and tgt.id in ("_attribute_map", "_validation", "_subtype_map"):
                            info[tgt.id.lstrip("_")] = _lit(s.value)
                    if isinstance(s, ast.FunctionDef) and s.name == "__init__":
                        for a in s.args.kwonlyargs + s.args.args:
                            if a.annotation is not None:
                                names = re.findall(r"_models\.(\w+)", ast.unparse(a.annotation))
                                if names:
                                    info["enums"][a.arg] = names
                self.classes[cls.name] = info

    def _inherited(self, name, key):
        c = self.classes.get(name)
        while c is not None:
            if c.get(key) is not None:
                return c[key]
            c = next((self.classes[b] for b in c["bases"] if b in self.classes), None)
        return None

    def type_schema(self, t):
        if t in _MSREST_PRIMITIVE:
            return dict(_MSREST_PRIMITIVE[t])
        if t.startswith("[") and t.endswith("]"):
            return {"type": "array", "items": self.type_schema(t[1:-1])}
        if t.startswith("{") and t.endswith("}"):
            return {"type": "object", "properties": {}, "required": [], "additionalProperties": self.type_schema(t[1:-1])}
        if t in self.enums:
            return {"type": "string", "enum": list(self.enums[t])}
        self.model(t)
        return {"ref": t}

    def model(self, name):
        if name in self.cat.models:
            return
        if name not in self.classes:
            raise SchemaError(f"{self.package}: no model class {name}")
        self.cat.models[name] = {"type": "object", "title": name, "properties": {}, "required": []}
        amap = self._inherited(name, "attribute_map") or {}
        validation = self._inherited(name, "validation") or {}
        enums = {}
        c = self.classes[name]
        chain = [c]
        while True:  # enum annotations of the class and its bases
            nxt = next((self.classes[b] for b in chain[-1]["bases"] if b in self.classes), None)
            if nxt is None:
                break
            chain.append(nxt)
        for link in reversed(chain):
            enums.update(link["enums"])
        root = {"type": "object", "title": name, "properties": {}, "required": []}
        for attr, spec in amap.items():
            parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", spec["key"])]
            s = self.type_schema(spec["type"])
            enum_names = [e for e in enums.get(attr, []) if e in self.enums]
            if spec["type"] == "str" and enum_names:
                s["enum"] = list(self.enums[enum_names[0]])
            elif spec["type"] == "[str]" and enum_names:
                s["items"]["enum"] = list(self.enums[enum_names[0]])
            v = validation.get(attr, {})
            for k, nk in _VALIDATION_KEYS.items():
                if k in v:
                    s[nk] = v[k]
            if "pattern" in v:
                s["pattern"] = _pattern_ok(v["pattern"])
            if v.get("constant"):
                s["const"] = True
            if v.get("readonly"):
                s["readOnly"] = True
            node = root
            for env in parts[:-1]:  # flattened envelopes such as "properties"
                if env not in node["properties"]:
                    node["properties"][env] = {"type": "object", "properties": {}, "required": []}
                node = node["properties"][env]
            node["properties"][parts[-1]] = s
            if v.get("required"):
                node["required"].append(parts[-1])
                # the envelopes on the way are required too
                n = root
                for env in parts[:-1]:
                    if env not in n["required"]:
                        n["required"].append(env)
                    n = n["properties"][env]
        for env in root["properties"].values():  # an envelope all of whose fields are read-only is read-only
            if env.get("type") == "object" and "title" not in env and env["properties"] and \
                    all(p.get("readOnly") for p in env["properties"].values()):
                env["readOnly"] = True
        sub = self._inherited(name, "subtype_map")
        if sub:
            root["discriminator"] = next(iter(sub))
        self.cat.models[name] = root

    # ---- operations

    def operations(self, files, only=None):
        """Two layouts: one file per operation group (`_images_operations.py`:
        the group is in the file name, `build_get_request`), or one
        `_operations.py` for all groups (azure-mgmt-resource:
        `build_providers_get_request`, the group is the class that calls it)."""
        for f in files:
            shared = os.path.basename(f) == "_operations.py"
            group = "".join(w.capitalize() for w in os.path.basename(f)[1:-len("_operations.py")].split("_"))
            src = open(f).read()
            tree = ast.parse(src, f)
            builders = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("build_")}
            classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
            methods, by_class = {}, {}
            for c in classes:
                for m in c.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        seg = ast.get_source_segment(src, m)
                        methods.setdefault(m.name, []).append(seg)
                        by_class.setdefault(c.name, {}).setdefault(m.name, []).append(seg)
            for bname, fn in builders.items():
                stem = bname[len("build_"):-len("_request")]
                op_name, ms = stem, methods
                if shared:
                    owner = next((c for c, cm in by_class.items()
                                  if any(f"{bname}(" in t for ts in cm.values() for t in ts)), None)
                    if owner is None:
                        continue
                    group = owner[:-len("Operations")] or "Operations"
                    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", group).lower()
                    op_name = stem[len(snake) + 1:] if stem.startswith(snake + "_") else stem
                    ms = by_class[owner]
                op_id = group + "_" + "".join(w.capitalize() for w in op_name.split("_"))
                if only and op_id not in only:
                    continue
                self.cat.operations.append(self._operation(op_id, stem, op_name, fn, src, ms))

    def _operation(self, op_id, stem, op_name, fn, src, methods):
        text = ast.get_source_segment(src, fn)
        method = re.search(r'HttpRequest\(method="(\w+)"', text).group(1)
        url = re.search(r'"template_url",\s*"([^"]+)"', text).group(1)
        api = re.search(r'_params\.pop\("api-version", "([^"]+)"\)', text).group(1)
        o = {"id": op_id, "method": method, "path": url, "api_version": api,
             "params": {"path": {}, "query": {}, "header": {}}, "body": None, "body_required": False,
             "responses": {}, "headers": {}, "lro": False, "pageable": None, "source": "sdk"}
        arg_enums = {}
        arg_optional = set()
        args = fn.args
        for a in args.args + args.kwonlyargs:
            if a.annotation is not None:
                arg_enums[a.arg] = [e for e in re.findall(r"_models\.(\w+)", ast.unparse(a.annotation)) if e in self.enums]
        for a, d in zip(args.kwonlyargs, args.kw_defaults):
            if d is not None:
                arg_optional.add(a.arg)
        for a in args.args[len(args.args) - len(args.defaults):]:
            arg_optional.add(a.arg)

        def param(call, where):
            name_arg = call.args[1]
            t = _lit(call.args[2])
            s = self.type_schema(t) if t else {"type": "string"}
            if t == "[str]":
                s = {"type": "string"}  # serialized with a div
            for kw in call.keywords:
                v = _lit(kw.value)
                if kw.arg in _VALIDATION_KEYS:
                    s[_VALIDATION_KEYS[kw.arg]] = v
                elif kw.arg == "pattern":
                    s["pattern"] = _pattern_ok(v)
            pyname = name_arg.id if isinstance(name_arg, ast.Name) else None
            if pyname and arg_enums.get(pyname):
                s["enum"] = list(self.enums[arg_enums[pyname][0]])
            s["required"] = not (pyname in arg_optional) if where == "query" else True
            return s

        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                    node.targets[0].id == "path_format_arguments" and isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values):
                    o["params"]["path"][_lit(k)] = param(v, "path")
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) and \
                    isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "_params" and \
                    isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "_SERIALIZER.query":
                key = _lit(node.targets[0].slice)
                o["params"]["query"][key] = param(node.value, "query")
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) and \
                    isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "_headers" and \
                    isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "_SERIALIZER.header":
                key = _lit(node.targets[0].slice)
                if key and key.lower() not in ("accept", "content-type"):
                    o["params"]["header"][key] = param(node.value, "header")
        o["params"]["query"].setdefault("api-version", {"type": "string", "required": True})
        o["params"]["query"]["api-version"]["required"] = True

        # The methods that use this builder: the public one (or its _initial)
        # and, for long-running operations, begin_<op>.
        calling = [t for ms in methods.values() for t in ms if f"build_{stem}_request(" in t]
        lro = methods.get("begin_" + op_name, [])
        public = methods.get(op_name, [])
        o["lro"] = bool(lro)
        body_text = "\n".join(calling)
        m = re.search(r'_serialize\.body\(\w+, "(\w+)"\)', body_text)
        if m:
            o["body"] = self.type_schema(m.group(1))
            o["body_required"] = True
        codes = re.search(r"status_code not in \[([\d, ]+)\]", body_text)
        codes = [c.strip() for c in codes.group(1).split(",")] if codes else ["200"]
        result = None
        for t in lro + public + calling:
            for name in re.findall(r'_deserialize\("(\w+)", pipeline_response', t):
                if name not in _MSREST_PRIMITIVE:
                    result = name
                    break
            if result:
                break
        if "ItemPaged(" in "\n".join(public) or "AsyncItemPaged(" in "\n".join(public):
            o["pageable"] = "nextLink"
        for c in codes:
            o["responses"][c] = self.type_schema(result) if result and not (method == "DELETE") else None
            if o["lro"] and c == "202" and method != "DELETE" and result is None:
                o["responses"][c] = None
        headers = dict(re.findall(r'response_headers\["([\w-]+)"\] = self\._deserialize\("(\w+)"', body_text))
        if headers:
            hs = {h: self.type_schema(t) for h, t in headers.items()}
            for c in codes:
                o["headers"][c] = hs
        o["responses"]["default"] = self.cloud_error()
        return o

    def cloud_error(self):
        """ARMErrorFormat: {"error": ApiError} (azure-mgmt-compute) or {"error":
        ErrorResponse} (azure-mgmt-resource); the SDKs have no CloudError model."""
        if "CloudError" not in self.cat.models:
            self.model(self.error_model)
            self.cat.models["CloudError"] = {"type": "object", "title": "CloudError",
                                             "properties": {"error": {"ref": self.error_model}}, "required": []}
        return {"ref": "CloudError"}


GALLERY_OPERATION_FILES = ("_galleries_operations.py", "_gallery_*_operations.py", "_shared_galler*_operations.py",
                           "_community_galler*_operations.py", "_soft_deleted_resource_operations.py")
IMAGE_OPERATION_FILES = ("_images_operations.py",)


def from_sdk(parts=("galleries", "images"), root=None, version=None):
    if root is None:
        root, version = find_sdk()
    if root is None:
        raise SchemaError(f"{SDK_PACKAGE} is not installed (run hack/azure/setup.sh, which puts "
                          f"{SDK_PACKAGE}=={SDK_PIN} into {os.path.join(cache_dir(), 'venv')})")
    cat = Catalog(f"{SDK_PACKAGE}=={version}")
    cat.source_detail = {"kind": "sdk", "path": root, "version": version}
    reader = _SdkReader(root, cat)
    pats = (GALLERY_OPERATION_FILES if "galleries" in parts else ()) + (IMAGE_OPERATION_FILES if "images" in parts else ())
    files = sorted({f for p in pats for f in glob.glob(os.path.join(root, "operations", p))})
    reader.operations(files)
    reader.cloud_error()
    return cat


def from_resource_sdk(root=None, version=None):
    """Providers_Get from azure-mgmt-resource (ResourceManagementClient, 2025-04-01)."""
    if root is None:
        root, version = find_sdk(("azure", "mgmt", "resource", "resources"), None)
    if root is None:
        raise SchemaError(f"{RESOURCE_SDK_PACKAGE} is not installed (run hack/azure/setup.sh)")
    cat = Catalog(f"{RESOURCE_SDK_PACKAGE}=={version}")
    cat.source_detail = {"kind": "sdk", "path": root, "version": version}
    reader = _SdkReader(root, cat, RESOURCE_SDK_PACKAGE, "ErrorResponse")
    reader.operations([os.path.join(root, "operations", "_operations.py")], only=RESOURCES_OPERATIONS)
    reader.cloud_error()
    return cat


# ---------------------------------------------------------------- hand-written


def operation_status_schema():
    """The Azure-AsyncOperation status body. ARM's RPC defines it, no Swagger
    in shared/specs/azure or the SDK does, so this one is written by hand."""
    return {"type": "object", "title": "OperationStatus (hand-written, ARM RPC)", "required": ["status"],
            "properties": {
                "id": {"type": "string"}, "name": {"type": "string"},
                "status": {"type": "string", "enum": ["InProgress", "Succeeded", "Failed", "Canceled"]},
                "startTime": {"type": "string", "format": "date-time"},
                "endTime": {"type": "string", "format": "date-time"},
                "percentComplete": {"type": "number"},
                "error": {"ref": "ApiError"},
                "properties": {"type": "any"}}}


def arm_error_schema():
    """An ARM error body outside any operation (authentication, authorization,
    an unknown path): the operations' own error model, {"error": ApiError}."""
    return {"type": "object", "title": "CloudError", "required": ["error"],
            "properties": {"error": {"ref": "ApiError"}}}


def token_response_schema():
    """Entra ID's token answer (OAuth 2.0, RFC 6749 5.1 plus Entra's ext_expires_in); hand-written."""
    return {"type": "object", "title": "TokenResponse (hand-written)",
            "required": ["token_type", "expires_in", "access_token"],
            "properties": {"token_type": {"type": "string", "enum": ["Bearer"]},
                           "expires_in": {"type": "integer", "format": "int32", "minimum": 1},
                           "ext_expires_in": {"type": "integer", "format": "int32"},
                           "access_token": {"type": "string", "minLength": 1}}}


def aad_error_schema():
    """Entra ID's error answer (RFC 6749 5.2 plus Entra's fields); hand-written."""
    return {"type": "object", "title": "AADError (hand-written)", "required": ["error", "error_description"],
            "properties": {"error": {"type": "string", "enum": [
                "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                "unsupported_grant_type", "invalid_scope"]},
                "error_description": {"type": "string", "pattern": "^AADSTS\\d+: "},
                "error_codes": {"type": "array", "items": {"type": "integer", "format": "int32"}},
                "timestamp": {"type": "string"}, "trace_id": {"type": "string", "format": "uuid"},
                "correlation_id": {"type": "string", "format": "uuid"}, "error_uri": {"type": "string"}}}


def load(mode=None):
    """The catalog the stand-in serves: (catalog, description).

    mode (KILN_AZURE_SCHEMAS): "auto" (default): the Swagger for galleries and
    for Providers_Get, each if found, else the SDK; "swagger": the Swagger or
    fail; "sdk": the SDKs for everything. Managed images always come from the
    SDK."""
    mode = (mode or os.environ.get("KILN_AZURE_SCHEMAS") or "auto").lower()
    if mode not in ("auto", "swagger", "spec", "sdk"):
        raise SchemaError(f"KILN_AZURE_SCHEMAS={mode}: use auto, swagger or sdk")
    gallery = providers = None
    if mode != "sdk":
        path, how = find_gallery_spec()
        if path:
            gallery = from_swagger(path, how)
        elif mode in ("swagger", "spec"):
            raise SchemaError("no GalleryRP 2024-03-03 Swagger in: " + ", ".join(how))
        path, how = find_resources_spec()
        if path:
            providers = from_swagger(path, how, only=RESOURCES_OPERATIONS)
        elif mode in ("swagger", "spec"):
            raise SchemaError("no Microsoft.Resources 2025-04-01 Swagger in: " + ", ".join(how))
    sdk_root, sdk_version = find_sdk()
    images = None
    if sdk_root:
        images = from_sdk(("images",) if gallery else ("galleries", "images"), sdk_root, sdk_version)
    res_root, res_version = find_sdk(("azure", "mgmt", "resource", "resources"), None)
    if providers is None and res_root:
        providers = from_resource_sdk(res_root, res_version)
    if gallery is None and images is None:
        raise SchemaError(f"no schemas: no Swagger files ({', '.join(d for _, d in spec_dirs())}) and "
                          f"{SDK_PACKAGE} is not installed: run hack/azure/setup.sh")
    named = False  # the description names the providers' source already
    if gallery is not None:
        cat = Catalog("")
        cat.merge(gallery)
        if images is not None:
            # ComputeRP models with the same names as GalleryRP ones (ApiError,
            # CloudError, ...) are kept apart: images' operations refer to theirs.
            _merge_renamed(cat, images, "ComputeRP.")
        if providers is not None and providers.source == gallery.source:
            desc = f"{gallery.source} (GalleryRP {GALLERY_API}, resources {RESOURCES_API})"
            named = True
        else:
            desc = f"{gallery.source} (GalleryRP {GALLERY_API})"
        desc += f"; images: {images.source}" if images is not None else "; images: unavailable (no SDK)"
        details = {"galleries": gallery.source_detail, "images": images.source_detail if images else None}
    else:
        cat = images
        desc = f"{images.source} (galleries and images)"
        details = {"galleries": images.source_detail, "images": images.source_detail}
    if providers is not None:
        # Microsoft.Resources has its own CloudError (of ErrorResponse): kept apart too.
        _merge_renamed(cat, providers, "Resources.")
        if not named:
            desc += f"; providers: {providers.source}"
    else:
        desc += f"; providers: unavailable (no {RESOURCE_SDK_PACKAGE})"
    details["providers"] = providers.source_detail if providers is not None else None
    cat.models.setdefault("ApiError", (images or gallery).models.get("ApiError"))
    cat.source = desc
    cat.details = details
    if sdk_version and sdk_version != SDK_PIN:
        print(f"schemas: WARNING: {SDK_PACKAGE} {sdk_version} is installed, {SDK_PIN} is pinned", file=sys.stderr)
    if res_version and res_version != RESOURCE_SDK_PIN and providers is not None and \
            providers.source_detail["kind"] == "sdk":
        print(f"schemas: WARNING: {RESOURCE_SDK_PACKAGE} {res_version} is installed, {RESOURCE_SDK_PIN} is pinned",
              file=sys.stderr)
    return cat, desc


def _merge_renamed(cat, other, prefix):
    def rename(node):
        if isinstance(node, dict):
            return {k: (prefix + v if k == "ref" and isinstance(v, str) else rename(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(x) for x in node]
        return node
    for name, m in other.models.items():
        cat.models[prefix + name] = rename(m)
    for o in other.operations:
        cat.operations.append(rename(o))


if __name__ == "__main__":
    c, d = load(sys.argv[1] if len(sys.argv) > 1 else None)
    print(d)
    print(len(c.models), "models,", len(c.operations), "operations")
    for o in c.operations:
        if ("Image" in o["id"] or "Provider" in o["id"]) and "Shared" not in o["id"] and "Community" not in o["id"]:
            print(f"  {o['method']:6} {o['id']:45} {o['api_version']} lro={o['lro']} pageable={o['pageable']} "
                  f"codes={sorted(o['responses'])} q={sorted(o['params']['query'])}")
