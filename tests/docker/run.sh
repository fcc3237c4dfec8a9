#!/usr/bin/env bash
# The Docker image, end to end: builds the image from the repository's Dockerfile and runs it as a
# 3-node cluster on a Docker network, then checks that the cluster survives `docker kill` of its
# leader and `docker network disconnect` of a follower, and that both nodes rejoin.
#
# No registry is reachable in CI, so the runtime base image is made here, without pulling: the
# libraries `ldd` lists for the gm binary, an /etc/passwd with the non-root user 65532 (as in
# gcr.io/distroless/cc-debian12:nonroot) and /tmp, imported with `docker import`. The image is the
# Dockerfile's `prebuilt` target (the same runtime stage users get) around the binary CI already
# built, stripped of debug info, so nothing is compiled inside Docker.
#
# Each container runs as the image's user with a read-only root filesystem, all capabilities
# dropped, and its data directory on a named volume (it must survive `docker kill` + `docker
# start`). Requests go from this host to the containers' addresses on the Docker network.
#
# Usage: tests/docker/run.sh
# Environment:
#   GM_BIN                the gm binary (default target/debug/gm, built with `cargo build` if missing)
#   GM_DOCKER_TIMEOUT     seconds each wait may take (default 90)
#
# Exit status: 0 when every phase passed; 1 when one failed (the containers' logs follow), or when
# Docker is missing or its daemon cannot be reached. Everything it made (containers, volumes, the
# network, both images) is removed on every exit.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
timeout_s="${GM_DOCKER_TIMEOUT:-90}"
run_id="gm-docker-test-$$-$RANDOM"
network="$run_id"
base_image="$run_id-base:local"
image="$run_id:local"
group=docker-test
work="$(mktemp -d "${TMPDIR:-/tmp}/gm-docker-test.XXXXXX")"
start_us=${EPOCHREALTIME/./}
made_base="" made_image="" made_network=""
nodes=(1 2 3)

container() { echo "$run_id-$1"; }
volume() { echo "$run_id-$1-data"; }

# "[ 12.3s] message": seconds since the start of the run.
say() {
  local now_us=${EPOCHREALTIME/./}
  printf '[%6.1fs] %s\n' "$(((now_us - start_us) / 100000))e-1" "$*"
}
phase_start() { phase_us=${EPOCHREALTIME/./}; say "$*"; }
phase_done() {
  local now_us=${EPOCHREALTIME/./}
  say "  ok in $(((now_us - phase_us) / 1000)) ms: $*"
}

show_logs() {
  local n c
  for n in "${nodes[@]}"; do
    c=$(container "$n")
    docker inspect "$c" >/dev/null 2>&1 || continue
    echo "----- $c ($(docker inspect -f '{{.State.Status}}, exit code {{.State.ExitCode}}' "$c")), last 80 lines -----" >&2
    docker logs --tail 80 "$c" 2>&1 | sed 's/^/  /' >&2
  done
}
fail() {
  say "FAILED: $*" >&2
  show_logs
  exit 1
}
# Before anything was started: nothing to show.
die() { echo "tests/docker/run.sh: $*" >&2; exit 1; }

cleanup() {
  local n
  for n in "${nodes[@]}"; do
    docker rm -f -v "$(container "$n")" >/dev/null 2>&1 || true
    docker volume rm "$(volume "$n")" >/dev/null 2>&1 || true
  done
  [[ -z "$made_network" ]] || docker network rm "$network" >/dev/null 2>&1 || true
  [[ -z "$made_image" ]] || docker image rm "$image" >/dev/null 2>&1 || true
  [[ -z "$made_base" ]] || docker image rm "$base_image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for DESCRIPTION COMMAND...
source tests/wait_for.sh # (the working directory is the repository root)

# The node's address on the test network; empty while it is stopped or disconnected.
ip_of() {
  docker inspect -f "{{with index .NetworkSettings.Networks \"$network\"}}{{.IPAddress}}{{end}}" \
    "$(container "$1")" 2>/dev/null || true
}
# GET or PUT on node N's API: http N METHOD PATH [BODY]; prints the body, fails on non-2xx.
http() {
  local ip
  ip=$(ip_of "$1")
  [[ -n "$ip" ]] || return 1
  local args=(-fsS --connect-timeout 2 --max-time 8 -X "$2" "http://$ip:8080$3")
  [[ $# -lt 4 ]] || args+=(-H 'Content-Type: application/json' -d "$4")
  curl "${args[@]}" 2>/dev/null
}
is_ready() { http "$1" GET /readyz >/dev/null; }
all_ready() {
  local n
  for n in "$@"; do is_ready "$n" || return 1; done
}
# The leader's id as node N sees it through a linearizable read (so a quorum agrees); fails
# while there is none.
leader_seen_by() {
  local cluster leader
  cluster=$(http "$1" GET /v1/cluster) || return 1
  leader=$(sed -nE 's/.*"leader_id":([0-9]+).*/\1/p' <<<"$cluster")
  [[ -n "$leader" ]] && echo "$leader"
}
cluster_id_seen_by() {
  local cluster
  cluster=$(http "$1" GET /v1/cluster) || return 1
  sed -nE 's/.*"cluster_id":"([^"]+)".*/\1/p' <<<"$cluster"
}
join() {
  http "$1" PUT "/v1/groups/$group/members/$2" \
    '{"address": "10.9.9.9:9000", "failure_detection": {"mode": "lease", "ttl_ms": 600000}}' >/dev/null
}
# A linearizable read of the group on node N shows MEMBER.
sees() {
  local view
  view=$(http "$1" GET "/v1/groups/$group") && [[ "$view" == *"\"id\":\"$2\""* ]]
}
all_see() {
  local member=$1 n
  shift
  for n in "$@"; do sees "$n" "$member" || return 1; done
}
# A new leader, not OLD, as seen by node N.
new_leader_seen_by() {
  local leader
  leader=$(leader_seen_by "$1") && [[ "$leader" != "$2" ]]
}

start_node() {
  local n=$1 peers="" p
  for p in "${nodes[@]}"; do peers+="${peers:+,}$p=$(container "$p"):7000"; done
  docker run -d --name "$(container "$n")" --hostname "$(container "$n")" --network "$network" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$(volume "$n"):/var/lib/gm" -e NO_COLOR=1 \
    "$image" server --node-id "$n" --peers "$peers" \
    --advertise-api "$(container "$n"):8080" --advertise-peer "$(container "$n"):7000" >/dev/null \
    || fail "docker run of node $n"
}

# --- Preflight: fail at once, saying what is missing, rather than hang.
command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
command -v curl >/dev/null 2>&1 || die "curl is not installed"
if ! docker_version=$(timeout 20 docker version -f '{{.Server.Version}}' 2>&1); then
  die "the Docker daemon cannot be reached (${docker_version##*$'\n'}); start it (for example \`dockerd >/var/log/dockerd.log 2>&1 &\`) or set DOCKER_HOST"
fi
bin="${GM_BIN:-target/debug/gm}"
if [[ ! -x "$bin" ]]; then
  [[ -z "${GM_BIN:-}" ]] || die "GM_BIN=$GM_BIN is not an executable file"
  echo "tests/docker/run.sh: $bin is missing; running cargo build" >&2
  cargo build --quiet --bin gm || die "cargo build failed"
fi
say "Docker $docker_version; binary $bin; names $run_id-*"

# --- The runtime base image, from scratch: what the dynamic loader needs, and the user.
phase_start "making the runtime base image $base_image"
rootfs="$work/rootfs"
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/home/nonroot"
mapfile -t libs < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
((${#libs[@]})) || fail "ldd $bin lists no libraries"
for lib in "${libs[@]}"; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' \
  >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"
made_base=1
tar --numeric-owner -C "$rootfs" -c . | docker import - "$base_image" >/dev/null || fail "docker import"
phase_done "${#libs[@]} libraries: ${libs[*]}"

# --- The image: the Dockerfile's prebuilt target on that base.
phase_start "building $image from Dockerfile (target prebuilt)"
mkdir -p "$work/context"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$work/context/gm" "$bin"
else
  cp "$bin" "$work/context/gm"
fi
made_image=1
docker build --force-rm -f Dockerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$base_image" --build-arg GM_BINARY=gm \
  -t "$image" "$work/context" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "docker build"; }
phase_done "$(docker image ls --format '{{.Size}}' "$image")"
config=$(docker image inspect -f '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$image")
[[ "$config" == '65532:65532 ["gm"] ["server"]' ]] || fail "image config: user, entrypoint, cmd are $config"

# --- Three containers, started at once.
phase_start "starting 3 nodes on network $network"
docker network create "$network" >/dev/null || fail "docker network create"
made_network=1
for n in "${nodes[@]}"; do start_node "$n"; done
wait_for "every node ready" all_ready "${nodes[@]}"
leader=$(leader_seen_by 1) || fail "no leader after every node is ready"
cluster_id=$(cluster_id_seen_by 1)
[[ -n "$cluster_id" ]] || fail "no cluster id after every node is ready"
phase_done "all 3 ready, leader node $leader, cluster $cluster_id"

phase_start "joining member before-kill, reading it on every node"
wait_for "join before-kill" join 1 before-kill
wait_for "every node sees before-kill" all_see before-kill "${nodes[@]}"
phase_done "seen on nodes ${nodes[*]}"

# --- docker kill of the leader.
killed=$leader
survivors=()
for n in "${nodes[@]}"; do [[ "$n" == "$killed" ]] || survivors+=("$n"); done
phase_start "docker kill of the leader, node $killed"
docker kill "$(container "$killed")" >/dev/null || fail "docker kill"
wait_for "a new leader seen by node ${survivors[0]}" new_leader_seen_by "${survivors[0]}" "$killed"
leader=$(leader_seen_by "${survivors[0]}") || fail "node ${survivors[0]} lost the leader"
say "  node $leader leads"
wait_for "join after-kill" join "${survivors[1]}" after-kill
phase_done "a new leader and an acknowledged write"
wait_for "the survivors see after-kill" all_see after-kill "${survivors[@]}"
say "  nodes ${survivors[*]} see after-kill (linearizable reads)"

phase_start "docker start of node $killed"
docker start "$(container "$killed")" >/dev/null || fail "docker start"
wait_for "node $killed ready again" is_ready "$killed"
wait_for "node $killed sees the members" all_see after-kill "$killed"
sees "$killed" before-kill || fail "node $killed lost before-kill"
phase_done "node $killed ready, sees before-kill and after-kill"

# --- docker network disconnect of a follower.
wait_for "every node ready" all_ready "${nodes[@]}"
leader=$(leader_seen_by 1) || fail "no leader before the disconnect"
# A follower other than the node just restarted, so that two different nodes leave.
cut=""
for n in "${nodes[@]}"; do
  if [[ "$n" != "$leader" && "$n" != "$killed" ]]; then cut=$n; break; fi
done
connected=()
for n in "${nodes[@]}"; do [[ "$n" == "$cut" ]] || connected+=("$n"); done
phase_start "docker network disconnect of follower node $cut (leader: node $leader)"
docker network disconnect "$network" "$(container "$cut")" || fail "docker network disconnect"
wait_for "join while-away" join "${connected[0]}" while-away
wait_for "the connected nodes see while-away" all_see while-away "${connected[@]}"
phase_done "nodes ${connected[*]} accept a write and read it"

phase_start "docker network connect of node $cut"
docker network connect "$network" "$(container "$cut")" || fail "docker network connect"
wait_for "node $cut ready again" is_ready "$cut"
wait_for "node $cut sees while-away" sees "$cut" while-away
phase_done "node $cut caught up"

# --- The end: one cluster, every node agrees.
wait_for "every node ready" all_ready "${nodes[@]}"
for member in before-kill after-kill while-away; do
  all_see "$member" "${nodes[@]}" || fail "not every node sees $member"
done
for n in "${nodes[@]}"; do
  id=$(cluster_id_seen_by "$n") || fail "node $n: no /v1/cluster"
  [[ "$id" == "$cluster_id" ]] || fail "node $n is in cluster '$id', not $cluster_id"
done
say "passed: 3 nodes ready in cluster $cluster_id, each sees before-kill, after-kill and while-away"
