#!/usr/bin/env bash
# Long fuzzing: every target (or the ones named) for SECS seconds each (default 3600) with the
# checked-in seeds; prints executions, coverage and the CPU time each target really got, and
# appends them to fuzz/long-runs.log. New corpus entries stay in fuzz/corpus-long/ (not checked in).
#   bash bench/fuzz-long.sh 3600                 # all targets, an hour each, one after the other
#   JOBS=7 bash bench/fuzz-long.sh 3600          # all seven at once (an hour of wall time each;
#                                                # on 2 cores each gets about 2/7 of a CPU)
#   bash bench/fuzz-long.sh 600 smtp_data mime   # two targets, 10 minutes each
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-3600}; shift || true
jobs=${JOBS:-1}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1   # -Z flags on the stable toolchain (see fuzz/run-short.sh)
san=(-s "${FUZZ_SANITIZER:-none}")
cargo fuzz build -O "${san[@]}" 2>&1 | tail -1
targets=${*:-$(cargo fuzz list)}
mkdir -p long-logs

one() {
  local t=$1 start out rc=0
  mkdir -p corpus-long/$t
  cp -rn corpus/$t/. corpus-long/$t/ 2>/dev/null || true
  start=$(date -u +%FT%TZ)
  # /usr/bin/time reports the CPU seconds the fuzzer process tree actually used
  /usr/bin/time -f 'cpu: %U user + %S sys seconds, max RSS %M KiB' -o long-logs/$t.time \
    cargo fuzz run -O "${san[@]}" "$t" corpus-long/$t -- -max_total_time="$secs" -max_len=65536 \
      -rss_limit_mb=2048 -print_final_stats=1 >long-logs/$t.log 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    tail -40 long-logs/$t.log
    echo "$start $t CRASH (see fuzz/artifacts/$t, fuzz/long-logs/$t.log)" | tee -a long-runs.log
    touch long-logs/FAILED
    return 1
  fi
  local runs cov cpu
  runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' long-logs/$t.log | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' long-logs/$t.log | tail -1)
  cpu=$(grep -E '^cpu:' long-logs/$t.time | tail -1)
  echo "$start $t: $runs, $cov, corpus $(ls corpus-long/$t | wc -l) files, $cpu, $jobs at once on $(nproc) cores" \
    | tee -a long-runs.log
}

rm -f long-logs/FAILED
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  one "$t" &
done
wait
[ ! -e long-logs/FAILED ]
