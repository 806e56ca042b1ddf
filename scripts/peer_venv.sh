#!/usr/bin/env bash
# Virtual environments for peer libraries that benchmarks compare against but whose pins clash
# with crossdistill's own environment. Idempotent: an existing venv whose pins already match is
# left as it is. Needs only PyPI (or the pip indexes pip.conf names).
#
#   bash scripts/peer_venv.sh model2vec   # .venv-model2vec: model2vec[distill]==0.10.0 (+ sklearn)
#
# model2vec's `[distill]` extra requires transformers<5.4 while crossdistill uses transformers 5.x,
# so its distillation runs in .venv-model2vec (benchmarks/peers/model2vec_distill.py); the
# distilled model is loaded back in the main venv, where plain `model2vec` (no extra) is enough.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PEER_PYTHON:-python3.11}"

# One entry per peer: the pip requirements of its venv. torch is pinned to the main venv's
# version, which PyPI serves as the CPU build on Linux x86-64 without CUDA wheels.
# model2vec 0.10.0: `model2vec.distill` imports its vocabulary quantization module, which needs
# scikit-learn, but the `[distill]` extra does not list it; the `[quantization]` extra does.
declare -A requirements=(
  [model2vec]="torch==2.13.0 model2vec[distill,quantization]==0.10.0"
)

usage() {
  echo "usage: $0 PEER   (one of: ${!requirements[*]})" >&2
  exit 2
}

[ $# -eq 1 ] || usage
peer="$1"
[ -n "${requirements[$peer]+x}" ] || usage
venv="$root/.venv-$peer"
reqs="${requirements[$peer]}"
stamp="$venv/.peer-requirements"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$reqs" ]; then
  echo "peer venv $venv is up to date ($reqs)"
else
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
  fi
  echo "installing into $venv: $reqs"
  # shellcheck disable=SC2086  # word-splitting the requirement list is intended
  "$venv/bin/python" -m pip install --quiet $reqs
  echo "$reqs" >"$stamp"
fi

echo "installed in $venv:"
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|model2vec|transformers|tokenizers|huggingface[-_]hub|numpy|safetensors|scikit[-_]learn|skeletoken)=='
