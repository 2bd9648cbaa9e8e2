#!/usr/bin/env bash
# Fill bench/gpu/wheels/ (git-ignored) with the pins of bench/gpu/wheels.txt for the GPU machine
# (CPython 3.12, x86-64): DeepSpeed built here from its sdist without ops (DS_BUILD_OPS=0, against
# this Python's torch: --no-build-isolation), the rest downloaded as cp312 manylinux or pure wheels.
# Every pip call has --no-deps, so pip never fetches or replaces torch.
# usage: PYTHON=.venv/bin/python bash bench/gpu/wheels.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=$here/wheels
pip=("${PYTHON:-python3}" -m pip --disable-pip-version-check)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done

mapfile -t pins < <(grep -v -e '^#' -e '^$' "$here/wheels.txt")
deepspeed=$(printf '%s\n' "${pins[@]}" | grep '^deepspeed==')
mapfile -t others < <(printf '%s\n' "${pins[@]}" | grep -v '^deepspeed==')

mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two would stop the install there
DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$dest" "$deepspeed"
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${others[@]}"
ls -l "$dest"
du -sh "$dest"
