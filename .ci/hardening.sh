#!/usr/bin/env bash
# Hardening checks (issue 5), run by .ci/run after the normal tests. Needs clang (Debian's clang-14
# has libFuzzer and the sanitizer runtimes). On 2 cores it takes about 10-15 minutes.
#
#   1. the adversarial corpus matches its generator (tools/gen_adversarial.py --check)
#   2. ASan+UBSan: the whole C++ test suite, built with clang (the fuzz target in the same tree)
#   3. TSan: the concurrency tests
#   4. libFuzzer: fuzz_open for FUZZ_SECONDS (default 60) from fuzz/seeds, fuzz_index (sharded
#      checkpoint indexes) for INDEX_FUZZ_SECONDS (default 30) from fuzz/index_seeds
#
# Environment: FUZZ_SECONDS, JOBS (default 2), BUILD_ROOT (default: the repository; build trees
# go to $BUILD_ROOT/build-asan and $BUILD_ROOT/build-tsan). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
INDEX_FUZZ_SECONDS=${INDEX_FUZZ_SECONDS:-30}
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

section "1/4 adversarial corpus is up to date"
python3 tools/gen_adversarial.py --check || fail "run python3 tools/gen_adversarial.py and commit"

section "2/4 ASan+UBSan: build (clang, -fsanitize=address,undefined, with fuzz_open)"
mkdir -p "$ASAN_DIR"
configure "$ASAN_DIR" -DTS_SANITIZE=address,undefined -DTS_BUILD_TESTS=ON -DTS_BUILD_FUZZ=ON
cmake --build "$ASAN_DIR" -j "$JOBS" || fail "ASan+UBSan build"

section "2/4 ASan+UBSan: ctest (every C++ test)"
(cd "$ASAN_DIR" && ctest --output-on-failure -j "$JOBS" --timeout 600) || fail "tests under ASan+UBSan"

section "3/4 TSan: build (clang, -fsanitize=thread)"
mkdir -p "$TSAN_DIR"
configure "$TSAN_DIR" -DTS_SANITIZE=thread -DTS_BUILD_TESTS=ON
cmake --build "$TSAN_DIR" -j "$JOBS" --target test_hardening || fail "TSan build"

section "3/4 TSan: concurrency tests"
# setarch -R: clang-14's TSan cannot map its shadow under the high mmap entropy of newer kernels.
RUN_TSAN=()
if setarch "$(uname -m)" -R true 2>/dev/null; then RUN_TSAN=(setarch "$(uname -m)" -R); fi
"${RUN_TSAN[@]}" "$TSAN_DIR/test/test_hardening" --gtest_filter='Concurrency.*:SaveFaults.SaveOver*' ||
  fail "concurrency tests under TSan"

section "4/4 libFuzzer: fuzz_open for ${FUZZ_SECONDS}s"
CORPUS=$ASAN_DIR/fuzz/corpus
ARTIFACTS=$ASAN_DIR/fuzz/artifacts
mkdir -p "$CORPUS" "$ARTIFACTS"
FUZZ_LOG=$ASAN_DIR/fuzz/fuzz.log
# Leak checking stays off in the fuzzer: libFuzzer's own leak detection would flag libtorch.
if ! ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" "$ASAN_DIR/fuzz/fuzz_open" \
  -max_total_time="$FUZZ_SECONDS" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -dict=fuzz/safetensors.dict \
  -print_final_stats=1 -artifact_prefix="$ARTIFACTS/" "$CORPUS" fuzz/seeds >"$FUZZ_LOG" 2>&1; then
  tail -n 60 "$FUZZ_LOG"
  ls -l "$ARTIFACTS"
  fail "fuzz_open found a crash; reproduce with $ASAN_DIR/fuzz/fuzz_open <artifact>, then add it to tools/gen_adversarial.py as a regression case"
fi
grep -E '^(stat::|Done|#[0-9]+ +DONE)' "$FUZZ_LOG" || tail -n 5 "$FUZZ_LOG"

section "4/4 libFuzzer: fuzz_index (sharded checkpoint indexes) for ${INDEX_FUZZ_SECONDS}s"
INDEX_CORPUS=$ASAN_DIR/fuzz/index_corpus
mkdir -p "$INDEX_CORPUS"
FUZZ_LOG=$ASAN_DIR/fuzz/fuzz_index.log
if ! ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" "$ASAN_DIR/fuzz/fuzz_index" \
  -max_total_time="$INDEX_FUZZ_SECONDS" -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="$ARTIFACTS/" "$INDEX_CORPUS" fuzz/index_seeds >"$FUZZ_LOG" 2>&1; then
  tail -n 60 "$FUZZ_LOG"
  fail "fuzz_index found a crash; reproduce with $ASAN_DIR/fuzz/fuzz_index <artifact> (from the repository root), then add it to index_cases() in tools/gen_adversarial.py"
fi
grep -E '^(stat::|Done|#[0-9]+ +DONE)' "$FUZZ_LOG" || tail -n 5 "$FUZZ_LOG"

section "all hardening checks passed in $(($(date +%s) - START))s"
