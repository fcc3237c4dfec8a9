# Sourced by the shell test scripts (tests/docker/run.sh, tests/prometheus/run.sh), which define
# `fail MESSAGE` (ends the run) and `timeout_s` before using it.

# Polls COMMAND... every 0.2 s until it succeeds; fails the run with DESCRIPTION after the timeout.
wait_for() {
  local description=$1
  shift
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    ((SECONDS < deadline)) || fail "$description: not within ${timeout_s}s"
    sleep 0.2
  done
}
