#!/usr/bin/env bash
# Hardening checks, run by .ci/run after the normal tests. Needs clang (Debian's clang-14 has
# libFuzzer and the sanitizer runtimes). Each sanitizer build compiles only what it runs: ASan+UBSan
# the test executables and the fuzzers, TSan the core and the concurrency tests' source.
# The fuzzers read the test corpora in test/data directly; fuzz/ holds only the extra seeds.
#
#   1. the adversarial corpus matches its generator (tools/gen_adversarial.py --check)
#   2. ASan+UBSan: the whole C++ test suite, built with clang (the fuzz target in the same tree)
#   3. TSan: the concurrency tests
#   4-5. libFuzzer, JOBS fuzzers at a time, each for its own time on a core of its own:
#      fuzz_open (FUZZ_SECONDS, default 60) from test/data/adversarial and fuzz/seeds; fuzz_index
#      (sharded checkpoint indexes; INDEX_FUZZ_SECONDS, 30) from test/data/adversarial_index;
#      fuzz_unpickle (the converter's restricted unpickler; UNPICKLE_FUZZ_SECONDS, 20) from
#      fuzz/seeds_pickle and test/data/adversarial_convert; fuzz_legacy (the legacy non-zip
#      torch.save reader; LEGACY_FUZZ_SECONDS, 20) from fuzz/seeds_legacy and the same corpus;
#      fuzz_ptd (ExecuTorch .ptd files; PTD_FUZZ_SECONDS, 20) from fuzz/seeds_ptd; fuzz_dcp_metadata (DCP sharding metadata and
#      chunk coverage; DCP_FUZZ_SECONDS, 20) from fuzz/seeds_dcp; fuzz_quant_config (quantization
#      configs and metadata; QUANT_FUZZ_SECONDS, 20) from fuzz/seeds_quant
#
# Environment: FUZZ_SECONDS, JOBS (default 2), BUILD_ROOT (default: the repository; build trees
# go to $BUILD_ROOT/build-asan and $BUILD_ROOT/build-tsan). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
UNPICKLE_FUZZ_SECONDS=${UNPICKLE_FUZZ_SECONDS:-20}
LEGACY_FUZZ_SECONDS=${LEGACY_FUZZ_SECONDS:-20}
PTD_FUZZ_SECONDS=${PTD_FUZZ_SECONDS:-20}
INDEX_FUZZ_SECONDS=${INDEX_FUZZ_SECONDS:-30}
DCP_FUZZ_SECONDS=${DCP_FUZZ_SECONDS:-20}
QUANT_FUZZ_SECONDS=${QUANT_FUZZ_SECONDS:-20}
JOBS=${JOBS:-2}
BUILD_ROOT=${BUILD_ROOT:-$REPO}
ASAN_DIR=$BUILD_ROOT/build-asan
TSAN_DIR=$BUILD_ROOT/build-tsan
START=$(date +%s)

section() { printf '\n==== [hardening %4ss] %s ====\n' "$(($(date +%s) - START))" "$*"; }
fail() {
  printf '\nHARDENING FAILED: %s\n' "$*" >&2
  exit 1
}

command -v clang++ >/dev/null || fail "clang++ not found (apt-get install clang)"
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
# -O1 -gline-tables-only: sanitizer reports keep file:line, builds stay fast, asserts stay on.
configure() {  # configure <dir> <extra cmake args...>
  local dir=$1
  shift
  CC=clang CXX=clang++ cmake -S "$REPO" -B "$dir" "${GENERATOR[@]}" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; fail "cmake configure of $dir"; }
}

# Leak checking stays on for the tests (libtorch needs no suppressions). libgomp is not built
# with TSan; test/tsan.supp names only it.
export ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="suppressions=$REPO/test/tsan.supp:halt_on_error=1:second_deadlock_stack=1"

build_asan() {
  mkdir -p "$ASAN_DIR"
  configure "$ASAN_DIR" -DTS_SANITIZE=address,undefined -DTS_BUILD_TESTS=ON -DTS_BUILD_FUZZ=ON
  cmake --build "$ASAN_DIR" -j "$JOBS" --target ts_tests ts_fuzzers || fail "ASan+UBSan build"
}
build_tsan() {
  mkdir -p "$TSAN_DIR"
  # Only the core and test_hardening.cpp (the Concurrency and SaveFaults cases) in test_core.
  configure "$TSAN_DIR" -DTS_SANITIZE=thread -DTS_BUILD_TESTS=ON -DTS_TESTS=test_hardening \
    -DTS_BUILD_CONVERT=OFF -DTS_BUILD_DISTRIBUTED=OFF -DTS_WITH_EXECUTORCH=OFF
  cmake --build "$TSAN_DIR" -j "$JOBS" --target test_core || fail "TSan build"
}
# --build-only: the two sanitizer builds and nothing else (scripts/test.sh runs this at the lowest
# priority while the Python tests leave cores idle; the full run then finds them up to date).
if [ "${1:-}" = --build-only ]; then
  section "building the TSan and ASan+UBSan trees only"
  build_tsan
  build_asan
  section "sanitizer builds done in $(($(date +%s) - START))s"
  exit 0
fi

section "1/5 adversarial corpus is up to date"
python3 tools/gen_adversarial.py --check || fail "run python3 tools/gen_adversarial.py and commit"

section "2/5 ASan+UBSan: build (clang, -fsanitize=address,undefined, with fuzz_open)"
build_asan

section "2/5 ASan+UBSan: every C++ test"
# Each test executable runs whole, in JOBS GoogleTest shards at once: the same cases as ctest, but
# without starting an instrumented LibTorch once per case (most of the time under ASan).
for test in "$ASAN_DIR"/test/test_{core,convert,executorch,executorch_runtime}; do
  [ -x "$test" ] || continue
  pids=()
  for ((shard = 0; shard < JOBS; shard++)); do
    GTEST_TOTAL_SHARDS=$JOBS GTEST_SHARD_INDEX=$shard timeout 1200 "$test" --gtest_brief=1 \
      >"$test.shard$shard.log" 2>&1 &
    pids+=($!)
  done
  for ((shard = 0; shard < JOBS; shard++)); do
    if ! wait "${pids[$shard]}"; then
      tail -n 80 "$test.shard$shard.log"
      fail "$(basename "$test") (shard $shard of $JOBS) under ASan+UBSan; the log: $test.shard$shard.log"
    fi
  done
  echo "$(basename "$test"): $(grep -h '^\[  PASSED  \]' "$test".shard*.log | awk '{n += $4} END {print n}') passed"
done

section "3/5 TSan: build (clang, -fsanitize=thread)"
build_tsan

section "3/5 TSan: concurrency tests"
# setarch -R: clang-14's TSan cannot map its shadow under the high mmap entropy of newer kernels.
RUN_TSAN=()
if setarch "$(uname -m)" -R true 2>/dev/null; then RUN_TSAN=(setarch "$(uname -m)" -R); fi
"${RUN_TSAN[@]}" "$TSAN_DIR/test/test_core" --gtest_filter='Concurrency.*:SaveFaults.SaveOver*' ||
  fail "concurrency tests under TSan"

ARTIFACTS=$ASAN_DIR/fuzz/artifacts
mkdir -p "$ARTIFACTS"
# run_fuzzer TARGET SECONDS MAX_LEN "SEED_DIRS" WHERE_TO_ADD_A_REGRESSION [libFuzzer flags...]:
# TARGET from the seed folders (with a corpus of its own) for SECONDS; a crash fails with how to
# reproduce. libFuzzer only reads the seed folders: new inputs go to the corpus of its own.
# Leak checking stays off in the fuzzers: libFuzzer's own leak detection would flag libtorch.
run_fuzzer() {
  local target=$1 seconds=$2 max_len=$3 seeds=$4 regression=$5
  shift 5
  local corpus=$ASAN_DIR/fuzz/corpus_$target log=$ASAN_DIR/fuzz/$target.log
  mkdir -p "$corpus"
  if ! ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" "$ASAN_DIR/fuzz/$target" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 "$@" \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/" "$corpus" $seeds >"$log" 2>&1; then
    tail -n 60 "$log"
    ls -l "$ARTIFACTS"
    fail "$target found a crash; reproduce with $ASAN_DIR/fuzz/$target <artifact> (from the repository root), then add it to $regression as a regression case"
  fi
  grep -E '^(stat::|Done|#[0-9]+ +DONE)' "$log" || tail -n 5 "$log"
}

# The fuzzers run JOBS at a time, each single-threaded on a core of its own for its whole time;
# start_fuzzer takes run_fuzzer's arguments. Their reports print in order once all have finished.
FUZZERS=()
start_fuzzer() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "started $1 for $2 s"
  { (run_fuzzer "$@") >"$ASAN_DIR/fuzz/$1.out" 2>&1; echo $? >"$ASAN_DIR/fuzz/$1.status"; } &
  FUZZERS+=("$1")
}

section "4/5 libFuzzer: fuzz_open (${FUZZ_SECONDS}s), fuzz_index (${INDEX_FUZZ_SECONDS}s), fuzz_unpickle (${UNPICKLE_FUZZ_SECONDS}s), fuzz_legacy (${LEGACY_FUZZ_SECONDS}s), fuzz_ptd (${PTD_FUZZ_SECONDS}s), fuzz_dcp_metadata (${DCP_FUZZ_SECONDS}s), fuzz_quant_config (${QUANT_FUZZ_SECONDS}s), $JOBS at a time"
rm -f "$ASAN_DIR"/fuzz/*.status
start_fuzzer fuzz_open "$FUZZ_SECONDS" 65536 "test/data/adversarial fuzz/seeds" \
  tools/gen_adversarial.py -dict=fuzz/safetensors.dict
# Sharded checkpoint indexes.
start_fuzzer fuzz_index "$INDEX_FUZZ_SECONDS" 4096 test/data/adversarial_index \
  "index_cases() in tools/gen_adversarial.py"
# The converter's restricted unpickler and zip reader.
start_fuzzer fuzz_unpickle "$UNPICKLE_FUZZ_SECONDS" 65536 \
  "fuzz/seeds_pickle test/data/adversarial_convert" test/cpp/test_convert.cpp
# The legacy (non-zip) torch.save reader.
start_fuzzer fuzz_legacy "$LEGACY_FUZZ_SECONDS" 65536 \
  "fuzz/seeds_legacy test/data/adversarial_convert" \
  "legacy_convert_cases() in tools/gen_adversarial.py"
# ExecuTorch .ptd files.
start_fuzzer fuzz_ptd "$PTD_FUZZ_SECONDS" 65536 fuzz/seeds_ptd \
  "PtdBadInput in test/cpp/test_executorch.cpp (and fuzz/seeds_ptd)"
# DCP chunk coverage.
start_fuzzer fuzz_dcp_metadata "$DCP_FUZZ_SECONDS" 4096 fuzz/seeds_dcp \
  "test_coverage_is_checked_exactly in test/python/test_dcp.py (and fuzz/seeds_dcp)"
# Quantization configs and metadata.
start_fuzzer fuzz_quant_config "$QUANT_FUZZ_SECONDS" 8192 fuzz/seeds_quant \
  "the Integers/ZeroDim/Metadata tests of test/cpp/test_quant.cpp (and fuzz/seeds_quant)"
wait
section "5/5 libFuzzer: reports"
fuzz_failed=()
for target in "${FUZZERS[@]}"; do
  echo "-- $target"
  cat "$ASAN_DIR/fuzz/$target.out"
  [ "$(cat "$ASAN_DIR/fuzz/$target.status" 2>/dev/null)" = 0 ] || fuzz_failed+=("$target")
done
[ ${#fuzz_failed[@]} = 0 ] || fail "${fuzz_failed[*]}: see the reports above"

section "all hardening checks passed in $(($(date +%s) - START))s"
