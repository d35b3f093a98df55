#!/usr/bin/env bash
# Inbound delivery over message sizes (1 KiB, 64 KiB, 1 MiB) and recipients per message (1, 10):
# Postern (port-25 checks on, batch_sync on: the defaults) against Postfix accepting into its
# queue, in the same run, ROUNDS rounds each, median and spread, with Postern's p50/p99 time from
# the end of DATA to the 250 (postern_accept_seconds, read off the histogram after each run; the
# median of the rounds' values). Fewer messages for the larger sizes (MSGS_1K, MSGS_64K, MSGS_1M).
#   smtp-source -s SESS -l SIZE -m MSGS -r RCPTS -f a@example.test -t b@example.test
# Needs root (Postfix peer) and Debian's postfix package (the peer script installs it).
ROUNDS=${ROUNDS:-3}
source "$(dirname "$0")/lib/inbound.sh"
declare -A COUNT=([1024]=${MSGS_1K:-10000} [65536]=${MSGS_64K:-4000} [1048576]=${MSGS_1M:-400})
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
rows=()
for SIZE in 1024 65536 1048576; do
  for RCPTS in 1 10; do
    MSGS=${COUNT[$SIZE]}
    export SIZE RCPTS MSGS
    pn=(); pf=(); p50=(); p99=()
    for r in $(seq "$ROUNDS"); do
      pn+=("$(run_postern true true)")
      read -r a b <"$WORK/latency"; p50+=("$a"); p99+=("$b")
      pf+=("$(run_postfix)")
      echo "size $SIZE rcpts $RCPTS round $r: Postern ${pn[-1]} msgs/s (p50 $a ms, p99 $b ms), Postfix accepted ${pf[-1]} msgs/s"
    done
    rows+=("| $SIZE | $RCPTS | $MSGS | $(stats "${pn[@]}") | $(med "${p50[@]}") | $(med "${p99[@]}") | $(stats "${pf[@]}") | $(echo "scale=2; $(med "${pn[@]}") / $(med "${pf[@]}")" | bc) |")
  done
done
echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), -s $SESS, $ROUNDS rounds, median (min-max):"
echo
echo "| size (bytes) | recipients | messages | Postern msgs/s | p50 ms | p99 ms | Postfix accepted msgs/s | ratio |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
