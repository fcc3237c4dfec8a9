#!/usr/bin/env bash
# The Grafana dashboard and the alert rules against a real Prometheus scraping a real gm cluster.
#
# 1. Static: `promtool check rules` and `promtool test rules` on deploy/prometheus/, the
#    dashboard's shape (tests/prometheus/prom.py check-dashboard), `promtool check metrics` on a
#    node's /metrics.
# 2. A 3-node cluster of separate `gm server` processes on free ports of 127.0.0.1 (never
#    8081-8083 or 7001-7003), snapshotting every 100 entries, and Debian's `prometheus` scraping
#    the three nodes every second with the rules loaded (evaluated every second, each `for:`
#    shortened to 2s).
# 3. A small load over every node (tests/prometheus/prom.py load: lease members join, heartbeat
#    and leave, reads, failing requests), probe-mode members served by `python3 -m http.server`
#    of which two are killed and evicted, a lease member left to expire, and the leader killed
#    with SIGKILL and started again.
# 4. Every query of every dashboard panel (targets[].expr, with $job=gm, $instance=.+ and
#    $__rate_interval=1m) through /api/v1/query: one line each, then the list of those that
#    returned nothing (or only NaN). Any such query fails the run, after step 5.
# 5. GMNoLeader not firing while the cluster has a leader; then the leader and one follower
#    stopped (SIGTERM), and GMNoLeader must be firing in /api/v1/alerts.
#
# Needs prometheus and promtool (Debian's `prometheus` package; tests/setup.sh installs it) and
# python3. Every process it started is stopped on exit; logs are shown when a step fails.
#
# Environment:
#   GM_BIN                the gm binary (default: the newer of target/release/gm and target/debug/gm;
#                         `cargo build --bin gm` first if neither exists)
#   GM_PROMETHEUS_TIMEOUT seconds each wait may take (default 60)
#   GM_PROMETHEUS_KEEP    set to keep the work directory (data, logs, Prometheus' TSDB)
set -euo pipefail
[[ -z ${GM_BIN:-} ]] || GM_BIN=$(realpath "$GM_BIN")
cd "$(dirname "$0")/../.."
root=$PWD
timeout_s=${GM_PROMETHEUS_TIMEOUT:-60}
prom_py=(python3 "$root/tests/prometheus/prom.py")
dashboard=deploy/grafana/gm.json
rules=deploy/prometheus/gm-rules.yaml
start_us=${EPOCHREALTIME/./}

say() {
  local now_us=${EPOCHREALTIME/./}
  printf '[%6.1fs] %s\n' "$(((now_us - start_us) / 100000))e-1" "$*"
}
die() { echo "tests/prometheus/run.sh: $*" >&2; exit 1; }

for tool in prometheus promtool python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing: run tests/setup.sh"
done
if [[ -z "${GM_BIN:-}" ]]; then
  for candidate in target/release/gm target/debug/gm; do
    if [[ -x $candidate && ( -z ${GM_BIN:-} || $candidate -nt $GM_BIN ) ]]; then
      GM_BIN=$candidate
    fi
  done
  if [[ -z ${GM_BIN:-} ]]; then
    cargo build --bin gm
    GM_BIN=target/debug/gm
  fi
fi
GM_BIN=$(realpath "$GM_BIN")

# 1. Static checks.
say "promtool check rules, promtool test rules, the dashboard's shape"
promtool check rules "$rules"
promtool test rules deploy/prometheus/gm-rules.test.yaml
"${prom_py[@]}" check-dashboard "$dashboard"

work=$(mktemp -d "${TMPDIR:-/tmp}/gm-prometheus-test.XXXXXX")
declare -A node_pid=()
other_pids=()
status_file=$work/failed

show_logs() {
  local f
  for f in "$work"/node-*.log "$work/prometheus.log"; do
    [[ -f $f ]] || continue
    echo "----- $(basename "$f"), last 40 lines -----" >&2
    tail -n 40 "$f" | sed 's/^/  /' >&2
  done
}
cleanup() {
  local status=$? pid
  for pid in "${node_pid[@]}" "${other_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${node_pid[@]}" "${other_pids[@]}"; do
    { wait "$pid"; } 2>/dev/null || true
  done
  if [[ -f $status_file ]]; then
    show_logs
  fi
  if [[ -n ${GM_PROMETHEUS_KEEP:-} ]]; then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() {
  say "FAILED: $*" >&2
  touch "$status_file" # the logs are shown on exit
  exit 1
}

# wait_for DESCRIPTION COMMAND...
source tests/wait_for.sh # (the working directory is the repository root)

# Ports: 3 API, 3 peer, Prometheus, 4 probe-mode members.
mapfile -t ports < <("${prom_py[@]}" ports 11)
api=("${ports[@]:0:3}") peer=("${ports[@]:3:3}") prom_port=${ports[6]} member_ports=("${ports[@]:7:4}")
urls=() peers=""
for n in 1 2 3; do
  urls+=("http://127.0.0.1:${api[n - 1]}")
  peers+="${peers:+,}$n=127.0.0.1:${peer[n - 1]}"
done
prometheus_url=http://127.0.0.1:$prom_port

# start_node N: `gm server` for node N in the background, its log appended to node-N.log.
start_node() {
  local n=$1
  "$GM_BIN" server --node-id "$n" --api-addr "127.0.0.1:${api[n - 1]}" --peer-addr "127.0.0.1:${peer[n - 1]}" \
    --data-dir "$work/n$n" --peers "$peers" --snapshot-every 100 >>"$work/node-$n.log" 2>&1 &
  node_pid[$n]=$!
}
ready() { curl -fsS -o /dev/null --max-time 2 "${urls[$1 - 1]}/readyz" 2>/dev/null; }
all_ready() { ready 1 && ready 2 && ready 3; }

# 2. The cluster and Prometheus.
say "starting 3 gm nodes on API ports ${api[*]}, peer ports ${peer[*]}"
for n in 1 2 3; do start_node "$n"; done
wait_for "every node ready" all_ready
curl -fsS "${urls[0]}/metrics" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt" || fail "promtool check metrics found problems in /metrics"
say "promtool check metrics: node 1's /metrics is clean"

"${prom_py[@]}" rules-for-test "$rules" "$work/gm-rules.yaml" 2s
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $work/gm-rules.yaml
scrape_configs:
  - job_name: gm
    static_configs:
      - targets: ['127.0.0.1:${api[0]}', '127.0.0.1:${api[1]}', '127.0.0.1:${api[2]}']
EOF
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
other_pids+=($!)
prometheus_ready() { curl -fsS -o /dev/null --max-time 2 "$prometheus_url/-/ready" 2>/dev/null; }
wait_for "Prometheus ready" prometheus_ready
targets_up() {
  [[ $(curl -fsS --max-time 2 "$prometheus_url/api/v1/query?query=sum(up)" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)') == 3 ]]
}
wait_for "Prometheus scraping all 3 nodes" targets_up
say "Prometheus on $prometheus_url scrapes the 3 nodes every second"

# 3. The load.
"${prom_py[@]}" load "${urls[@]}" &
load_pid=$!
other_pids+=("$load_pid")
join() { # join URL GROUP ID BODY
  curl -fsS -o /dev/null --max-time 5 -X PUT "$1/v1/groups/$2/members/$3" -H 'Content-Type: application/json' -d "$4"
}
member_pids=()
for i in 0 1 2 3; do
  mkdir -p "$work/member-$i"
  python3 -m http.server "${member_ports[i]}" --bind 127.0.0.1 --directory "$work/member-$i" >/dev/null 2>&1 &
  member_pids+=($!)
  other_pids+=($!)
done
member_listens() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${member_ports[$1]}/" 2>/dev/null; }
for i in 0 1 2 3; do wait_for "member server $i listening" member_listens "$i"; done
for i in 0 1 2 3; do
  wait_for "probe-mode member web-$i joined" join "${urls[i % 3]}" web "web-$i" \
    "{\"address\": \"127.0.0.1:${member_ports[i]}\", \"failure_detection\": {\"mode\": \"probe\", \"path\": \"/\"}}"
done
wait_for "lease member expiring joined" join "${urls[0]}" leases expiring \
  '{"address": "10.9.9.9:9000", "failure_detection": {"mode": "lease", "ttl_ms": 1000}}'
say "load running; 4 probe-mode members answer probes; lease member 'expiring' (1 s) gets no heartbeat"
sleep 3 # a few probe intervals of the live members, so probes succeed before any fails
kill "${member_pids[0]}" "${member_pids[1]}"
say "member servers of web-0 and web-1 killed"
gone() { ! curl -fsS -o /dev/null --max-time 2 "${urls[2]}/v1/groups/$1/members/$2" 2>/dev/null; }
wait_for "web-0 evicted" gone web web-0
wait_for "web-1 evicted" gone web web-1
wait_for "expiring removed" gone leases expiring
say "web-0, web-1 evicted as failed; 'expiring' removed as expired"

leader=$("${prom_py[@]}" wait-leader "${urls[@]}") || fail "no leader"
kill -9 "${node_pid[$leader]}"
{ wait "${node_pid[$leader]}"; } 2>/dev/null || true
say "leader node $leader killed with SIGKILL"
others=()
for n in 1 2 3; do ((n == leader)) || others+=("${urls[n - 1]}"); done
new_leader=$("${prom_py[@]}" wait-leader "${others[@]}") || fail "no new leader after the kill"
say "node $new_leader leads; starting node $leader again"
start_node "$leader"
wait_for "every node ready after the restart" all_ready
sleep 5 # scrapes of the cluster after the kill, and more load

# 4. Every panel query.
say "every panel query of $dashboard through $prometheus_url/api/v1/query"
panels_status=0
"${prom_py[@]}" panels "$prometheus_url" "$dashboard" || panels_status=$?

# 5. No leader: not while there is one, then with two of the three nodes stopped.
"${prom_py[@]}" not-firing "$prometheus_url" GMNoLeader || fail "GMNoLeader fires while node $new_leader leads"
leader=$("${prom_py[@]}" wait-leader "${urls[@]}") || fail "no leader before stopping two nodes"
follower=$((leader % 3 + 1))
kill "$load_pid" # no more writes
kill -TERM "${node_pid[$leader]}" "${node_pid[$follower]}"
{ wait "${node_pid[$leader]}" "${node_pid[$follower]}"; } 2>/dev/null || true
say "leader node $leader and node $follower stopped; waiting for GMNoLeader"
"${prom_py[@]}" wait-alert "$prometheus_url" GMNoLeader "$timeout_s" || fail "GMNoLeader did not fire"

if ((panels_status != 0)); then
  say "FAILED: some panel queries returned no data (listed above after \"panel queries:\")" >&2
  exit 1
fi
say "ok: every panel query returns data; GMNoLeader fires with two of three nodes stopped"
