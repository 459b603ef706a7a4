"""A validator driven by a Google API Discovery document (compute v1 here).

Standard library only. `standin.py` uses it on every request and response;
nothing in here knows about GCE's semantics, only about the document:

- `Discovery.match(verb, path)` finds the method by HTTP verb and path
  template (`flatPath`, or `path` where it has a `{+reserved}` expansion),
  below `servicePath`, and returns its path parameters (percent-decoded).
- `Discovery.check_query(method, pairs)` checks query parameters against the
  method's and the document's global parameters: unknown names, repeats of a
  non-repeated parameter, types (`integer` with int32/uint32 ranges and
  `minimum`/`maximum`, `boolean`, `number`, `string` with int64/uint64/byte/
  date-time formats), `enum` and `pattern`, and `required`.
- `Discovery.check_path(method, params)`: the same for path parameters.
- `Discovery.check_body(schema_ref, value, mode, method_id)` walks a JSON
  value against a schema (`$ref` into `schemas`): JSON types, formats,
  `enum`, `pattern`, arrays, nested objects, maps (`additionalProperties`),
  and properties the schema does not declare (Discovery schemas list every
  property). In "request" mode it also applies `annotations.required` for the
  method and accepts JSON null (proto3 JSON reads it as "unset"); in
  "response" mode null is refused. Output-only (`readOnly`) properties are
  checked like the others in both modes (the API parses, then ignores them).

Every check returns a list of `Problem`s; an empty list means valid.
"""

import base64
import binascii
import json
import re
from datetime import datetime
from urllib.parse import unquote

INT_RANGES = {
    "int32": (-(2 ** 31), 2 ** 31 - 1),
    "uint32": (0, 2 ** 32 - 1),
    "int64": (-(2 ** 63), 2 ** 63 - 1),
    "uint64": (0, 2 ** 64 - 1),
}
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
DURATION = re.compile(r"-?\d+(\.\d{1,9})?s")


class Problem:
    """One violation. `reason` is the Google error reason it maps to."""

    def __init__(self, where, message, reason="invalid"):
        self.where, self.message, self.reason = where, message, reason

    def __str__(self):
        return self.message

    def __repr__(self):
        return f"Problem({self.where!r}, {self.message!r})"


def parse_rfc3339(text):
    """datetime for an RFC 3339 timestamp, or None."""
    if not isinstance(text, str) or not RFC3339.fullmatch(text):
        return None
    t = text.replace("z", "Z").replace("t", "T")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.match(r"(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)", t)
    frac = (m.group(2) or "")[:7]  # fromisoformat takes at most 6 digits
    if len(frac) > 1:
        frac = frac.ljust(7, "0")
    try:
        return datetime.fromisoformat(m.group(1) + frac + m.group(3))
    except ValueError:
        return None


def _b64_ok(text):
    """Base64, standard or URL-safe alphabet, padding optional (as proto3 JSON reads bytes)."""
    if not re.fullmatch(r"[A-Za-z0-9+/_\-]*={0,2}", text):
        return False
    try:
        base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


class Method:
    def __init__(self, resource, name, raw):
        self.resource, self.name, self.raw = resource, name, raw
        self.id = raw["id"]
        self.verb = raw["httpMethod"]
        self.path = raw["path"]
        self.flat_path = raw.get("flatPath", raw["path"])
        self.params = raw.get("parameters", {})
        self.request = (raw.get("request") or {}).get("$ref")
        self.response = (raw.get("response") or {}).get("$ref")
        self.scopes = raw.get("scopes", [])
        self.api_version = raw.get("apiVersion")
        # Route on flatPath; a `{+name}` (reserved expansion, may hold "/") is
        # only in `path`, and its flatPath names variables the method does not
        # declare, so those methods route on `path`.
        template = self.path if "{+" in self.path else self.flat_path
        self.template = template
        rx, literal = "", 0
        for part in re.split(r"(\{\+?[A-Za-z0-9_.]+\})", template):
            if part.startswith("{+"):
                rx += f"(?P<{_group(part[2:-1])}>.+)"
            elif part.startswith("{"):
                rx += f"(?P<{_group(part[1:-1])}>[^/]+)"
            else:
                rx += re.escape(part)
                literal += len([s for s in part.split("/") if s])
        self.regex = re.compile(rx)
        self.literal_segments = literal
        self.segments = None if "{+" in template else template.count("/") + 1

    def path_param_names(self):
        return [n for n, p in self.params.items() if p.get("location") == "path"]


def _group(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


class Discovery:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.doc = json.load(f)
        if self.doc.get("kind") != "discovery#restDescription":
            raise ValueError(f"{path}: not a Discovery document (kind {self.doc.get('kind')!r})")
        self.schemas = self.doc["schemas"]
        self.service_path = "/" + self.doc.get("servicePath", "").strip("/") + "/"
        self.global_params = self.doc.get("parameters", {})
        self.revision = self.doc.get("revision")
        self.methods = {}
        self._by_segments = {}
        self._greedy = []
        self._pattern_cache = {}

        def walk(resources, prefix):
            for rname, res in resources.items():
                for mname, raw in res.get("methods", {}).items():
                    m = Method(prefix + rname, mname, raw)
                    self.methods[m.id] = m
                    if m.segments is None:
                        self._greedy.append(m)
                    else:
                        self._by_segments.setdefault(m.segments, []).append(m)
                walk(res.get("resources", {}), prefix + rname + ".")

        walk(self.doc.get("resources", {}), "")
        # More literal segments first: `images/family/{family}` before
        # `images/{resource}/getIamPolicy` for `images/family/getIamPolicy`.
        for lst in self._by_segments.values():
            lst.sort(key=lambda m: -m.literal_segments)
        self._greedy.sort(key=lambda m: -m.literal_segments)

    # ---- routing ------------------------------------------------------------

    def match(self, verb, raw_path):
        """(method, path params) for a request path such as
        /compute/v1/projects/p/global/images. Returns (None, verbs) when the
        path matches methods of other verbs only, (None, []) when nothing
        matches."""
        if not raw_path.startswith(self.service_path):
            return None, []
        rel = raw_path[len(self.service_path):]
        candidates = self._by_segments.get(rel.count("/") + 1, []) + self._greedy
        other_verbs = []
        for m in candidates:
            found = m.regex.fullmatch(rel)
            if not found:
                continue
            if m.verb != verb:
                other_verbs.append(m.verb)
                continue
            params = {}
            for n in m.path_param_names():
                g = found.groupdict().get(_group(n))
                if g is not None:
                    params[n] = unquote(g)
            return m, params
        return None, sorted(set(other_verbs))

    # ---- parameters ---------------------------------------------------------

    def _pattern(self, pattern):
        rx = self._pattern_cache.get(pattern)
        if rx is None:
            # RE2 classes such as \w and \s are ASCII-only, as is re.ASCII.
            rx = self._pattern_cache[pattern] = re.compile(pattern, re.ASCII)
        return rx

    def check_param(self, name, spec, raw):
        """Problems of one parameter value, given as the URL's text."""
        t, fmt = spec.get("type", "string"), spec.get("format")
        where = name
        if t == "integer":
            if not re.fullmatch(r"-?\d+", raw):
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': not an integer "
                                       f"({fmt or 'integer'})")]
            n = int(raw)
            lo, hi = INT_RANGES.get(fmt, (None, None))
            if lo is not None and not lo <= n <= hi:
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': out of range for {fmt}")]
            if "minimum" in spec and n < int(spec["minimum"]):
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': must be >= {spec['minimum']}")]
            if "maximum" in spec and n > int(spec["maximum"]):
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': must be <= {spec['maximum']}")]
        elif t == "boolean":
            if raw not in ("true", "false"):
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': expected true or false")]
        elif t == "number":
            try:
                float(raw)
            except ValueError:
                return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': not a number")]
        else:
            p = self._check_string_format(where, raw, fmt)
            if p:
                return [p]
        if "enum" in spec and raw not in spec["enum"]:
            return [Problem(where, f"Invalid value '{raw}' for parameter '{name}': must be one of "
                                   f"{', '.join(spec['enum'])}")]
        if "pattern" in spec and not self._pattern(spec["pattern"]).fullmatch(raw):
            return [Problem(where, f"Invalid value for field '{name}': '{raw}'. Must be a match of regex "
                                   f"'{spec['pattern']}'")]
        return []

    def check_query(self, method, pairs):
        """pairs: [(name, value)] as decoded from the query string.
        Returns (problems, {name: value or [values]})."""
        problems, values = [], {}
        for name, raw in pairs:
            spec = method.params.get(name)
            if spec is not None and spec.get("location") != "query":
                spec = None
            if spec is None:
                spec = self.global_params.get(name)
            if spec is None:
                problems.append(Problem(name, f"Invalid JSON payload received. Unknown name \"{name}\": "
                                              f"Cannot bind query parameter. Field '{name}' could not be found "
                                              f"in request message.", "badRequest"))
                continue
            if name in values and not spec.get("repeated"):
                problems.append(Problem(name, f"Parameter '{name}' is given more than once; it is not repeated"))
                continue
            problems += self.check_param(name, spec, raw)
            if spec.get("repeated"):
                values.setdefault(name, []).append(raw)
            else:
                values[name] = raw
        for name, spec in method.params.items():
            if spec.get("location") == "query" and spec.get("required") and name not in values:
                problems.append(Problem(name, f"Required parameter '{name}' is missing", "required"))
        return problems, values

    def check_path(self, method, params):
        problems = []
        for name in method.path_param_names():
            spec = method.params[name]
            if name not in params:
                if spec.get("required"):
                    problems.append(Problem(name, f"Required path parameter '{name}' is missing", "required"))
                continue
            problems += self.check_param(name, spec, params[name])
        return problems

    # ---- bodies -------------------------------------------------------------

    def resolve(self, schema):
        seen = 0
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
            seen += 1
            if seen > 20:
                raise ValueError("$ref loop")
        return schema

    def check_body(self, ref, value, mode, method_id=None, where="resource"):
        """Problems of `value` against schema `ref` (a name in `schemas`).
        mode: "request" or "response"."""
        problems = []
        self._check(self.schemas[ref], value, where, mode, method_id, problems, 0)
        return problems

    def _check_string_format(self, where, value, fmt):
        if fmt in ("int64", "uint64"):
            if not re.fullmatch(r"-?\d+", value):
                return Problem(where, f"Invalid value at '{where}' (TYPE_{fmt.upper()}), \"{value}\"")
            lo, hi = INT_RANGES[fmt]
            if not lo <= int(value) <= hi:
                return Problem(where, f"Invalid value at '{where}' (TYPE_{fmt.upper()}), \"{value}\": out of range")
        elif fmt == "byte":
            if not _b64_ok(value):
                return Problem(where, f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for "
                                      f"\"{value}\"")
        elif fmt in ("google-datetime", "date-time"):
            if parse_rfc3339(value) is None:
                return Problem(where, f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Timestamp), "
                                      f"Field '{where}', Invalid time format: \"{value}\"")
        elif fmt == "google-duration":
            if not DURATION.fullmatch(value):
                return Problem(where, f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration), "
                                      f"\"{value}\"")
        return None

    def _check(self, schema, value, where, mode, method_id, problems, depth):
        if depth > 64:
            problems.append(Problem(where, f"'{where}': nested too deeply"))
            return
        schema = self.resolve(schema)
        if value is None:
            if mode != "request":
                problems.append(Problem(where, f"'{where}' is null; the API omits unset fields"))
            return
        t = schema.get("type")
        if t == "any" or t is None:
            return
        if t == "object":
            if not isinstance(value, dict):
                problems.append(Problem(where, f"Invalid value at '{where}': expected an object, got "
                                               f"{_json_type(value)}"))
                return
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            if props is None and extra is None:
                return  # free-form (e.g. google.protobuf.Any)
            props = props or {}
            for key, sub in value.items():
                path = f"{where}.{key}"
                if key in props:
                    # Output-only (readOnly) properties are checked too: the
                    # API parses them, then ignores them.
                    self._check(props[key], sub, path, mode, method_id, problems, depth + 1)
                elif extra is not None:
                    self._check(extra, sub, path, mode, method_id, problems, depth + 1)
                else:
                    problems.append(Problem(path, f"Invalid JSON payload received. Unknown name \"{key}\" at "
                                                  f"'{where}': Cannot find field."))
            if mode == "request" and method_id:
                for key, spec in props.items():
                    if method_id in (spec.get("annotations") or {}).get("required", []):
                        # An empty string is present (Packer sends metadata
                        # items with value ""); GCE accepts them.
                        if value.get(key) in (None, [], {}):
                            problems.append(Problem(f"{where}.{key}", f"Required field '{where}.{key}' not "
                                                                      f"specified", "required"))
            return
        if t == "array":
            if not isinstance(value, list):
                problems.append(Problem(where, f"Invalid value at '{where}': expected an array, got "
                                               f"{_json_type(value)}"))
                return
            items = schema.get("items", {})
            for i, item in enumerate(value):
                self._check(items, item, f"{where}[{i}]", mode, method_id, problems, depth + 1)
            return
        fmt = schema.get("format")
        if t == "string":
            if not isinstance(value, str):
                kind = f"TYPE_{fmt.upper()}" if fmt in INT_RANGES else "TYPE_STRING"
                problems.append(Problem(where, f"Invalid value at '{where}' ({kind}), {json.dumps(value)}: "
                                               f"expected a JSON string"))
                return
            p = self._check_string_format(where, value, fmt)
            if p:
                problems.append(p)
                return
        elif t == "integer":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                problems.append(Problem(where, f"Invalid value at '{where}' (TYPE_{(fmt or 'int32').upper()}), "
                                               f"{json.dumps(value)}: expected a JSON integer"))
                return
            lo, hi = INT_RANGES.get(fmt, INT_RANGES["int32"])
            if not lo <= int(value) <= hi:
                problems.append(Problem(where, f"Invalid value at '{where}': {value} is out of range for "
                                               f"{fmt or 'int32'}"))
                return
            if "minimum" in schema and value < float(schema["minimum"]):
                problems.append(Problem(where, f"Invalid value at '{where}': must be >= {schema['minimum']}"))
            if "maximum" in schema and value > float(schema["maximum"]):
                problems.append(Problem(where, f"Invalid value at '{where}': must be <= {schema['maximum']}"))
        elif t == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(Problem(where, f"Invalid value at '{where}' (TYPE_DOUBLE), {json.dumps(value)}: "
                                               f"expected a JSON number"))
                return
        elif t == "boolean":
            if not isinstance(value, bool):
                problems.append(Problem(where, f"Invalid value at '{where}' (TYPE_BOOL), {json.dumps(value)}: "
                                               f"expected true or false"))
                return
        if "enum" in schema and value not in schema["enum"]:
            problems.append(Problem(where, f"Invalid value at '{where}', {json.dumps(value)}: must be one of "
                                           f"{', '.join(map(str, schema['enum']))}"))
        if "pattern" in schema and isinstance(value, str) and not self._pattern(schema["pattern"]).fullmatch(value):
            problems.append(Problem(where, f"Invalid value for field '{where}': '{value}'. Must be a match of "
                                           f"regex '{schema['pattern']}'"))

    # ---- field paths (for `filter` and `fields`) ----------------------------

    def field_schema(self, ref_or_schema, dotted):
        """The schema of a dotted field path below a schema, or None when a
        segment is not declared. Map keys (additionalProperties) match any
        name; arrays are looked through."""
        schema = self.resolve(self.schemas[ref_or_schema] if isinstance(ref_or_schema, str) else ref_or_schema)
        for seg in dotted.split("."):
            while schema.get("type") == "array":
                schema = self.resolve(schema.get("items", {}))
            if schema.get("type") != "object":
                return None
            props = schema.get("properties") or {}
            if seg in props:
                schema = self.resolve(props[seg])
            elif isinstance(schema.get("additionalProperties"), dict):
                schema = self.resolve(schema["additionalProperties"])
            else:
                return None
        return schema


def _json_type(v):
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
