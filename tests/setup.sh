#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent): cargo-nextest, the
# Python OpenAPI validator, and iptables (the partition tests drop one node's packets).
set -euo pipefail
if ! command -v iptables >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq iptables >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  python3 -m pip install --quiet openapi-spec-validator
fi
