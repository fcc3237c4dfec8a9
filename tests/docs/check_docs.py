#!/usr/bin/env python3
"""Checks that docs/api.md and src/api/openapi.json describe the same API, so neither drifts.

Usage: python3 tests/docs/check_docs.py [OPENAPI_JSON [API_MD]]

docs/api.md must have, for every operation of the OpenAPI document:
- a heading naming it as `METHOD /path` (in backticks, e.g. ### `PUT /v1/groups/{group}/members/{id}`);
- in that operation's section (up to the next heading of the same or a higher level): every
  parameter name (as `name`, {name} or name=) and every response status (as `404` or a table
  cell | 404).
And anywhere in docs/api.md, in backticks: every error `code` value, every property of every
request and response schema (the member record, views, the cluster and its nodes, errors...), and
every response header. Every API path docs/api.md mentions (operation headings, `/v1/...` anywhere,
URLs such as localhost:8081/healthz, a path alone in backticks) must exist in the OpenAPI document.

It also checks the links between README.md and docs/*.md: every relative link names a file that
exists and, with #anchor, a heading of that file (GitHub's anchors).

Only the standard library. Exit status 0 when consistent, 1 with one line per problem otherwise.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
OPERATION = re.compile(r"`(GET|PUT|POST|DELETE|PATCH|HEAD|OPTIONS|TRACE) (/[^`\s?]*)[^`]*`")
# A path after a host in a URL or curl command: localhost:8081/v1/..., http://127.0.0.1:8082/readyz.
URL_PATH = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\]|\{host\}|\$\{?\w+\}?)(?::\d+)?(/[^\s'\"`)<>\]\\|;,&]*)")
V1_PATH = re.compile(r"(?<![\w.:/-])(/v1/[^\s'\"`)<>\]\\|,;]*)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def resolve(spec, node):
    """Follows local $refs."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref in seen or not ref.startswith("#/"):
            raise ValueError(f"cannot resolve $ref {ref}")
        seen.add(ref)
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def properties(spec, schema, where, out, seen):
    """Adds (property name, where it is) for every property reachable from `schema`."""
    if isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            return
        seen = seen | {ref}
        where = ref.rsplit("/", 1)[-1]
        # Keywords beside a $ref (3.1) count as well.
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        properties(spec, resolve(spec, schema), where, out, seen)
        schema = rest
    if not isinstance(schema, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        out.setdefault(name, f"{where}.{name}")
        properties(spec, sub, f"{where}.{name}", out, seen)
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key, [])):
            properties(spec, sub, where, out, seen)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contentSchema"):
        if isinstance(schema.get(key), dict):
            properties(spec, schema[key], f"{where}[]" if key == "items" else where, out, seen)


def error_codes(spec, node, out):
    """Collects every `code` value (enum or const) of error schemas below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "code" and isinstance(value, dict):
                out.update(value.get("enum", []))
                if "const" in value:
                    out.add(value["const"])
            error_codes(spec, value, out)
    elif isinstance(node, list):
        for value in node:
            error_codes(spec, value, out)


def operations(spec):
    """(METHOD, path, operation, path-level parameters) for every operation."""
    for path, item in spec.get("paths", {}).items():
        item = resolve(spec, item)
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method], item.get("parameters", [])


def sections(lines):
    """Headings outside code blocks: (line index, level, text)."""
    found, in_fence = [], False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = HEADING.match(line)
        if m and not in_fence:
            found.append((i, len(m.group(1)), m.group(2)))
    return found


def section_text(lines, heads, k):
    start, level = heads[k][0], heads[k][1]
    end = next((h[0] for h in heads[k + 1:] if h[1] <= level), len(lines))
    return "\n".join(lines[start:end])


def inline_code(lines):
    """The code spans of the prose (outside fenced blocks; a span may wrap onto the next line)."""
    prose, in_fence = [], False
    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
            prose.append("")
        else:
            prose.append("" if in_fence else line)
    return {" ".join(c.split()) for c in re.findall(r"`([^`]+)`", "\n".join(prose))}


def path_matches(doc_path, templates):
    """Whether a path from the docs names one of the OpenAPI paths (a trailing / is a prefix)."""
    doc = doc_path.rstrip(".:")
    if doc.endswith("/"):
        return any(t.startswith(doc) for t in templates)
    parts = doc.split("/")
    for t in templates:
        tparts = t.split("/")
        if len(tparts) != len(parts):
            continue
        if all(d == s or (s.startswith("{") and d) or (d.startswith(("{", "$")) and s.startswith("{"))
               for d, s in zip(parts, tparts)):
            return True
    return False


def doc_paths(lines):
    """Every API path the document mentions: (line number, path)."""
    found = []
    for n, line in enumerate(lines, start=1):
        for m in OPERATION.finditer(line):
            found.append((n, m.group(2)))
        for m in URL_PATH.finditer(line):
            found.append((n, m.group(1)))
        for m in V1_PATH.finditer(line):
            found.append((n, m.group(1)))
        for m in INLINE_CODE.finditer(line):
            code = m.group(1).strip()
            if re.fullmatch(r"/[A-Za-z0-9._{}/-]*(\?\S*)?", code):
                found.append((n, code))
    return [(n, p.split("?")[0].split("#")[0]) for n, p in found]


def defaults(node, out):
    """Every string default of the document that is a path (the default probe path): a path the
    docs may name that is not an API path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "default" and isinstance(value, str) and value.startswith("/"):
                out.add(value)
            defaults(value, out)
    elif isinstance(node, list):
        for value in node:
            defaults(value, out)


def check(spec, text):
    problems = []
    lines = text.splitlines()
    heads = sections(lines)
    backticked = inline_code(lines)
    templates = list(spec.get("paths", {}))

    # Operations, their parameters and statuses.
    documented = {}
    for k, (_, _, title) in enumerate(heads):
        m = OPERATION.search(title)
        if m:
            documented.setdefault((m.group(1), m.group(2)), k)
    ops = list(operations(spec))
    for method, path, op, shared in ops:
        k = documented.get((method, path))
        if k is None:
            problems.append(f"{method} {path}: no heading names it as `{method} {path}`")
            continue
        body = section_text(lines, heads, k)
        names = []
        for p in shared + op.get("parameters", []):
            p = resolve(spec, p)
            names.append(p["name"])
        for name in names:
            if not re.search(rf"`{re.escape(name)}`|\{{{re.escape(name)}\}}|\b{re.escape(name)}=", body):
                problems.append(f"{method} {path}: parameter `{name}` is not in its section")
        for status in op.get("responses", {}):
            if status == "default":
                continue
            if not re.search(rf"`{status}`|^\s*\|\s*`?{status}\b", body, re.M):
                problems.append(f"{method} {path}: status {status} is not in its section "
                                f"(write `{status}` or a table row | {status} |)")
    for (method, path), _ in documented.items():
        if not any(m == method and p == path for m, p, _, _ in ops):
            problems.append(f"docs names `{method} {path}`, which the OpenAPI document does not have")

    # Error codes, schema properties and headers, anywhere in backticks.
    codes = set()
    error_codes(spec, spec.get("components", {}), codes)
    for method, path, op, _ in ops:
        error_codes(spec, resolve(spec, op.get("responses", {})), codes)
    for code in sorted(codes):
        if code not in backticked:
            problems.append(f"error code `{code}` is not documented")

    props, headers = {}, {}
    for method, path, op, _ in ops:
        schemas = []
        body = resolve(spec, op.get("requestBody", {}))
        schemas += [(f"{method} {path} request", c.get("schema")) for c in body.get("content", {}).values()]
        for status, resp in op.get("responses", {}).items():
            resp = resolve(spec, resp)
            schemas += [(f"{method} {path} {status}", c.get("schema")) for c in resp.get("content", {}).values()]
            for c in resp.get("content", {}).values():
                for ext in (v for k, v in c.items() if k.startswith("x-")):
                    schemas.append((f"{method} {path} {status}", ext.get("data") if isinstance(ext, dict) else None))
            for name in resp.get("headers", {}):
                headers.setdefault(name, f"{method} {path} {status}")
        for where, schema in schemas:
            if schema is not None:
                properties(spec, schema, where, props, frozenset())
    for name, where in sorted(props.items()):
        if name not in backticked:
            problems.append(f"property `{name}` ({where}) is not documented")
    lowered = {b.lower() for b in backticked}
    for name, where in sorted(headers.items()):
        if name.lower() not in lowered and not any(b.lower().startswith(name.lower() + ":") for b in backticked):
            problems.append(f"header `{name}` ({where}) is not documented")

    # Every path the docs mention exists.
    other_paths = set()
    defaults(spec, other_paths)
    for n, p in doc_paths(lines):
        if p and p not in other_paths and not path_matches(p, templates):
            problems.append(f"line {n}: path {p} is not in the OpenAPI document")
    return problems, len(ops), len(props)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, seen = set(), {}
    for _, _, title in sections(lines):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def check_links(files):
    """Relative links of `files` that name no file, or no heading of it."""
    problems = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        in_fence = False
        for n, line in enumerate(lines, start=1):
            if FENCE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                dest = (path.parent / file).resolve() if file else path
                if not dest.exists():
                    problems.append(f"{path.relative_to(ROOT)}:{n}: link to {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{path.relative_to(ROOT)}:{n}: link to {target}: no such heading")
    return problems


def main(argv):
    spec_path = Path(argv[1]) if len(argv) > 1 else ROOT / "src" / "api" / "openapi.json"
    doc_path = Path(argv[2]) if len(argv) > 2 else ROOT / "docs" / "api.md"
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        text = doc_path.read_text(encoding="utf-8")
        problems, n_ops, n_props = check(spec, text)
    except (OSError, ValueError, KeyError) as e:
        print(f"check_docs: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"check_docs: {doc_path.name} vs {spec_path.name}: {p}")
    links = check_links([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    for p in links:
        print(f"check_docs: {p}")
    problems += links
    if problems:
        print(f"check_docs: {len(problems)} problems")
        return 1
    print(f"check_docs: {doc_path.name} documents all {n_ops} operations and {n_props} schema properties "
          f"of {spec_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
