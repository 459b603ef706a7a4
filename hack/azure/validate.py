"""One validator over the neutral schemas of schemas.py (either source).

check(catalog, schema, value, direction) -> [problem, ...], each problem a
dict {"code", "target", "message"}. direction "request": read-only fields,
undeclared fields, wrong types, enum values, constraints and missing
required fields are problems; JSON null is read as "not set" (ARM and JSON
merge-patch do so). direction "response": the same, except that read-only
fields are of course allowed and null is refused unless declared nullable.
"""

import datetime
import re

INT_RANGE = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$")


def parse_datetime(s):
    """RFC 3339 (a missing offset is read as UTC, as .NET does); None when not one."""
    if not isinstance(s, str) or not _RFC3339.match(s):
        return None
    t = s.replace(" ", "T").replace("t", "T").replace("z", "Z")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.match(r"^(.*\.\d{6})\d+(.*)$", t)  # Python takes at most 6 fraction digits
    if m:
        t = m.group(1) + m.group(2)
    try:
        d = datetime.datetime.fromisoformat(t)
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=datetime.timezone.utc)


def _kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _show(v):
    s = repr(v) if not isinstance(v, str) else '"' + v + '"'
    return s if len(s) <= 60 else s[:57] + "..."


class _Walk:
    def __init__(self, catalog, direction):
        self.cat = catalog
        self.direction = direction
        self.problems = []

    def add(self, code, target, message):
        if self.direction == "response":
            code = "InvalidResponseContent"
        self.problems.append({"code": code, "target": target or "(body)", "message": message})

    def resolve(self, s):
        extra = {}
        while "ref" in s:
            extra.update({k: v for k, v in s.items() if k != "ref"})
            s = self.cat.models[s["ref"]]
        if extra:
            s = dict(s, **extra)
        return s

    def walk(self, s, v, at):
        s = self.resolve(s)
        if v is None:
            if self.direction == "response" and not s.get("nullable"):
                self.add("InvalidResponseContent", at, f"'{at}' is null")
            return
        if self.direction == "request" and s.get("readOnly"):
            self.add("InvalidRequestContent", at, f"'{at}' is read-only: the server sets it, a request may not send it")
            return
        t = s.get("type", "any")
        k = _kind(v)
        if t == "any":
            return
        if t == "object":
            if k != "object":
                self.add("InvalidRequestContent", at, f"'{at}' must be an object, got {k} {_show(v)}")
                return
            props = s.get("properties", {})
            ap = s.get("additionalProperties")
            for name, val in v.items():
                sub = f"{at}.{name}" if at else name
                if name in props:
                    self.walk(props[name], val, sub)
                elif isinstance(ap, dict):
                    self.walk(ap, val, f"{at}['{name}']" if at else name)
                elif ap is True:
                    pass
                else:
                    title = s.get("title") or (at or "the body")
                    self.add("InvalidRequestContent", sub,
                             f"undeclared property '{sub}': {title} has no property '{name}' "
                             f"(known: {', '.join(sorted(props)) or 'none'})")
            for name in s.get("required", []):
                if v.get(name) is None:
                    sub = f"{at}.{name}" if at else name
                    self.add("InvalidRequestContent", sub, f"required property '{sub}' is missing")
            return
        if t == "array":
            if k != "array":
                self.add("InvalidRequestContent", at, f"'{at}' must be an array, got {k} {_show(v)}")
                return
            if "minItems" in s and len(v) < s["minItems"]:
                self.add("InvalidRequestContent", at, f"'{at}' needs at least {s['minItems']} items")
            if "maxItems" in s and len(v) > s["maxItems"]:
                self.add("InvalidRequestContent", at, f"'{at}' may have at most {s['maxItems']} items")
            for i, item in enumerate(v):
                self.walk(s.get("items", {"type": "any"}), item, f"{at}[{i}]")
            return
        if t == "boolean":
            if k != "boolean":
                self.add("InvalidRequestContent", at, f"'{at}' must be a boolean, got {k} {_show(v)}")
            return
        if t in ("integer", "number"):
            if k not in ("integer", "number") or (t == "integer" and k != "integer"):
                self.add("InvalidRequestContent", at, f"'{at}' must be {'an integer' if t == 'integer' else 'a number'}"
                         f"{' (' + s['format'] + ')' if s.get('format') else ''}, got {k} {_show(v)}")
                return
            lo, hi = INT_RANGE.get(s.get("format"), (None, None)) if t == "integer" else (None, None)
            if lo is not None and not lo <= v <= hi:
                self.add("InvalidRequestContent", at, f"'{at}' = {v} is out of the {s['format']} range")
            if "minimum" in s and v < s["minimum"]:
                self.add("InvalidRequestContent", at, f"'{at}' = {v} is below the minimum {s['minimum']}")
            if "maximum" in s and v > s["maximum"]:
                self.add("InvalidRequestContent", at, f"'{at}' = {v} is above the maximum {s['maximum']}")
            return
        if t == "string":
            if k != "string":
                self.add("InvalidRequestContent", at, f"'{at}' must be a string, got {k} {_show(v)}")
                return
            self.string(s, v, at)

    def string(self, s, v, at):
        if "enum" in s and v not in s["enum"]:
            self.add("InvalidRequestContent", at,
                     f"'{at}' = {_show(v)} is not an allowed value: one of {', '.join(s['enum'])}")
        f = s.get("format")
        if f == "date-time" and parse_datetime(v) is None:
            self.add("InvalidRequestContent", at, f"'{at}' = {_show(v)} is not an RFC 3339 date-time")
        if f == "uri" and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v):
            self.add("InvalidRequestContent", at, f"'{at}' = {_show(v)} is not an absolute URI")
        if f == "uuid" and not re.match(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", v):
            self.add("InvalidRequestContent", at, f"'{at}' = {_show(v)} is not a UUID")
        if "minLength" in s and len(v) < s["minLength"]:
            self.add("InvalidRequestContent", at, f"'{at}' is shorter than {s['minLength']} characters")
        if "maxLength" in s and len(v) > s["maxLength"]:
            self.add("InvalidRequestContent", at, f"'{at}' is longer than {s['maxLength']} characters")
        if "pattern" in s and not re.search(s["pattern"], v):
            self.add("InvalidRequestContent", at, f"'{at}' = {_show(v)} does not match the pattern {s['pattern']}")


def check(catalog, schema, value, direction="request", at=""):
    w = _Walk(catalog, direction)
    w.walk(schema, value, at)
    return w.problems


def check_string(catalog, schema, raw, at):
    """A path, query or header parameter (always text on the wire)."""
    w = _Walk(catalog, "request")
    t = schema.get("type", "string")
    if t == "integer":
        if not re.match(r"^-?\d+$", raw):
            w.add("InvalidParameter", at, f"'{at}' = {_show(raw)} must be an integer")
        else:
            w.walk({k: v for k, v in schema.items() if k != "required"}, int(raw), at)
    elif t == "boolean":
        if raw not in ("true", "false", "True", "False"):
            w.add("InvalidParameter", at, f"'{at}' = {_show(raw)} must be true or false")
    elif t == "number":
        try:
            float(raw)
        except ValueError:
            w.add("InvalidParameter", at, f"'{at}' = {_show(raw)} must be a number")
    else:
        w.string(schema, raw, at)
    for p in w.problems:
        p["code"] = "InvalidParameter"
    return w.problems
