#!/usr/bin/env bash
# Runs the shell examples of the documentation against a fresh local cluster, so that what the
# README and docs/ tell a new user to type really works.
#
# Usage: tests/docs/run_examples.sh [SOURCE...]
#   SOURCE is a Markdown file or FILE#Heading; default: README.md#Try it, then docs/*.md by name.
#
# Marker convention in the Markdown (extracted by tests/docs/extract_examples.py):
#   ```sh        an example that runs. Blocks run in document order, each in its own
#                `bash -euo pipefail` (so any failing command fails the block), from one scratch
#                directory shared by all blocks, with `gm` on PATH (the binary under test), against
#                the 3-node cluster of `gm dev` on 127.0.0.1 (API 8081-8083, peers 7001-7003).
#                A block must work when pasted alone after the blocks before it: no variables
#                carry over between blocks. Use `curl -fsS` so that an HTTP error fails the block.
#   <!-- expect: REGEX -->
#                right after a ```sh block (blank lines between are fine; invisible when
#                rendered): an extended regex (grep -E) that the block's stdout must match. Use it
#                for examples that show an error status, e.g. `curl -sS -w '%{http_code}\n' ...`
#                followed by <!-- expect: ^409$ -->.
#   ```console   shown, never run (needs something the run does not have: another cluster,
#                Kubernetes, a long benchmark, Ctrl-C).
#   ```text      output; ```json a document. Not run.
#   ```bash, ```shell are refused: write ```sh or ```console.
#
# Environment:
#   GM_BIN                the gm binary (default target/debug/gm, built with `cargo build` if missing)
#   GM_EXAMPLE_TIMEOUT    seconds one block may take (default 120)
#   GM_READY_TIMEOUT      seconds the cluster may take to be ready (default 180)
#   GM_EXAMPLES_FAIL_FAST 1: stop at the first failing block (default: run all, report all)
#   GM_EXAMPLES_VERBOSE   1: also print the output of the blocks that pass
#
# Exit status: 0 when every block passed, 1 when one failed, 2 when the cluster could not start.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
block_timeout="${GM_EXAMPLE_TIMEOUT:-120}"
ready_timeout="${GM_READY_TIMEOUT:-180}"
nodes=3
api_ports=(8081 8082 8083)
peer_ports=(7001 7002 7003)

die() { echo "run_examples: $*" >&2; exit 2; }

if [[ -n "${GM_BIN:-}" ]]; then
  [[ -x "$GM_BIN" ]] || die "GM_BIN=$GM_BIN is not an executable file"
  bin="$(cd "$(dirname "$GM_BIN")" && pwd)/$(basename "$GM_BIN")"
else
  bin="$root/target/debug/gm"
  if [[ ! -x "$bin" ]]; then
    echo "run_examples: $bin is missing; running cargo build" >&2
    cargo build --quiet || die "cargo build failed"
  fi
fi

if [[ $# -gt 0 ]]; then
  sources=("$@")
else
  sources=("README.md#Try it")
  for f in docs/*.md; do sources+=("$f"); done
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gm-docs-examples.XXXXXX")"
dev_pid=""

# Stops what this script started: gm dev (SIGTERM, so it stops its nodes), then anything left in
# its process group.
stop_cluster() {
  [[ -n "$dev_pid" ]] || return 0
  kill -TERM "$dev_pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$dev_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL -- "-$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  dev_pid=""
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 tests/docs/extract_examples.py "$work/blocks" "${sources[@]}" || die "could not extract the examples"
count=$(wc -l <"$work/blocks/index.tsv")
((count > 0)) || die "no \`\`\`sh blocks in: ${sources[*]}"

# The examples use the README's ports: refuse to run beside another cluster.
for port in "${api_ports[@]}" "${peer_ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken (another gm dev?); the examples need ${api_ports[*]} and ${peer_ports[*]} free"
  fi
done

mkdir -p "$work/bin" "$work/scratch"
ln -s "$bin" "$work/bin/gm"
export PATH="$work/bin:$PATH"

echo "run_examples: starting gm dev ($bin) with data in $work/data"
# Its own process group, so that stopping it can never miss a node.
setsid --wait "$bin" dev --nodes "$nodes" --data-dir "$work/data" --clean >"$work/dev.log" 2>&1 </dev/null &
dev_pid=$!

deadline=$((SECONDS + ready_timeout))
for port in "${api_ports[@]}"; do
  until curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
      tail -n 40 "$work/dev.log" >&2
      die "gm dev exited before the cluster was ready (its log is above)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "$work/dev.log" >&2
      die "node on port $port was not ready within ${ready_timeout}s (the log of gm dev is above)"
    fi
    sleep 0.2
  done
done
echo "run_examples: cluster ready; running $count blocks"

# Runs block $1 in its own process group with a deadline; its status is the block's.
run_block() {
  local n="$1" pid status deadline
  (cd "$work/scratch" && exec setsid --wait bash -euo pipefail "$work/blocks/$n.sh") \
    >"$work/blocks/$n.out" 2>"$work/blocks/$n.err" </dev/null &
  pid=$!
  deadline=$((SECONDS + block_timeout))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run_examples: timed out after ${block_timeout}s" >>"$work/blocks/$n.err"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  status=0
  wait "$pid" || status=$?
  # Whatever the block left running (a background curl or server) goes with it.
  kill -KILL -- "-$pid" 2>/dev/null || true
  return "$status"
}

# Prints files indented, each line ended even if the file's last one is not.
indent() { awk '{ print "  | " $0 }' "$@"; }

failed=()
while IFS=$'\t' read -r n file line; do
  where="$file:$line"
  status=0
  run_block "$n" || status=$?
  missing=()
  while IFS= read -r re; do
    [[ -n "$re" ]] || continue
    grep -Eq -- "$re" "$work/blocks/$n.out" || missing+=("$re")
  done <"$work/blocks/$n.expect"
  if ((status == 0 && ${#missing[@]} == 0)); then
    echo "ok    $where"
    if [[ "${GM_EXAMPLES_VERBOSE:-0}" == 1 ]]; then
      indent "$work/blocks/$n.out" "$work/blocks/$n.err"
    fi
    continue
  fi
  failed+=("$where")
  echo "FAIL  $where (exit status $status)"
  echo "  --- block"
  nl -ba -w3 -s'  ' "$work/blocks/$n.sh" | sed 's/^/  /'
  for re in "${missing[@]}"; do echo "  --- stdout does not match: $re"; done
  echo "  --- stdout"
  indent "$work/blocks/$n.out"
  echo "  --- stderr"
  indent "$work/blocks/$n.err"
  if [[ "${GM_EXAMPLES_FAIL_FAST:-0}" == 1 ]]; then break; fi
done <"$work/blocks/index.tsv"

if ! kill -0 "$dev_pid" 2>/dev/null; then
  echo "run_examples: gm dev stopped during the run; its log:" >&2
  tail -n 40 "$work/dev.log" >&2
  failed+=("(gm dev)")
fi

if ((${#failed[@]} > 0)); then
  echo "run_examples: ${#failed[@]} of $count blocks failed: ${failed[*]}"
  exit 1
fi
echo "run_examples: all $count blocks passed"
