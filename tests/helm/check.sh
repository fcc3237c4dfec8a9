#!/usr/bin/env bash
# Checks the Helm chart helm/gm-cluster and deploy/, in a few seconds and without a cluster:
# helm lint --strict with each values file; the chart rendered for 1, 3 and 5 replicas and with
# every option set, each validated against the Kubernetes OpenAPI schemas (kubernetes-validate
# --strict) and yamllint, as are deploy/'s manifests and examples; tests/helm/invariants.py on the
# renders; values.schema.json rejecting misspelt keys and bad values; the chart's copies of the
# Grafana dashboard and the alert rules equal deploy/'s; deploy/gm-cluster.yaml equal to the chart
# rendered now.
# Installs nothing: tests/helm/install-tools.sh does (tests/setup.sh runs it).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The newest Kubernetes whose schemas the pinned kubernetes-validate (install-tools.sh) ships.
KUBERNETES_VERSION=1.37.0
chart=helm/gm-cluster
HELM=${HELM:-target/tools/bin/helm}
[[ -x $HELM ]] || HELM=helm
export HELM
# The Python tools run as modules of the python3 that install-tools.sh installed them into.
if ! command -v "$HELM" >/dev/null || ! python3 -c 'import kubernetes_validate, yamllint' 2>/dev/null; then
  echo "tests/helm/check.sh: helm, kubernetes-validate or yamllint missing: run tests/helm/install-tools.sh" >&2
  exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0 failed=0
# step NAME COMMAND...: runs COMMAND, prints ok or FAIL with its output.
step() {
  local name=$1
  shift
  if "$@" >"$out/step.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok    $name"
  else
    failed=$((failed + 1))
    echo "FAIL  $name"
    sed 's/^/      /' "$out/step.log"
  fi
}

render() { # render FILE HELM-TEMPLATE-ARGS...
  local file=$1
  shift
  "$HELM" template gm-cluster "$chart" --kube-version "$KUBERNETES_VERSION" "$@" >"$file"
}

# Every option away from its default, so every branch of the templates is validated.
all_options=(
  --values "$chart/values-5.yaml"
  --set metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prometheus
  --set metrics.grafanaDashboard.enabled=true,metrics.grafanaDashboard.annotations.grafana_folder=gm
  --set metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=prometheus
  --set podAntiAffinity=hard,preStopSleepSeconds=0,updatePartition=2,logFormat=json,log=debug
  --set 'extraEnv[0].name=GM_PROBE_INTERVAL,extraEnv[0].value=500ms'
  --set persistence.storageClassName=fast,persistence.size=5Gi,persistence.retention.whenScaled=Retain
  --set podLabels.team=a,podAnnotations.note=b,nodeSelector.disk=ssd,priorityClassName=high
  --set 'tolerations[0].key=dedicated,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule'
  --set 'imagePullSecrets[0].name=registry,serviceAccount.annotations.role=gm,service.annotations.lb=internal'
  --set service.type=LoadBalancer,service.port=80,resources.limits.cpu=2,image.tag=dev
)

# (Inside `if`, as step runs them, bash ignores set -e: these functions chain with &&.)
lint() {
  "$HELM" lint --strict "$chart" \
    && "$HELM" lint --strict "$chart" --values "$chart/values-3.yaml" \
    && "$HELM" lint --strict "$chart" --values "$chart/values-5.yaml" \
    && "$HELM" lint --strict "$chart" "${all_options[@]}"
}
step "helm lint --strict (default, values-3.yaml, values-5.yaml, every option)" lint

renders() {
  render "$out/replicas-1.yaml" --set replicas=1 \
    && render "$out/replicas-3.yaml" --values "$chart/values-3.yaml" \
    && render "$out/replicas-5.yaml" --values "$chart/values-5.yaml" \
    && render "$out/all-options.yaml" "${all_options[@]}"
}
step "helm template: 1, 3 and 5 replicas, every option" renders

# kubernetes-validate only warns about kinds it has no schema for: any warning but the
# ServiceMonitor's and the PrometheusRule's (CRDs) fails, so a misspelt apiVersion cannot pass
# unchecked.
validate() {
  local status=0
  python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "$@" >"$out/validate.log" 2>&1 || status=$?
  if grep -Ev "Couldn't find schema for kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 " \
    "$out/validate.log"; then
    status=1
  fi
  return "$status"
}
step "kubernetes-validate --strict, Kubernetes $KUBERNETES_VERSION (renders, deploy/, deploy/examples/)" \
  validate "$out"/replicas-{1,3,5}.yaml "$out/all-options.yaml" deploy/gm-cluster.yaml deploy/examples/*.yaml

step "yamllint: renders, deploy/ (manifests, examples, alert rules and their tests), values files, Chart.yaml" \
  python3 -m yamllint --strict -c tests/helm/yamllint.yaml "$out"/*.yaml deploy/gm-cluster.yaml deploy/examples/*.yaml \
  deploy/prometheus/*.yaml \
  "$chart"/values*.yaml "$chart/Chart.yaml"

step "invariants: StatefulSet, environment, probes, security, Services, Role, PDB, test pod, monitoring" \
  python3 tests/helm/invariants.py "$chart" 1="$out/replicas-1.yaml" 3="$out/replicas-3.yaml" \
  5="$out/replicas-5.yaml" --service-monitor "$out/all-options.yaml" --monitoring "$out/all-options.yaml"

# rejects PATTERN HELM-ARGS...: rendering must fail, with PATTERN in the message.
rejects() {
  local pattern=$1
  shift
  if "$HELM" template "${release:-gm-cluster}" "$chart" "$@" >/dev/null 2>"$out/rejected.log"; then
    echo "accepted: $*"
    return 1
  fi
  grep -q -- "$pattern" "$out/rejected.log" || { echo "rejected $*, but without \"$pattern\":"; cat "$out/rejected.log"; return 1; }
}
schema() {
  local status=0
  rejects "Additional property replica is not allowed" --set replica=3 || status=1
  rejects "Additional property tg is not allowed" --set image.tg=1.0 || status=1
  rejects "Additional property periodSecond is not allowed" --set probes.startup.periodSecond=1 || status=1
  rejects "Additional property enable is not allowed" --set metrics.serviceMonitor.enable=true || status=1
  rejects "Additional property enable is not allowed" --set metrics.prometheusRule.enable=true || status=1
  rejects "Additional property label is not allowed" --set metrics.grafanaDashboard.label.a=b || status=1
  rejects "replicas must be one of the following: 1, 3, 5, 7, 9" --set replicas=4 || status=1
  rejects "replicas must be one of the following" --set replicas=0 || status=1
  rejects "replicas must be one of" --set replicas=three || status=1
  rejects "logFormat must be one of the following" --set logFormat=xml || status=1
  rejects "persistence.size: Does not match pattern" --set persistence.size=lots || status=1
  rejects "service.port: Must be less than or equal to 65535" --set service.port=80800 || status=1
  rejects "image.tag: Invalid type" --set image.tag=1 || status=1
  release=a-release-name-that-is-far-too-long-for-pod-dns-names rejects "at most 52 fit" || status=1
  rejects "fullnameOverride: String length must be less than or equal to 52" \
    --set fullnameOverride=a-release-name-that-is-far-too-long-for-the-pod-dns-names-gm || status=1
  return "$status"
}
step "values.schema.json rejects misspelt keys and bad values" schema

# NOTES.txt is only rendered by `helm install`, which needs a cluster: render it from a copy of
# the chart, as a template of its own.
notes() {
  local copy=$out/notes-chart
  cp -r "$chart" "$copy" \
    && { echo '{{- define "gm.notes" -}}' && cat "$chart/templates/NOTES.txt" && echo '{{- end }}'; } >"$copy/templates/_notes.tpl" \
    && rm "$copy/templates/NOTES.txt" \
    && echo 'notes: {{ include "gm.notes" . | quote }}' >"$copy/templates/notes.yaml" \
    && "$HELM" template gm-cluster "$copy" --namespace prod --show-only templates/notes.yaml \
    | python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["notes"])' >"$out/notes.txt" \
    && cat "$out/notes.txt" \
    && grep -qF 'kubectl --namespace prod port-forward svc/gm-cluster 8080' "$out/notes.txt" \
    && grep -qF "curl -fsS -w '\n' -X PUT localhost:8080/v1/groups/orders/members/worker-7" "$out/notes.txt" \
    && grep -qF '"failure_detection": {"mode": "lease"' "$out/notes.txt" \
    && grep -qF "curl -fsS -w '\n' localhost:8080/v1/groups/orders" "$out/notes.txt"
}
step "NOTES.txt: the port-forward and the curl lines" notes

# The chart ships copies (Helm reads files inside the chart only): they must be deploy/'s.
copies() {
  cmp deploy/grafana/gm.json "$chart/files/gm.json" \
    && cmp deploy/prometheus/gm-rules.yaml "$chart/files/gm-rules.yaml" || {
    echo "copy them: cp deploy/grafana/gm.json deploy/prometheus/gm-rules.yaml $chart/files/"
    return 1
  }
}
step "the chart's dashboard and rules equal deploy/grafana/gm.json and deploy/prometheus/gm-rules.yaml" copies

deploy_current() {
  deploy/render.sh "$out/deploy.yaml" || return 1
  diff -u deploy/gm-cluster.yaml "$out/deploy.yaml" || {
    echo "deploy/gm-cluster.yaml differs from the chart rendered now (above: - committed, + rendered)."
    echo "Regenerate it with deploy/render.sh and commit the result."
    return 1
  }
}
step "deploy/gm-cluster.yaml equals the chart rendered now" deploy_current

echo "helm: $passed passed, $failed failed"
((failed == 0))
