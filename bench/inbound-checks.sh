#!/usr/bin/env bash
# What the port-25 checks cost: Postern with [inbound] checks off, the same with checks on (SPF for
# the HELO and MAIL FROM identities, iprev, DKIM/ARC verification of every message, DMARC against
# a p=reject record, own-domain protection, Authentication-Results), and Postfix accepting into its
# queue, in the same run on the same machine. DNS comes from a server on loopback
# (bench/fake-dns.py, 60 s TTLs: answers are cached, as for a busy MX); greylisting is off for the
# run. Each configuration runs ROUNDS times on a fresh data directory; prints median and spread.
#   smtp-source -s SESS -l SIZE -m MSGS -f a@example.test -t b@example.test
# Needs root (Postfix peer) and Debian's postfix package (the peer script installs it).
source "$(dirname "$0")/lib/inbound.sh"

# The first run after a pause is faster than the next ones on this machine (writeback of an idle
# disk), whatever is measured: one warm-up run is discarded, and the order alternates by round.
echo "warm-up (discarded): $(run_postern false) msgs/s"
off=(); on=(); pf=()
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then
    off+=("$(run_postern false)"); on+=("$(run_postern true)")
  else
    on+=("$(run_postern true)"); off+=("$(run_postern false)")
  fi
  pf+=("$(run_postfix)")
  echo "round $r: checks off ${off[-1]}, checks on ${on[-1]}, Postfix accepted ${pf[-1]} msgs/s"
done
m_off=$(printf '%s\n' "${off[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}')
m_on=$(printf '%s\n' "${on[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}')
echo
echo "| run | Postern checks off msgs/s | Postern checks on msgs/s | Postfix accepted msgs/s | cost of the checks |"
echo "|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%dT%H:%MZ), $ROUNDS rounds × $MSGS msgs, median (min-max) | $(stats "${off[@]}") | $(stats "${on[@]}") | $(stats "${pf[@]}") | $(echo "scale=1; 100 - 100 * $m_on / $m_off" | bc) % |"
