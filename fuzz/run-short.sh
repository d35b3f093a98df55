#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 30 s each): what CI does. Prints executions.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails this script.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q --locked cargo-fuzz
# libFuzzer needs -Z flags: the machine's stable toolchain accepts them with RUSTC_BOOTSTRAP
# (no nightly can be fetched here). No sanitizer: the project's code is safe Rust; set
# FUZZ_SANITIZER=address on a machine with nightly to check dependencies' unsafe code too.
export RUSTC_BOOTSTRAP=1
fuzz=(cargo fuzz)
san=(-s "${FUZZ_SANITIZER:-none}")
"${fuzz[@]}" build -O "${san[@]}" 2>&1 | tail -1
for t in $("${fuzz[@]}" list); do
  mkdir -p corpus/$t
  # seeds are checked in under corpus/; new finds go to a scratch copy
  work=$(mktemp -d)
  cp -r corpus/$t/. "$work"/
  out=$("${fuzz[@]}" run -O "${san[@]}" "$t" "$work" -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 2>&1) || {
    echo "$out" | tail -40; echo "fuzz target $t FAILED"; exit 1; }
  echo "$t: $(echo "$out" | grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' | tail -1)"
  rm -rf "$work"
done
