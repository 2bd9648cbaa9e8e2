#!/usr/bin/env bash
# Q-BERT4Rec training (DeepSpeed ZeRO-2, bf16) and open_clip ViT-B-32 encoding throughput on one NVIDIA GPU,
# without Ray, in at most 4 minutes; JSON to $OUT (the device tool's output folder) or bench/results/.
#   on a lent GPU machine, with bench/gpu/wheels carried:  bash bench/gpu/run.sh
#   here, tiny on the CPU (make bench-gpu-smoke):           PYTHON=.venv/bin/python bash bench/gpu/run.sh --smoke
# The GPU machine's python3 has torch and transformers but not DeepSpeed or open_clip: the wheels that
# `make gpu-wheels` puts in bench/gpu/wheels go to a folder of their own on PYTHONPATH (pip never sees torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
cap_s=${BENCH_GPU_CAP_S:-220}  # the benchmark itself; installing the wheels takes seconds
site=/tmp/qbr-bench-gpu-site

if [[ ${1:-} == --smoke ]]; then
  out_dir=${OUT:-bench/results/tmp}
  # any op DeepSpeed JIT-compiles lands in the project's cache (init_engine skips its shared-memory kernel)
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
else
  out_dir=${OUT:-bench/results}
  shopt -s nullglob
  wheels=(bench/gpu/wheels/*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "no wheels in bench/gpu/wheels: run 'make gpu-wheels' here and carry bench/gpu/wheels" >&2
    exit 2
  fi
  "$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout --kill-after=10 "$cap_s" "$python" bench/gpu/bench.py --out-dir "$out_dir" "$@"
