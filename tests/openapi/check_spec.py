#!/usr/bin/env python3
"""Checks src/api/openapi.json, the machine-readable copy of the contract (docs/api.md).

It validates the document as OpenAPI 3.1, then asserts what outside tools rely on: every operation
with every status the contract lists and exactly the query parameters it takes, the shared headers,
the watch stream described as events, and that the schemas accept the contract's own examples and
reject what the contract forbids (including the extensions of issue 10: node health, unknown
fields rejected). Needs only `openapi-spec-validator`
(and the JSON Schema validator it installs). Usage: python3 tests/openapi/check_spec.py [PATH]
"""

import json
import re
import sys
from pathlib import Path

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[2] / "src" / "api" / "openapi.json"

# operationId -> (method, path, statuses the contract promises)
OPERATIONS = {
    "joinMember": ("put", "/v1/groups/{group}/members/{id}", {"200", "201", "400", "413", "415", "503"}),
    "leaveMember": ("delete", "/v1/groups/{group}/members/{id}", {"200", "400", "404", "409", "503"}),
    "getMember": ("get", "/v1/groups/{group}/members/{id}", {"200", "400", "404", "503"}),
    "heartbeatMember": ("post", "/v1/groups/{group}/members/{id}/heartbeat", {"200", "400", "404", "409", "503"}),
    "getGroup": ("get", "/v1/groups/{group}", {"200", "400", "404", "503"}),
    "watchGroup": ("get", "/v1/groups/{group}/watch", {"200", "400", "503"}),
    "listGroups": ("get", "/v1/groups", {"200", "400", "503"}),
    "getCluster": ("get", "/v1/cluster", {"200", "400", "503"}),
    "healthz": ("get", "/healthz", {"200"}),
    "readyz": ("get", "/readyz", {"200", "503"}),
    "metrics": ("get", "/metrics", {"200"}),
    "openapi": ("get", "/openapi.json", {"200"}),
}

MEMBER = {
    "id": "worker-7", "group": "orders", "address": "10.1.2.3:9021", "metadata": {"zone": "a"},
    "instance": "7f3c9a0e", "incarnation": 2, "joined_at": "2026-11-24T10:00:00.123Z",
    "responsible_node": 1, "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"},
}

NODE = {
    "id": 2, "name": "gm-dev-2", "api_address": "127.0.0.1:8082", "peer_address": "127.0.0.1:7002",
    "role": "follower", "responsible_for": 4, "health": {"reachable": True, "last_contact_ms": 12, "lag_entries": 0},
}

# operationId -> the query parameters it takes (issue 10: any other is 400 under /v1/; none elsewhere)
QUERY = {
    "joinMember": set(), "heartbeatMember": set(), "leaveMember": {"incarnation"},
    "getMember": {"consistency"}, "getGroup": {"consistency", "index", "wait"}, "watchGroup": {"consistency"},
    "listGroups": {"consistency"}, "getCluster": {"consistency"},
    "healthz": set(), "readyz": set(), "metrics": set(), "openapi": set(),
}

# (schema, value, whether the contract accepts it)
EXAMPLES = [
    ("JoinRequest", {"address": "10.1.2.3:9021", "metadata": {"zone": "a"}, "instance": "7f3c9a0e",
                     "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}}, True),
    ("JoinRequest", {"address": "10.1.2.3:9021", "failure_detection": {"mode": "lease", "ttl_ms": 5000}}, True),
    ("JoinRequest", {"address": "a:1", "instance": None}, True),
    ("JoinRequest", {"address": "a:1", "unknown": "rejected"}, False),
    ("JoinRequest", {"address": "a:1", "meta": {"zone": "a"}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "probe", "unknown": 1}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "lease", "ttl_ms": 500, "x": 1}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "probe", "path": None}}, True),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "lease", "ttl_ms": None}}, True),
    ("JoinRequest", {"metadata": {}}, False),
    ("JoinRequest", {"address": "a:1", "instance": ""}, False),
    ("JoinRequest", {"address": "a:1", "metadata": {f"k{i}": "v" for i in range(17)}}, False),
    ("JoinRequest", {"address": "a:1", "metadata": {"k" * 64: "v"}}, False),
    ("JoinRequest", {"address": "a:1", "metadata": {"k": "v" * 1025}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "lease", "ttl_ms": 499}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "lease", "ttl_ms": 86400001}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "lease", "path": "/x"}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "probe", "path": "nope"}}, False),
    ("JoinRequest", {"address": "a:1", "failure_detection": {"mode": "push"}}, False),
    ("Member", MEMBER, True),
    ("Member", {**MEMBER, "instance": None, "responsible_node": None,
                "failure_detection": {"mode": "lease", "ttl_ms": 10000}}, True),
    ("Member", {k: v for k, v in MEMBER.items() if k != "instance"}, False),
    ("Member", {**MEMBER, "incarnation": 0}, False),
    ("Member", {**MEMBER, "joined_at": "2026-11-24T10:00:00Z"}, False),
    ("Error", {"error": {"code": "not_found", "message": "no such group"}}, True),
    ("ClusterNode", NODE, True),
    ("ClusterNode", {**NODE, "health": None}, True),
    ("ClusterNode", {**NODE, "health": {"reachable": False, "last_contact_ms": None, "lag_entries": None}}, True),
    ("ClusterNode", {k: v for k, v in NODE.items() if k != "health"}, False),
    ("ClusterNode", {k: v for k, v in NODE.items() if k != "peer_address"}, False),
    ("ClusterNode", {**NODE, "health": {"reachable": True, "last_contact_ms": 12}}, False),
    ("ClusterNode", {**NODE, "health": {"reachable": True, "last_contact_ms": -1, "lag_entries": 0}}, False),
    ("ClusterNode", {**NODE, "health": {"reachable": True, "last_contact_ms": 0, "lag_entries": -1}}, False),
    ("ClusterNode", {**NODE, "health": {"reachable": "yes", "last_contact_ms": 0, "lag_entries": 0}}, False),
    ("Cluster", {"cluster_id": "c1", "leader_id": 1, "term": 3, "revision": 9, "nodes": [NODE]}, True),
    ("Cluster", {"cluster_id": None, "leader_id": None, "term": 0, "revision": 0,
                 "nodes": [{**NODE, "role": "learner", "health": None}]}, True),
    ("Error", {"error": {"code": "teapot", "message": "?"}}, False),
]
EXAMPLES += [("Address", a, True) for a in (
    "10.1.2.3:9021", "127.0.0.1:1", "[::1]:65535", "[2001:db8::7]:80", "[::ffff:1.2.3.4]:80",
    "pod-0.gm.default.svc.cluster.local:8080", "localhost:80", "host.:80")]
EXAMPLES += [("Address", a, False) for a in (
    "10.1.2.3", "10.1.2.3:0", "10.1.2.3:65536", "999.1.2.3:80", "1.2.3:80", "::1:80", "[::1]",
    "[zz::1]:80", ":80", "-host:80", "host-:80", "a..b:80", "http://a:80")]
EXAMPLES += [("GroupName", g, ok) for g, ok in (("orders", True), ("a" * 63, True), ("Orders", False),
                                                   ("-a", False), ("a" * 64, False))]
EXAMPLES += [("MemberId", m, ok) for m, ok in (("pod:1.2_x", True), ("a" * 128, True), (":a", False),
                                                  ("a/b", False), ("a" * 129, False))]


def fail(message):
    sys.exit(f"check_spec: {message}")


def check_watch(op, resolve, registry):
    """The watch stream is described as events, the way OpenAPI 3.1 tools that validate
    `text/event-stream` read it: `schema` is ONE parsed event (`event`, `id`, `data`), and `data` is
    a `GroupView` as JSON (`contentMediaType` + `contentSchema`)."""
    content = resolve(op["responses"]["200"]).get("content", {})
    if set(content) != {"text/event-stream"}:
        fail(f"watchGroup 200 must be text/event-stream only, not {sorted(content)}")
    media = content["text/event-stream"]
    headers = resolve(op["responses"]["200"]).get("headers", {})
    for name, value in (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")):
        header = resolve(headers.get(name, {}))
        if not header.get("required") or header.get("schema", {}).get("const") != value:
            fail(f"watchGroup 200 must declare the required header {name}: {value}")
    if media.get("schema") != {"$ref": "#/components/schemas/ViewEvent"}:
        fail("watchGroup 200 schema must be the ViewEvent schema (one event)")
    event = resolve(media["schema"])
    if event.get("required") != ["event", "id", "data"] or event["properties"]["event"] != {"const": "view"}:
        fail("ViewEvent must require event (const view), id and data")
    data = event["properties"]["data"]
    if data.get("type") != "string" or data.get("contentMediaType") != "application/json" \
            or data.get("contentSchema") != {"$ref": "#/components/schemas/GroupView"}:
        fail("ViewEvent.data must be a string of application/json with contentSchema GroupView")

    # An event as an SSE parser yields it: the schema judges the fields, GroupView judges the data.
    view = {"group": "orders", "revision": 42, "members": [MEMBER]}
    events = [({"event": "view", "id": "42", "data": json.dumps(view)}, True),
              ({"event": "view", "id": "0", "data": json.dumps({**view, "revision": 0, "members": []})}, True),
              ({"event": "message", "id": "42", "data": json.dumps(view)}, False),
              ({"event": "view", "data": json.dumps(view)}, False),
              ({"event": "view", "id": "x", "data": json.dumps(view)}, False),
              ({"event": "view", "id": "42", "data": json.dumps({"group": "orders", "members": []})}, False),
              ({"event": "view", "id": "42", "data": "not json"}, False),
              (media["example"], True)]
    events += [(e, True) for e in event.get("examples", [])]
    validate_event = OAS31Validator({"$ref": "urn:gm#/components/schemas/ViewEvent"}, registry=registry).is_valid
    validate_view = OAS31Validator({"$ref": "urn:gm#/components/schemas/GroupView"}, registry=registry).is_valid
    for value, ok in events:
        try:
            parsed = json.loads(value.get("data", "null"))
        except ValueError:
            parsed = None
        valid = validate_event(value) and validate_view(parsed) and value.get("id") == str(parsed["revision"])
        if valid != ok:
            fail(f"ViewEvent {'rejects' if ok else 'accepts'} {json.dumps(value)[:120]}")


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else SPEC
    spec = json.loads(path.read_text())
    validate(spec)
    if spec.get("openapi") != "3.1.0":
        fail("openapi must be 3.1.0")
    components = spec["components"]

    def resolve(obj):
        while "$ref" in obj:
            kind, name = obj["$ref"].split("/")[-2:]
            obj = components[kind][name]
        return obj

    found = {}
    for route, item in spec["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                found[op["operationId"]] = (method, route, op, item.get("parameters", []))

    for op_id, (method, route, statuses) in OPERATIONS.items():
        if op_id not in found:
            fail(f"operation {op_id} is missing")
        got_method, got_route, op, path_params = found[op_id]
        if (got_method, got_route) != (method, route):
            fail(f"{op_id} is {got_method.upper()} {got_route}, expected {method.upper()} {route}")
        missing = statuses - set(op["responses"])
        if missing:
            fail(f"{op_id} lacks responses {sorted(missing)}")
        params = [resolve(p) for p in op.get("parameters", []) + path_params]
        query = {p["name"] for p in params if p["in"] == "query"}
        if query != QUERY[op_id]:
            fail(f"{op_id} takes query parameters {sorted(query)}, the contract says {sorted(QUERY[op_id])}")
        if any(p["in"] not in ("path", "query") for p in params):
            fail(f"{op_id} has a header or cookie parameter")
        if route.startswith("/v1/") and "query parameter" not in op.get("description", "").lower():
            fail(f"{op_id} does not say which query parameters it takes")
        if {"401", "403"} - set(op["responses"]) and route.startswith("/v1/"):
            fail(f"{op_id} lacks the reserved 401/403")
        for status, response in op["responses"].items():
            headers = resolve(response).get("headers", {})
            if route.startswith("/v1/") and status.startswith("2") and "X-GM-Revision" not in headers:
                fail(f"{op_id} {status} lacks X-GM-Revision")
            if status == "503" and "Retry-After" not in headers:
                fail(f"{op_id} 503 lacks Retry-After")

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                re.compile(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)

    registry = Registry().with_resource("urn:gm", Resource.from_contents(spec, default_specification=DRAFT202012))
    for name, value, ok in EXAMPLES:
        validator = OAS31Validator({"$ref": f"urn:gm#/components/schemas/{name}"}, registry=registry)
        if validator.is_valid(value) != ok:
            fail(f"schema {name} {'rejects' if ok else 'accepts'} {json.dumps(value)[:120]}")

    check_watch(found["watchGroup"][2], resolve, registry)
    for name in ("Unauthenticated", "PermissionDenied"):
        if "not implement" not in components["responses"][name]["description"]:
            fail(f"response {name} must say authentication is reserved, not implemented")
    for name in ("JoinRequest", "ProbeFailureDetectionRequest", "LeaseFailureDetectionRequest"):
        if components["schemas"][name].get("additionalProperties") is not False:
            fail(f"{name} must reject unknown fields (additionalProperties: false)")
    ready = found["readyz"][2]["responses"]
    if resolve(ready["200"])["content"]["application/json"]["schema"]["properties"]["status"] != {"const": "ready"}:
        fail("readyz 200 must be {\"status\": \"ready\"}")

    wait = re.compile(components["parameters"]["wait"]["schema"]["pattern"])
    for value, ok in (("250ms", True), ("30s", True), ("5m", True), ("300000ms", True), ("0s", True),
                      ("300001ms", False), ("6m", False), ("1h", False), ("1m30s", False), ("5", False)):
        if bool(wait.fullmatch(value)) != ok:
            fail(f"wait pattern {'rejects' if ok else 'accepts'} {value}")

    print(f"check_spec: {path} OK ({len(found)} operations, {len(EXAMPLES)} schema examples)")


if __name__ == "__main__":
    main()
