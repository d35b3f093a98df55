#!/usr/bin/env bash
# Memory over a long run: Postern (defaults: port-25 checks on, batch_sync on) takes MSGS messages
# from smtp-source (-s SESS -l SIZE) while its RSS is sampled every STEP seconds; prints the
# samples and the first, middle and last. A leak per message would show as a steady climb.
#   MSGS=300000 bash bench/rss-long.sh
MSGS=${MSGS:-300000}
STEP=${STEP:-5}
source "$(dirname "$0")/lib/inbound.sh"
D=$(mktemp -d "$WORK/run.XXXXXX")
"$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
[ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$D/data/postern.toml"
printf '\n[dns]\nserver = "127.0.0.1:%s"\n\n[greylist]\nenabled = false\n\n[delivery]\nenabled = false\n' "$DNS_PORT" >> "$D/data/postern.toml"
echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/data" user add b@example.test --password-stdin >/dev/null
POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
echo "idle after start: $(rss) KiB"
/usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -f a@example.test -t b@example.test "127.0.0.1:$PORT" &
src=$!
t0=$(date +%s)
samples=()
while kill -0 $src 2>/dev/null; do
  sleep "$STEP"
  n=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM messages" 2>/dev/null || echo "?")
  samples+=("$(rss)")
  echo "t=$(( $(date +%s) - t0 ))s stored=$n rss=${samples[-1]} KiB"
done
wait $src
sleep 2
echo "idle after the run: $(rss) KiB"
kill -TERM $pid; wait $pid || true
n=${#samples[@]}
echo
echo "| run | messages | RSS first sample | RSS middle | RSS last | max |"
echo "|---|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%dT%H:%MZ), -s $SESS -l $SIZE | $MSGS | ${samples[0]} KiB | ${samples[$((n / 2))]} KiB | ${samples[-1]} KiB | $(printf '%s\n' "${samples[@]}" | sort -n | tail -1) KiB |"
