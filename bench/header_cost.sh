#!/usr/bin/env bash
# Compile cost of the public headers: a one-function translation unit including each umbrella,
# against ATen/ATen.h and torch/torch.h alone, built as the library is (g++ -O2 -std=c++17, no
# ccache). Prints CPU seconds (user + sys, the median of REPS runs), which load on the machine
# changes less than wall time.
#   bash bench/header_cost.sh [REPS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
TORCH_INCLUDE=$(python3 -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')
CXX=${CXX:-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
measure() {  # measure LABEL HEADER
  printf '#include <%s>\nint answer() { return 42; }\n' "$2" >"$work/tu.cpp"
  local times=()
  for _ in $(seq "$REPS"); do
    local t
    t=$( { /usr/bin/time -f '%U %S' "$CXX" -O2 -std=c++17 -fPIC -Iinclude $TORCH_INCLUDE \
      -c "$work/tu.cpp" -o "$work/tu.o"; } 2>&1 | tail -1 | awk '{printf "%.2f", $1 + $2}')
    times+=("$t")
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((REPS + 1) / 2))p")
  printf '%-40s %6s s\n' "$1" "$median"
}
echo "compiler: $($CXX --version | head -1); torch $(python3 -c 'import torch; print(torch.__version__)')"
measure "ATen/ATen.h" ATen/ATen.h
measure "torch_safetensors/safetensors.h (core)" torch_safetensors/safetensors.h
measure "torch_safetensors/all.h" torch_safetensors/all.h
measure "torch/torch.h" torch/torch.h
