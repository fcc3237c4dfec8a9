#!/usr/bin/env python3
"""The HTTP and JSON side of tests/prometheus/run.sh, which starts and stops the processes.

Subcommands:
  ports N                      N free TCP ports of 127.0.0.1, one a line
  check-dashboard FILE         the dashboard's shape: schemaVersion, the datasource variable,
                               the rows, every panel on ${datasource} with at least one
                               targets[].expr, unique panel ids
  rules-for-test IN OUT FOR    IN's rules with every `for:` set to FOR (OUT for the test's
                               Prometheus, so an alert fires within seconds)
  leader URL...                the leader's node id, as the first node that answers says
  wait-leader URL...           waits until a node names a leader and a write through it
                               succeeds; prints the leader's id
  load URL...                  a small load until SIGTERM: lease members joining, heartbeating
                               and leaving over every node, reads, and requests that fail
  panels PROMETHEUS FILE       every panel query of FILE through Prometheus's /api/v1/query;
                               prints one line per query, exits 1 if one returns nothing
  wait-alert PROMETHEUS NAME T waits up to T seconds until alert NAME is firing (/api/v1/alerts)
  not-firing PROMETHEUS NAME   fails if alert NAME is firing now

Only the standard library.
"""

import json
import random
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# What the dashboard's template variables stand for in the test: the scrape job, every instance,
# and a rate window that spans the whole load (Grafana computes $__rate_interval from the
# panel's resolution; one minute covers the kills and evictions the test makes).
VARIABLES = {"$job": "gm", "$instance": ".+", "$__rate_interval": "1m"}
ROWS = ["Cluster and leader", "Heartbeats and failure detection", "Groups", "Raft and disk", "API"]


def request(method, url, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return json.loads(text) if text else None


def ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
        s.close()


def panels_of(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard):
    """(panel title, refId, expr as Prometheus gets it) of every target."""
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            yield panel["title"], target["refId"], expr


def check_dashboard(path):
    with open(path) as f:
        d = json.load(f)
    problems = []
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        problems.append(f"schemaVersion {d.get('schemaVersion')}")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
        problems.append("no datasource variable of type prometheus")
    for name in ("job", "instance"):
        if name not in variables:
            problems.append(f"no {name} variable")
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    if rows != ROWS:
        problems.append(f"rows {rows}, want {ROWS}")
    ids = [p["id"] for p in panels_of(d)]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    for p in panels_of(d):
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p['title']!r} is not on ${{datasource}}")
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            problems.append(f"panel {p['title']!r} has a target without expr")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"panel {p['title']!r} target {t['refId']} is not on ${{datasource}}")
    for title, ref, expr in queries(d):
        if "$" in expr:
            problems.append(f"panel {title!r} {ref}: a variable the test does not know: {expr}")
    for problem in problems:
        print(f"{path}: {problem}")
    count = sum(1 for _ in queries(d))
    print(f"{path}: {len(ids)} panels, {count} queries, {len(problems)} problems")
    return 1 if problems else 0


def rules_for_test(src, dst, duration):
    import re

    with open(src) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^(\s*for:) \S+$", rf"\1 {duration}", text)
    with open(dst, "w") as f:
        f.write(text)
    print(f"{dst}: {n} alerts with for: {duration}")


def leader(urls):
    for url in urls:
        try:
            cluster = request("GET", f"{url}/v1/cluster", timeout=2)
        except (OSError, urllib.error.URLError, ValueError):
            continue
        if cluster.get("leader_id"):
            return cluster["leader_id"]
    return None


def wait_leader(urls, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lead = leader(urls)
        if lead is not None:
            try:
                request("PUT", f"{urls[0]}/v1/groups/prom-test/members/probe-write",
                        {"address": "127.0.0.1:1", "failure_detection": {"mode": "lease", "ttl_ms": 60000}})
                print(lead)
                return 0
            except (OSError, urllib.error.URLError):
                pass
        time.sleep(0.2)
    print(f"no leader and no write within {timeout}s", file=sys.stderr)
    return 1


def load(urls):
    """Joins, heartbeats, leaves and reads, spread over the nodes, about 20 requests a second,
    until SIGTERM. Requests to a node that is down fail and are skipped."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rng = random.Random(13)
    live = []
    i = 0
    while not stop:
        url = urls[i % len(urls)]
        group = f"load-{i % 4}"
        member = f"m-{i}"
        calls = [("PUT", f"/v1/groups/{group}/members/{member}",
                  {"address": f"10.0.0.{i % 250}:9000", "failure_detection": {"mode": "lease", "ttl_ms": 30000}})]
        if live:
            g, m = rng.choice(live)
            calls.append(("POST", f"/v1/groups/{g}/members/{m}/heartbeat", None))
        if len(live) > 12:
            g, m = live.pop(0)
            calls.append(("DELETE", f"/v1/groups/{g}/members/{m}", None))
        calls.append(("GET", f"/v1/groups/{group}", None))
        calls.append(("GET", f"/v1/groups/{group}?consistency=stale", None))
        if i % 10 == 0:
            # Answered with errors: a heartbeat and a leave of nobody, a join without an address.
            calls.append(("POST", "/v1/groups/load-0/members/nobody/heartbeat", None))
            calls.append(("DELETE", "/v1/groups/load-0/members/nobody", None))
            calls.append(("PUT", "/v1/groups/load-0/members/bad", {"failure_detection": {"mode": "lease"}}))
        for method, path, body in calls:
            try:
                request(method, url + path, body, timeout=3)
                if method == "PUT" and path.endswith(member):
                    live.append((group, member))
            except (OSError, urllib.error.URLError, ValueError):
                pass
        i += 1
        time.sleep(0.05)
    return 0


def panels(prometheus, path):
    with open(path) as f:
        d = json.load(f)
    empty = []
    total = 0
    for title, ref, expr in queries(d):
        total += 1
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = request("GET", url, timeout=10)
        except urllib.error.HTTPError as e:
            answer = {"status": "error", "error": e.read().decode()}
        if answer.get("status") != "success":
            verdict = f"ERROR {answer.get('error')}"
        else:
            values = [r["value"][1] for r in answer["data"]["result"]]
            real = [v for v in values if v not in ("NaN", "+Inf", "-Inf")]
            verdict = f"ok ({len(real)} series)" if real else ("only NaN" if values else "EMPTY")
        if not verdict.startswith("ok"):
            empty.append((title, ref, expr, verdict))
        print(f"  {verdict:<14} {title} [{ref}]: {expr}")
    print(f"panel queries: {total - len(empty)} of {total} return data")
    for title, ref, expr, verdict in empty:
        print(f"  NO DATA ({verdict}): {title} [{ref}]: {expr}")
    return 1 if empty else 0


def wait_alert(prometheus, name, timeout=90):
    deadline = time.monotonic() + float(timeout)
    states = {}
    while time.monotonic() < deadline:
        try:
            states = alert_states(prometheus)
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if states.get(name) == "firing":
            print(f"{name} firing; all alerts: {json.dumps(states, sort_keys=True)}")
            return 0
        time.sleep(0.5)
    print(f"{name} not firing within {timeout}s; alerts: {json.dumps(states, sort_keys=True)}", file=sys.stderr)
    return 1


def alert_states(prometheus):
    alerts = request("GET", f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


def not_firing(prometheus, name):
    states = alert_states(prometheus)
    print(f"alerts now: {json.dumps(states, sort_keys=True)}")
    return 1 if states.get(name) == "firing" else 0


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "ports":
        return ports(args[0])
    if command == "check-dashboard":
        return check_dashboard(args[0])
    if command == "rules-for-test":
        return rules_for_test(*args)
    if command == "leader":
        lead = leader(args)
        if lead is None:
            return 1
        print(lead)
        return 0
    if command == "wait-leader":
        return wait_leader(args)
    if command == "load":
        return load(args)
    if command == "panels":
        return panels(*args)
    if command == "wait-alert":
        return wait_alert(*args)
    if command == "not-firing":
        return not_firing(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)
