"""List `filter` expressions and partial-response `fields` selectors of the
Compute API, checked against the Discovery document's schemas.

Filter forms (see the `filter` parameter's description in the document):

- AIP-160: `field OP value` with OP one of `=`, `!=`, `>`, `<`, `>=`, `<=`,
  `:`; parenthesised terms, implicit AND, explicit `AND`, `OR` (which binds
  tighter than AND, as AIP-160 says) and `NOT` or `-`. Values are quoted
  ('...' or "...") or bare words; `*` in a string value is a wildcard; `:*`
  tests presence (`labels.owner:*`).
- Regular expressions: `field eq literal`, `field ne literal`, alone or as
  several parenthesised terms (all ANDed), full match, RE2 read as Python `re`.
  The two forms cannot be mixed (400, as in the API).

Every field path must be declared by the listed item's schema (`labels.<key>`
is a map key); otherwise the filter is rejected.
"""

import re

from discovery import parse_rfc3339

MISSING = object()


class FilterError(ValueError):
    pass


class _Parser:
    OPS = ("!=", ">=", "<=", "=", ">", "<", ":")

    def __init__(self, text):
        self.t, self.i = text, 0

    def fail(self, msg):
        raise FilterError(f"{msg} at position {self.i}")

    def ws(self):
        while self.i < len(self.t) and self.t[self.i].isspace():
            self.i += 1

    def end(self):
        self.ws()
        return self.i >= len(self.t)

    def keyword(self, word):
        self.ws()
        j = self.i + len(word)
        if self.t[self.i:j] == word and (j >= len(self.t) or self.t[j].isspace() or self.t[j] == "("):
            self.i = j
            return True
        return False

    def char(self, c):
        self.ws()
        if self.t.startswith(c, self.i):
            self.i += len(c)
            return True
        return False

    def expr(self):
        terms = [self.disjunction()]
        while not self.end() and not self.t.startswith(")", self.i):
            self.keyword("AND")
            terms.append(self.disjunction())
        return terms[0] if len(terms) == 1 else ("and", terms)

    def disjunction(self):
        terms = [self.unary()]
        while self.keyword("OR"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def unary(self):
        if self.keyword("NOT") or self.char("-"):
            return ("not", self.primary())
        return self.primary()

    def primary(self):
        if self.char("("):
            e = self.expr()
            if not self.char(")"):
                self.fail("expected ')'")
            return e
        self.ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*").match(self.t, self.i)
        if not m:
            self.fail("expected a field name")
        field = m.group(0)
        self.i = m.end()
        self.ws()
        op = None
        for candidate in ("eq", "ne"):
            if self.keyword(candidate):
                op = candidate
                break
        if op is None:
            for candidate in self.OPS:
                if self.t.startswith(candidate, self.i):
                    op = candidate
                    self.i += len(candidate)
                    break
        if op is None:
            self.fail(f"expected an operator after {field!r}")
        self.ws()
        value, quoted = self.value()
        return ("cmp", field, op, value, quoted)

    def value(self):
        if self.i < len(self.t) and self.t[self.i] in "'\"":
            q = self.t[self.i]
            self.i += 1
            out = []
            while self.i < len(self.t) and self.t[self.i] != q:
                if self.t[self.i] == "\\" and self.i + 1 < len(self.t):
                    self.i += 1
                out.append(self.t[self.i])
                self.i += 1
            if self.i >= len(self.t):
                self.fail("unterminated string")
            self.i += 1
            return "".join(out), True
        m = re.compile(r"[^\s()]+").match(self.t, self.i)
        if not m:
            self.fail("expected a value")
        self.i = m.end()
        return m.group(0), False


def _walk(node):
    yield node
    if node[0] in ("and", "or"):
        for n in node[1]:
            yield from _walk(n)
    elif node[0] == "not":
        yield from _walk(node[1])


def parse_filter(text, disc, item_ref):
    """A checked filter tree; FilterError if it cannot be read or names a
    field the item schema does not declare."""
    p = _Parser(text)
    if p.end():
        return None
    tree = p.expr()
    if not p.end():
        p.fail("unexpected text")
    cmps = [n for n in _walk(tree) if n[0] == "cmp"]
    regex = {n[2] in ("eq", "ne") for n in cmps}
    if len(regex) > 1:
        raise FilterError("regular-expression operators (eq, ne) and AIP-160 operators cannot be mixed")
    if regex == {True} and any(n[0] in ("or", "not") for n in _walk(tree)):
        raise FilterError("OR and NOT cannot be used with the eq/ne form")
    for _, field, op, value, _q in cmps:
        schema = disc.field_schema(item_ref, field)
        if schema is None:
            raise FilterError(f"field {field!r} is not a field of {item_ref}")
        if op in ("eq", "ne"):
            try:
                re.compile(value)
            except re.error as e:
                raise FilterError(f"bad regular expression {value!r}: {e}")
    return tree


def _values(view, dotted):
    """Values at a dotted path (arrays are looked through), or []."""
    out = [view]
    for seg in dotted.split("."):
        nxt = []
        for v in out:
            if isinstance(v, list):
                v = [x.get(seg, MISSING) if isinstance(x, dict) else MISSING for x in v]
                nxt.extend(x for x in v if x is not MISSING)
            elif isinstance(v, dict) and seg in v:
                nxt.append(v[seg])
        out = nxt
    flat = []
    for v in out:
        flat.extend(v if isinstance(v, list) else [v])
    return flat


def _glob(pattern, text):
    rx = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, text, re.S) is not None


def _compare(actual, op, literal, quoted):
    if isinstance(actual, bool):
        want = literal.lower() == "true"
        if literal.lower() not in ("true", "false"):
            return False
        return {"=": actual == want, "!=": actual != want, ":": actual == want}.get(op, False)
    if isinstance(actual, (dict, list)):
        return False
    text = str(actual)
    # numbers (JSON numbers, int64 strings)
    num_a = num_l = None
    try:
        num_a, num_l = float(text), float(literal)
    except ValueError:
        pass
    if num_a is not None and num_l is not None and not quoted:
        a, b = num_a, num_l
    else:
        ta, tl = parse_rfc3339(text), parse_rfc3339(literal)
        if ta is not None and tl is not None:
            a, b = ta, tl
        else:
            a, b = text, literal
    if op in ("=", ":"):
        return _glob(literal, text) if isinstance(a, str) and "*" in literal else a == b
    if op == "!=":
        return not (_glob(literal, text) if isinstance(a, str) and "*" in literal else a == b)
    try:
        return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
    except TypeError:
        return False


def matches(tree, view):
    if tree is None:
        return True
    kind = tree[0]
    if kind == "and":
        return all(matches(t, view) for t in tree[1])
    if kind == "or":
        return any(matches(t, view) for t in tree[1])
    if kind == "not":
        return not matches(tree[1], view)
    _, field, op, literal, quoted = tree
    values = _values(view, field)
    if op in ("eq", "ne"):
        texts = [str(v).lower() if isinstance(v, bool) else str(v) for v in values
                 if not isinstance(v, (dict, list))] or [""]
        hit = any(re.fullmatch(literal, t) for t in texts)
        return hit if op == "eq" else not hit
    if op == ":" and literal == "*":
        return any(v not in ("", None, [], {}) for v in values)
    if not values:
        return op == "!="
    if op == "!=":
        return all(_compare(v, "!=", literal, quoted) for v in values)
    return any(_compare(v, op, literal, quoted) for v in values)


# ---- fields selector (partial responses) ------------------------------------

def parse_fields(text):
    """`items(name,labels),nextPageToken` -> {"items": {"name": None, ...}, ...}.
    FilterError when it cannot be read."""
    p = _Parser(text)

    def plist():
        out = {}
        while True:
            p.ws()
            m = re.compile(r"[A-Za-z_*][A-Za-z0-9_]*(/[A-Za-z_*][A-Za-z0-9_]*)*").match(p.t, p.i)
            if not m:
                p.fail("expected a field name")
            p.i = m.end()
            parts = m.group(0).split("/")
            sub = None
            if p.char("("):
                sub = plist()
                if not p.char(")"):
                    p.fail("expected ')'")
            node = out
            for part in parts[:-1]:
                if part in node and node[part] is None:
                    node = None  # the whole field is already selected
                    break
                node = node.setdefault(part, {})
            if node is not None:
                node[parts[-1]] = sub
            if not p.char(","):
                return out

    tree = plist()
    if not p.end():
        p.fail("unexpected text")
    return tree


def check_fields(tree, disc, schema):
    """Names in a fields tree that `schema` does not declare."""
    bad = []
    schema = disc.resolve(schema)
    while schema.get("type") == "array":
        schema = disc.resolve(schema.get("items", {}))
    for name, sub in tree.items():
        if name == "*":
            continue
        props = schema.get("properties") or {}
        if name in props:
            child = props[name]
        elif isinstance(schema.get("additionalProperties"), dict):
            child = schema["additionalProperties"]
        else:
            bad.append(name)
            continue
        if sub:
            bad += [f"{name}/{b}" for b in check_fields(sub, disc, child)]
    return bad


def apply_fields(value, tree):
    if tree is None:
        return value
    if isinstance(value, list):
        return [apply_fields(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree:
        return {k: apply_fields(v, tree.get(k, tree["*"])) for k, v in value.items()}
    return {k: apply_fields(value[k], sub) for k, sub in tree.items() if k in value}
