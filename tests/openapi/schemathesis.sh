#!/usr/bin/env bash
# Fuzzes a real local gm cluster against its own OpenAPI document with schemathesis, every check on.
#
# Runs in a network namespace of its own with only loopback (`unshare --net`): the fuzzer joins
# members at any address it likes, and the nodes then probe those addresses; there, no probe or
# DNS query can leave the machine (each fails at once, and the member is removed as failed).
#
# Starts `gm dev --nodes 3` on free ports in 20000-30000 with a throw-away data dir, waits until
# every node answers /readyz 200, runs `schemathesis run` over http://127.0.0.1:PORT/openapi.json
# (the document the node serves) against node 1, and stops the cluster on any exit. Exits non-zero
# on any finding. Bounded: a fixed seed and example count, one worker, short blocking queries
# (tests/openapi/hooks.py) and watch streams read up to their first event (schemathesis.toml).
#
# Environment:
#   GM_BIN          the gm binary (default: the newer of target/release/gm and target/debug/gm;
#                   `cargo build --bin gm` first if neither exists)
#   GM_OPENAPI      a document file to test instead of the served one (e.g. src/api/openapi.json,
#                   to check an edited document against a binary built before the edit)
#   ST_MAX_EXAMPLES test cases per operation and phase (default 100)
#   ST_SEED         the seed (default 1)
#   ST_REPORT_DIR   where to write JUnit and NDJSON reports (default: none)
set -euo pipefail
# Paths given in the environment are relative to where this was started.
[[ -z ${GM_BIN:-} ]] || GM_BIN=$(realpath "$GM_BIN")
[[ -z ${GM_OPENAPI:-} ]] || GM_OPENAPI=$(realpath "$GM_OPENAPI")
[[ -z ${ST_REPORT_DIR:-} ]] || ST_REPORT_DIR=$(realpath -m "$ST_REPORT_DIR")
cd "$(dirname "$0")/../.."
root=$PWD

if [[ -z "${GM_BIN:-}" ]]; then
  GM_BIN=""
  for candidate in target/release/gm target/debug/gm; do
    if [[ -x $candidate && ( -z $GM_BIN || $candidate -nt $GM_BIN ) ]]; then
      GM_BIN=$candidate
    fi
  done
  if [[ -z $GM_BIN ]]; then
    echo "schemathesis.sh: no gm binary yet: cargo build --bin gm"
    cargo build --bin gm
    GM_BIN=target/debug/gm
  fi
fi
[[ -x $GM_BIN ]] || { echo "schemathesis.sh: $GM_BIN is not an executable" >&2; exit 2; }
GM_BIN=$(realpath "$GM_BIN")

if [[ -z ${GM_SCHEMATHESIS_NETNS:-} ]]; then
  # Again, in a new network namespace (as root; else in a user namespace that maps us to root).
  netns=(unshare --net)
  [[ $(id -u) -eq 0 ]] || netns=(unshare --map-root-user --net)
  GM_BIN=$GM_BIN GM_OPENAPI=${GM_OPENAPI:-} ST_REPORT_DIR=${ST_REPORT_DIR:-} GM_SCHEMATHESIS_NETNS=1 \
    exec "${netns[@]}" -- "$root/tests/openapi/schemathesis.sh"
fi
ip link set lo up

work=$(mktemp -d "${TMPDIR:-/tmp}/gm-schemathesis.XXXXXX")
dev_pid=""
stop_cluster() {
  local status=$?
  if [[ -n $dev_pid ]] && kill -0 "$dev_pid" 2>/dev/null; then
    # gm dev stops its nodes on SIGTERM (each gets 10 s before SIGKILL).
    kill -TERM "$dev_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$dev_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  # gm dev leads its own process group (setsid below): whatever is left of it goes.
  [[ -n $dev_pid ]] && kill -KILL -- "-$dev_pid" 2>/dev/null || true
  if [[ $status -ne 0 && -f $work/dev.log ]]; then
    echo "schemathesis.sh: last lines of the cluster's log:"
    tail -n 40 "$work/dev.log"
  fi
  rm -rf "$work"
  exit "$status"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Three consecutive free API ports and three free peer ports, in 20000-30000.
read -r api_port peer_port < <(python3 - <<'EOF'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
rng = random.Random()
while True:
    api, peer = rng.randrange(20000, 24997), rng.randrange(25000, 29997)
    if all(free(p) for p in (api, api + 1, api + 2, peer, peer + 1, peer + 2)):
        print(api, peer)
        break
EOF
)

base="http://127.0.0.1:$api_port"
echo "schemathesis.sh: $GM_BIN dev --nodes 3 on API ports $api_port-$((api_port + 2)), peer ports $peer_port-$((peer_port + 2))"
# The fuzzer's probe-mode members live at addresses where nothing answers: the nodes probe them
# as usual, but remove one only after 100 failed probes, so a member a stateful scenario just
# joined is still there when the scenario reads it back (the nodes inherit GM_* settings).
GM_SUSPECT_AFTER=100 setsid "$GM_BIN" dev --nodes 3 --data-dir "$work/data" --clean --api-port "$api_port" --peer-port "$peer_port" \
  >"$work/dev.log" 2>&1 </dev/null &
dev_pid=$!

deadline=$((SECONDS + 90))
for port in "$api_port" "$((api_port + 1))" "$((api_port + 2))"; do
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$port/readyz") == 200 ]]; do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
      echo "schemathesis.sh: gm dev exited before the cluster was ready" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "schemathesis.sh: node on port $port not ready within 90 s" >&2
      exit 1
    fi
    sleep 0.2
  done
done
echo "schemathesis.sh: all 3 nodes ready"

if [[ -n ${GM_OPENAPI:-} ]]; then
  spec=(--url "$base" "$GM_OPENAPI")
else
  spec=("$base/openapi.json")
  if ! curl -s --max-time 5 "$base/openapi.json" | cmp -s - src/api/openapi.json; then
    echo "schemathesis.sh: warning: $GM_BIN serves a different document than src/api/openapi.json (built before an edit?)"
  fi
fi

reports=()
if [[ -n ${ST_REPORT_DIR:-} ]]; then
  reports=(--report junit,ndjson --report-dir "$ST_REPORT_DIR")
fi

cmd=(python3 -m schemathesis.cli --config-file tests/openapi/schemathesis.toml run "${spec[@]}"
  --checks all
  --phases examples,coverage,fuzzing,stateful
  --max-examples "${ST_MAX_EXAMPLES:-100}"
  --seed "${ST_SEED:-1}"
  --workers 1
  --continue-on-failure
  --request-timeout 15
  --no-color
  "${reports[@]}")
echo "schemathesis.sh: SCHEMATHESIS_HOOKS=tests/openapi/hooks.py ${cmd[*]}"
# Not exec: the EXIT trap must still stop the cluster. Schemathesis's and Hypothesis's caches go to
# $work, so each run starts afresh and leaves nothing in the work tree.
SCHEMATHESIS_HOOKS="$root/tests/openapi/hooks.py" GM_SCHEMATHESIS_CACHE="$work/cache" \
  HYPOTHESIS_STORAGE_DIRECTORY="$work/hypothesis" "${cmd[@]}"
