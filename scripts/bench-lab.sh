#!/usr/bin/env bash
# Wall time of `wgkeep lab` (release build, keeper both) for 1 h and 24 h of virtual time.
# Usage: scripts/bench-lab.sh [RUNS]   (default 10 runs per setting; prints min / median / max ms)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo build --release --quiet -p wgkeep-agent
bin=target/release/wgkeep
for duration in 1h 24h; do
  for profile in routeros linux; do
    times=()
    for _ in $(seq "$runs"); do
      start=$(date +%s%N)
      "$bin" lab --profile "$profile" --duration "$duration" --keeper both >/dev/null
      end=$(date +%s%N)
      times+=($(( (end - start) / 1000000 )))
    done
    sorted=($(printf '%s\n' "${times[@]}" | sort -n))
    echo "lab --profile $profile --duration $duration --keeper both: min ${sorted[0]} ms, median ${sorted[$((runs / 2))]} ms, max ${sorted[$((runs - 1))]} ms ($runs runs)"
  done
done
