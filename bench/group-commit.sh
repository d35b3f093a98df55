#!/usr/bin/env bash
# Group commit of local deliveries: Postern with [storage] batch_sync = true (the default: the
# bodies of a batch made durable by one syncfs, one SQLite transaction per batch) against
# batch_sync = false (an fsync per body and its directory, still one transaction per batch), both
# with the port-25 checks on (the default), and Postfix accepting into its queue (the durable
# like-for-like figure), in the same run on the same machine. DNS comes from a server on loopback
# (bench/fake-dns.py, 60 s TTLs: answers are cached, as for a busy MX); greylisting is off for the
# run. Each configuration runs ROUNDS times on a fresh data directory; prints median and spread.
#   smtp-source -s SESS -l SIZE -m MSGS -f a@example.test -t b@example.test
# Needs root (Postfix peer) and Debian's postfix package (the peer script installs it).
source "$(dirname "$0")/lib/inbound.sh"

# The first run after a pause is faster than the next ones on this machine (writeback of an idle
# disk), whatever is measured: one warm-up run is discarded, and the order alternates by round.
echo "warm-up (discarded): $(run_postern true true) msgs/s"
grp=(); per=(); pf=()
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then
    grp+=("$(run_postern true true)"); per+=("$(run_postern true false)")
  else
    per+=("$(run_postern true false)"); grp+=("$(run_postern true true)")
  fi
  pf+=("$(run_postfix)")
  echo "round $r: batch_sync ${grp[-1]}, fsync per body ${per[-1]}, Postfix accepted ${pf[-1]} msgs/s"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "| run | Postern batch_sync msgs/s | Postern fsync per body msgs/s | Postfix accepted msgs/s | ratio to Postfix (batch_sync) |"
echo "|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%dT%H:%MZ), -s $SESS -l $SIZE, $ROUNDS rounds × $MSGS msgs, median (min-max) | $(stats "${grp[@]}") | $(stats "${per[@]}") | $(stats "${pf[@]}") | $(echo "scale=2; $(med "${grp[@]}") / $(med "${pf[@]}")" | bc) |"
