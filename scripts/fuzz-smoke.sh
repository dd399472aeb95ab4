#!/usr/bin/env bash
# Fuzz smoke test: builds the cargo-fuzz targets in fuzz/ (AddressSanitizer, debug assertions and
# overflow checks on) and runs each one for SECONDS (default 20) over its committed corpus in
# fuzz/corpus/<target>: every corpus input is replayed first, then libFuzzer mutates. New inputs
# go to a temporary directory, never into the tree. One fuzzer process at a time.
#
# Usage: scripts/fuzz-smoke.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler; installs nothing.
# Exits non-zero if a target crashes, panics, times out on an input or fails to build; the
# input that did it is in fuzz/artifacts/<target>/ (see fuzz/README.md to replay it).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "$0: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); the stable toolchain takes them so.
export RUSTC_BOOTSTRAP=1

cargo fuzz build
mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "$0: no fuzz targets found" >&2
  exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== $t: ${seconds}s over corpus/$t ($(find "corpus/$t" -type f | wc -l) inputs)"
  # -timeout: an input that takes 10 s is a bug (a parse is microseconds). The last lines are
  # libFuzzer's summary (or the crash report).
  if cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' "$scratch/$t.log" || true
  else
    tail -n 60 "$scratch/$t.log"
    echo "== $t: FAILED (artifacts in fuzz/artifacts/$t/)" >&2
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz smoke failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz smoke passed: ${targets[*]} (${seconds}s each)"
