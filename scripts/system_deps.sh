#!/usr/bin/env bash
# Debian packages crossdistill's demo and tests read: Fashion-MNIST's IDX files, WordNet 3.0 (the
# `sentences` text source), and Chromium, which tests/test_report.py drives headless to check
# that a report's figures all render, and the speech synthesizers espeak-ng and flite, which
# generate the (synthetic) speech of the `speech_text` source.
# Installs them with apt-get when run as root; otherwise prints the exact command and carries on
# (the tests that need them then skip with the same hint).
# chromium is large: about 350 MB on disk (/usr/lib/chromium), plus its libraries; the report
# itself never needs it.
# apt's output goes to the log file LOG (default .venv/setup.log); one line per step is printed.
# Usage: scripts/system_deps.sh [LOG]
set -euo pipefail
log=${1:-.venv/setup.log}
step=(bash "$(dirname "$0")/setup_step.sh" "$log")
packages=(dataset-fashion-mnist wordnet-base chromium espeak-ng flite)
marker=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
wordnet_marker=/usr/share/wordnet/data.noun
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && [ -f "$marker" ] && [ -f "$wordnet_marker" ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  "${step[@]}" "apt-get update" apt-get update -qq
  "${step[@]}" "apt-get install ${missing[*]}" \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "crossdistill setup: missing Debian packages. Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
fi
