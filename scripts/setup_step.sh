#!/usr/bin/env bash
# One step of `make setup`: runs COMMAND with its output appended to LOG and prints one line,
# `setup: WHAT … ok`. When the command fails it prints the log's last lines instead and exits
# with the command's status.
# Usage: scripts/setup_step.sh LOG WHAT COMMAND [ARG...]
set -uo pipefail
log=$1
what=$2
shift 2
mkdir -p "$(dirname "$log")"
printf '\n== %s  %s\n$ %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$what" "$*" >>"$log"
start=$(($(wc -c <"$log") + 1))  # this step's output starts here
if "$@" >>"$log" 2>&1; then
  echo "setup: $what … ok"
else
  status=$?
  echo "setup: $what … failed (exit $status); its last lines (all of it in $log):" >&2
  tail -c "+$start" "$log" | tail -n 40 | sed 's/^/  /' >&2
  exit "$status"
fi
