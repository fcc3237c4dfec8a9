#!/usr/bin/env python3
"""Asserts what the rendered chart must be, beyond what the Kubernetes schemas check: the interface
agreed with `gm server --discovery kubernetes` (environment, ports, probes, RBAC), the StatefulSet
settings Raft depends on, the restricted security context, and labels and selectors that never
take a foreign pod for a GM node.

Usage: invariants.py CHART REPLICAS=RENDERED.yaml... [--service-monitor RENDERED.yaml]
[--monitoring RENDERED.yaml] (renders of release `gm-cluster`; --monitoring: one with the Grafana
dashboard and the PrometheusRule on). Prints every failed assertion; exits 1 if there is one.
"""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "gm-cluster"
NAME = "gm-cluster"  # the StatefulSet and everything else, for release gm-cluster
HEADLESS = "gm-cluster-headless"
POD_SELECTOR = "app.kubernetes.io/name=gm,app.kubernetes.io/instance=gm-cluster"
SELECTOR = {"app.kubernetes.io/name": "gm", "app.kubernetes.io/instance": RELEASE}
STANDARD_LABELS = ["app.kubernetes.io/" + k for k in ("name", "instance", "version", "component", "part-of", "managed-by")]

# The Role, exactly: (API group, resource, verb) -> the names it is limited to, or None for any.
ROLE = {
    **{("", "pods", v): None for v in ("get", "list", "watch")},
    **{("apps", "statefulsets", v): None for v in ("get", "list", "watch")},
    ("", "configmaps", "create"): None,
    ("", "configmaps", "get"): [f"{NAME}-bootstrap", f"{NAME}-ids"],
    ("", "configmaps", "update"): [f"{NAME}-ids"],
    ("coordination.k8s.io", "leases", "create"): None,
    ("coordination.k8s.io", "leases", "get"): [f"{NAME}-leader"],
    ("coordination.k8s.io", "leases", "update"): [f"{NAME}-leader"],
    ("", "events", "create"): None,
    ("events.k8s.io", "events", "create"): None,
}

# The environment of `gm server`: a plain value, or ("field", downward API path).
ENV = {
    "GM_DISCOVERY": "kubernetes",
    "GM_POD_NAME": ("field", "metadata.name"),
    "GM_NAMESPACE": ("field", "metadata.namespace"),
    "GM_POD_IP": ("field", "status.podIP"),
    "GM_STATEFULSET": NAME,
    "GM_SERVICE": HEADLESS,
    "GM_POD_SELECTOR": POD_SELECTOR,
    "GM_API_ADDR": "0.0.0.0:8080",
    "GM_PEER_ADDR": "0.0.0.0:7000",
    "GM_DATA_DIR": "/var/lib/gm",
    "GM_LOG_FORMAT": "text",
}

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
    return condition


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def parse_selector(text):
    return dict(term.split("=", 1) for term in text.split(","))


def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def one(objects, kind, where, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    check(len(found) == 1, f"{where}: {len(found)} {kind} {name or ''}, want 1")
    return found[0] if found else None


def check_render(path, replicas, app_version):
    where = f"{path} ({replicas} replicas)"
    objects = load(path)
    for o in objects:
        ref = f"{where}: {o['kind']}/{o['metadata']['name']}"
        check("namespace" not in o["metadata"], f"{ref} names a namespace: the manifests must apply anywhere")
        labels = o["metadata"].get("labels", {})
        check(all(k in labels for k in STANDARD_LABELS + ["helm.sh/chart"]), f"{ref} lacks standard labels: {labels}")
        check(labels.get("app.kubernetes.io/version") == app_version, f"{ref}: version label is not {app_version}")

    sts = one(objects, "StatefulSet", where, NAME)
    headless = one(objects, "Service", where, HEADLESS)
    client = one(objects, "Service", where, NAME)
    role = one(objects, "Role", where, NAME)
    binding = one(objects, "RoleBinding", where, NAME)
    account = one(objects, "ServiceAccount", where, NAME)
    test_pod = one(objects, "Pod", where)
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    check(not any(o["kind"] == "ServiceMonitor" for o in objects), f"{where}: a ServiceMonitor by default")
    check(not any(o["kind"] in ("PrometheusRule", "ConfigMap") for o in objects),
          f"{where}: a PrometheusRule or a dashboard ConfigMap by default")
    if not all((sts, headless, client, role, binding, account, test_pod)):
        return

    # The StatefulSet: what Raft on Kubernetes relies on.
    spec = sts["spec"]
    check(spec["replicas"] == replicas, f"{where}: replicas {spec['replicas']}")
    check(spec["podManagementPolicy"] == "Parallel", f"{where}: podManagementPolicy is not Parallel")
    check(spec["serviceName"] == HEADLESS, f"{where}: serviceName {spec['serviceName']}")
    check(spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
          f"{where}: updateStrategy {spec['updateStrategy']}")
    check(spec["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Delete", "whenDeleted": "Retain"},
          f"{where}: PVC retention {spec['persistentVolumeClaimRetentionPolicy']}")
    check(spec["selector"] == {"matchLabels": SELECTOR}, f"{where}: StatefulSet selector {spec['selector']}")
    check(parse_selector(POD_SELECTOR) == SELECTOR, f"{where}: GM_POD_SELECTOR is not the StatefulSet's selector")
    pod_labels = spec["template"]["metadata"]["labels"]
    check(selects(SELECTOR, pod_labels), f"{where}: the pod template lacks the selector labels")
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    check(list(claims) == ["data"], f"{where}: volumeClaimTemplates {list(claims)}")

    # Names: pod host names, the revision-hash label and pod DNS names within Kubernetes' limits,
    # even in a namespace with the longest name (63).
    last_pod = f"{NAME}-{replicas - 1}"
    check(len(f"{NAME}-0123456789") <= 63, f"{where}: controller-revision-hash label too long")
    check(len(f"{last_pod}.{HEADLESS}.{'n' * 63}.svc.cluster.local") <= 253, f"{where}: pod DNS name too long")

    pod = spec["template"]["spec"]
    check(pod.get("enableServiceLinks") is False, f"{where}: enableServiceLinks must be false (GM_* variables)")
    check(pod.get("automountServiceAccountToken") is True, f"{where}: gm needs its service account token")
    check(pod["serviceAccountName"] == account["metadata"]["name"], f"{where}: serviceAccountName")
    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and psc.get("fsGroup") == 65532,
          f"{where}: pod securityContext {psc}")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}: pod seccompProfile")
    check(len(pod["containers"]) == 1, f"{where}: one container")
    c = pod["containers"][0]
    csc = c["securityContext"]
    check(csc.get("runAsNonRoot") is True and csc.get("runAsUser") == 65532, f"{where}: container user {csc}")
    check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
    check(csc.get("capabilities") == {"drop": ["ALL"]}, f"{where}: capabilities {csc.get('capabilities')}")
    check(csc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}: container seccompProfile")
    check(c["image"] == f"gm:{app_version}" and c["imagePullPolicy"] == "IfNotPresent", f"{where}: image {c['image']}")
    check(c.get("args") == ["server"], f"{where}: args {c.get('args')}")
    check(c["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/gm"}], f"{where}: volumeMounts")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"http": 8080, "peer": 7000}, f"{where}: container ports {ports}")
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        check(c.get(probe, {}).get("httpGet") == {"path": path, "port": "http"}, f"{where}: {probe} is not GET {path}")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    check(sleep is not None and sleep < pod["terminationGracePeriodSeconds"],
          f"{where}: preStop sleep {sleep} must leave time for a clean stop")
    check("cpu" not in c.get("resources", {}).get("limits", {}), f"{where}: a CPU limit by default")
    check(c.get("resources", {}).get("requests"), f"{where}: no resource requests")

    env = {}
    for e in c["env"]:
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = ("field", field) if field else e.get("value")
    check(env == ENV, f"{where}: gm's environment differs from the interface: "
          f"{ {k: env.get(k) for k in set(env) | set(ENV) if env.get(k) != ENV.get(k)} }")

    anti = pod.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    check(len(anti) == 1 and anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
          and anti[0]["podAffinityTerm"]["labelSelector"] == {"matchLabels": SELECTOR},
          f"{where}: soft pod anti-affinity by host")
    spread = pod.get("topologySpreadConstraints", [])
    check(spread and all(t["labelSelector"] == {"matchLabels": SELECTOR} for t in spread),
          f"{where}: topologySpreadConstraints with the pod selector")

    # Services.
    hs = headless["spec"]
    check(hs.get("clusterIP") == "None" and hs.get("publishNotReadyAddresses") is True,
          f"{where}: headless Service must be clusterIP None with publishNotReadyAddresses")
    check({p["name"]: (p["port"], p["targetPort"]) for p in hs["ports"]} == {"http": (8080, "http"), "peer": (7000, "peer")},
          f"{where}: headless Service ports")
    cs = client["spec"]
    check(cs.get("clusterIP") != "None" and not cs.get("publishNotReadyAddresses"), f"{where}: client Service")
    check([(p["name"], p["port"], p["targetPort"]) for p in cs["ports"]] == [("http", 8080, "http")],
          f"{where}: the client Service serves exactly http 8080 (never the peer port)")
    for svc in (headless, client):
        check(svc["spec"]["selector"] == SELECTOR, f"{where}: {svc['metadata']['name']} selector")

    # RBAC: exactly what gm reads and writes.
    granted = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    key = (group, resource, verb)
                    check(key not in granted, f"{where}: Role grants {key} twice")
                    granted[key] = rule.get("resourceNames")
    check(granted == ROLE, f"{where}: Role differs: extra {sorted(set(granted) - set(ROLE))}, "
          f"missing {sorted(set(ROLE) - set(granted))}, names {[k for k in ROLE if k in granted and granted[k] != ROLE[k]]}")
    check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
          f"{where}: roleRef")
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}],
          f"{where}: RoleBinding subjects {binding['subjects']}")

    # PodDisruptionBudget: one voter at a time, none for a single node.
    if replicas == 1:
        check(not pdbs, f"{where}: a PodDisruptionBudget for a single replica")
    elif check(len(pdbs) == 1, f"{where}: {len(pdbs)} PodDisruptionBudgets"):
        check(pdbs[0]["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}},
              f"{where}: PodDisruptionBudget spec {pdbs[0]['spec']}")

    # The helm test pod: a hook, and never taken for a GM node.
    check(test_pod["metadata"].get("annotations", {}).get("helm.sh/hook") == "test", f"{where}: test pod hook")
    check(not selects(SELECTOR, test_pod["metadata"]["labels"]),
          f"{where}: the test pod matches gm's pod selector: gm, the Services and the PDB would take it for a node")
    command = " ".join(test_pod["spec"]["containers"][0]["command"])
    check("curl" in command and f"http://{NAME}:8080" in str(test_pod), f"{where}: the test pod curls the client Service")


def check_service_monitor(path):
    where = f"{path} (ServiceMonitor on)"
    objects = load(path)
    sm = one(objects, "ServiceMonitor", where)
    headless = one(objects, "Service", where, HEADLESS)
    client = one(objects, "Service", where, NAME)
    if not (sm and headless and client):
        return
    check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: apiVersion {sm['apiVersion']}")
    selector = sm["spec"]["selector"]["matchLabels"]
    check(selects(selector, headless["metadata"]["labels"]), f"{where}: does not select the headless Service")
    check(not selects(selector, client["metadata"]["labels"]), f"{where}: also selects the client Service")
    check([(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] == [("http", "/metrics")], f"{where}: endpoints")


def check_monitoring(path):
    """The dashboard and the rules, as the chart ships them, are deploy/'s."""
    where = f"{path} (dashboard and PrometheusRule on)"
    objects = load(path)
    dashboard = one(objects, "ConfigMap", where, f"{NAME}-dashboard")
    rule = one(objects, "PrometheusRule", where, NAME)
    if dashboard:
        check(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", f"{where}: no grafana_dashboard label")
        with open(ROOT / "deploy/grafana/gm.json") as f:
            check(json.loads(dashboard["data"]["gm.json"]) == json.load(f),
                  f"{where}: the ConfigMap's gm.json is not deploy/grafana/gm.json")
    if rule:
        check(rule["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: apiVersion {rule['apiVersion']}")
        with open(ROOT / "deploy/prometheus/gm-rules.yaml") as f:
            check(rule["spec"] == yaml.safe_load(f), f"{where}: the PrometheusRule is not deploy/prometheus/gm-rules.yaml")


def main(argv):
    chart, args = argv[0], argv[1:]
    with open(f"{chart}/Chart.yaml") as f:
        app_version = str(yaml.safe_load(f)["appVersion"])
    checked = 0
    while args:
        arg = args.pop(0)
        if arg == "--service-monitor":
            check_service_monitor(args.pop(0))
        elif arg == "--monitoring":
            check_monitoring(args.pop(0))
        else:
            replicas, path = arg.split("=", 1)
            check_render(path, int(replicas), app_version)
        checked += 1
    for failure in failures:
        print(failure)
    print(f"invariants: {checked} renders, {len(failures)} failed assertions")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
