#!/usr/bin/env bash
# Long fuzzing: every target (or the ones named) for SECS seconds each (default 3600), one after
# the other, with the checked-in seeds; prints executions and coverage per target and appends
# them to fuzz/long-runs.log. New corpus entries stay in fuzz/corpus-long/ (not checked in).
#   bash bench/fuzz-long.sh 3600                 # all targets, an hour each
#   bash bench/fuzz-long.sh 600 smtp_data mime   # two targets, 10 minutes each
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-3600}; shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1   # -Z flags on the stable toolchain (see fuzz/run-short.sh)
san=(-s "${FUZZ_SANITIZER:-none}")
cargo fuzz build -O "${san[@]}" 2>&1 | tail -1
targets=${*:-$(cargo fuzz list)}
for t in $targets; do
  mkdir -p corpus-long/$t
  cp -rn corpus/$t/. corpus-long/$t/ 2>/dev/null || true
  start=$(date -u +%FT%TZ)
  out=$(cargo fuzz run -O "${san[@]}" "$t" corpus-long/$t -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40; echo "$start $t CRASH (see fuzz/artifacts/$t)" | tee -a long-runs.log; exit 1; }
  runs=$(echo "$out" | grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' | tail -1)
  cov=$(echo "$out" | grep -Eo 'cov: [0-9]+' | tail -1)
  echo "$start $t: $runs, $cov, corpus $(ls corpus-long/$t | wc -l) files" | tee -a long-runs.log
done
