#!/usr/bin/env bash
# Installs Python packages (pip arguments) into the python3 on PATH, the one the test scripts run.
# A system python that refuses pip (PEP 668: Debian's and Ubuntu's /usr/bin/python3) stops this with
# the two commands that give the tests a virtual environment instead.
set -euo pipefail
if python3 - <<'EOF_PY'; then
import os, sys, sysconfig
# PEP 668: the marker sits beside the standard library; a virtual environment is never refused.
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
EOF_PY
  venv=$(realpath -m "$(dirname "$0")/../target/tools/venv")
  echo "tests: $(command -v python3) is managed by the system (PEP 668) and refuses pip; give the tests a virtual environment, then run again:" >&2
  echo "  python3 -m venv $venv && export PATH=$venv/bin:\$PATH    (Debian: apt-get install python3-venv first)" >&2
  exit 1
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
