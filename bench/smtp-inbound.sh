#!/usr/bin/env bash
# Inbound delivery throughput: Postern vs Postfix, same machine, same run.
#   smtp-source -s SESS -l SIZE -m MSGS  ->  Postern port 25 (+offset), durable delivery into INBOX
#   smtp-source -s SESS -l SIZE -m MSGS  ->  Postfix delivering into Maildir (../shared/peers/postfix.sh)
# Postern answers 250 only after the message is fsynced and committed in the mailbox, so its
# "accepted" rate is also its end-to-end delivery rate; Postfix's end-to-end figure is taken when
# its queue has drained into Maildir. Prints a Markdown table row set for BENCHMARKS.md.
# Needs root (Postfix peer) and Debian's postfix package (the peer script installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
MSGS=${MSGS:-20000}
SESS=${SESS:-20}
SIZE=${SIZE:-4096}
OFFSET=${OFFSET:-31000}
PORT=$((25 + OFFSET))
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}
export MSGS SESS SIZE

echo "== installing the Postfix peer (provides smtp-source)"
bash "$SHARED/peers/postfix.sh" setup >/dev/null

echo "== building postern (release)"
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}

echo "== Postern"
# DNS from a loopback server (never the system's resolvers), answers cached for the run;
# greylisting off (it would answer 451). The port-25 checks stay on: bench/inbound-checks.sh
# measures what they cost.
DNS_OUT=$(mktemp)
python3 bench/fake-dns.py >"$DNS_OUT" &
DNS_PID=$!
for _ in $(seq 100); do [ -s "$DNS_OUT" ] && break; sleep 0.05; done
D=$(mktemp -d /tmp/postern-bench.XXXXXX)
"$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
# benchmarks run as root: the server stays root here (a real one runs as [server] user)
[ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
# All load comes from one loopback address: lift the per-IP cap (default 20) for the benchmark only;
# smtp-source opens a new session the moment the previous one said QUIT.
sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$D/data/postern.toml"
printf '\n[dns]\nserver = "127.0.0.1:%s"\n\n[greylist]\nenabled = false\n' "$(head -1 "$DNS_OUT")" >> "$D/data/postern.toml"
echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/data" user add b@example.test --password-stdin >/dev/null
POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
PID=$!
trap 'kill $PID $DNS_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -f a@example.test -t b@example.test "127.0.0.1:$PORT"
t1=$(date +%s.%N)
postern_s=$(echo "$t1 - $t0" | bc)
postern_rate=$(echo "scale=1; $MSGS / $postern_s" | bc)
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
hwm_kb=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
kill -TERM $PID; wait $PID || true
stored=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM messages")
echo "postern: $MSGS msgs in $postern_s s = $postern_rate msgs/s; stored $stored; RSS ${rss_kb} KiB (peak ${hwm_kb} KiB)"

echo "== Postfix (same machine, same run)"
PF=$SHARED/peers/postfix.sh
bash "$PF" stop >/dev/null 2>&1 || true
bash "$PF" start >/dev/null
out=$(bash "$PF" bench)
echo "$out"
bash "$PF" stop >/dev/null
pf_accept=$(echo "$out" | sed -n 's/.* = \([0-9.]*\) msgs\/s (accepted).*/\1/p')
pf_drain_s=$(echo "$out" | sed -n 's/^queue drained after \([0-9.]*\) s.*/\1/p')
pf_drain=$(echo "scale=1; $MSGS / $pf_drain_s" | bc)

bin_size=$(stat -c %s "$BIN")
echo
echo "| run | Postern msgs/s | Postfix accepted msgs/s | Postfix delivered msgs/s | ratio (vs delivered) | ratio (vs accepted) | Postern RSS after / peak | binary |"
echo "|---|---|---|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%dT%H:%MZ) | $postern_rate | $pf_accept | $pf_drain | $(echo "scale=2; $postern_rate / $pf_drain" | bc) | $(echo "scale=2; $postern_rate / $pf_accept" | bc) | $((rss_kb / 1024)) / $((hwm_kb / 1024)) MiB | $((bin_size / 1024 / 1024)) MiB |"
rm -rf "$D"
