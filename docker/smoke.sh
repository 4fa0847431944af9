#!/usr/bin/env bash
# The compose cluster, for real: build the image, run the README's command (the master,
# 3 agents and the target, authenticated by the CURVE keys the master makes), check from
# the master's final block that 3 agents took part and that the success count equals
# what the target answered (it prints that as it stops), then tear everything down,
# also on failure or Ctrl-C.
#
#   docker/smoke.sh                  # base image: python:3.12-slim-bookworm
#   PYTHON_IMAGE=$(../shared/tools/docker-local-base.sh) docker/smoke.sh
#
# Works with `docker compose` (v2) and `docker-compose` (v1). Exit 0 when every check
# passes; otherwise non-zero with what failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
AGENTS=${AGENTS:-3}
RUN_TIME=${RUN_TIME:-8s}
export AGENTS RUN_TIME
export PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.12-slim-bookworm}
export LOADTEST_IMAGE=${LOADTEST_IMAGE:-loadtest:smoke}
project=loadtest-smoke-$$
log=$(mktemp /tmp/loadtest-smoke.XXXXXX)
say() { echo "smoke: $*" >&2; }

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  say "neither 'docker compose' nor 'docker-compose' is installed"; exit 2
fi
dc() { "${compose[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  say "tearing down"
  dc down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  rm -f "$log"
  exit "$code"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

started=$(date +%s)
say "building the image $LOADTEST_IMAGE from $PYTHON_IMAGE"
dc build master
built=$(date +%s)

# the README's command, bounded in time: the master waits for AGENTS agents, runs the
# test, and its exit stops the cluster (the target prints what it answered as it stops)
say "AGENTS=$AGENTS compose up --scale agent=$AGENTS --exit-code-from master"
set +e
timeout 300 "${compose[@]}" -p "$project" -f "$here/docker-compose.yml" up --no-color \
  --scale agent="$AGENTS" --exit-code-from master > "$log" 2>&1
code=$?
set -e
finished=$(date +%s)
final=$(sed -n 's/^master[-_]1 *| //p' "$log" | sed -n '/^final benchmark:/,$p')
echo "$final"
[[ $code == 0 ]] || { say "FAIL: the cluster exited $code"; tail -40 "$log"; exit 1; }

served=$(dc logs --no-color target | sed -n 's/.*target server answered ok=\([0-9]*\).*/\1/p' | tail -1)
success=$(echo "$final" | sed -n 's/^success count *:\([0-9]*\)$/\1/p' | head -1)
agents=$(echo "$final" | sed -n '/^agents:/,$p' | grep -c ' ok$' || true)
say "agents ok in the final block: $agents (want $AGENTS); success count ${success:-?}, target answered ${served:-?}"
[[ $agents == "$AGENTS" ]] || { say "FAIL: $agents agent(s) took part, not $AGENTS"; exit 1; }
[[ -n $success && $success == "$served" && $success -gt 0 ]] \
  || { say "FAIL: success count ${success:-?} != target's ${served:-?}"; exit 1; }
say "PASS: build $((built - started)) s, cluster up to final block $((finished - built)) s"
