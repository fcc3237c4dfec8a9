#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent): cargo-nextest and the
# Python OpenAPI validator. Safe to run again.
set -euo pipefail
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  python3 -m pip install --quiet openapi-spec-validator
fi
