#!/usr/bin/env bash
# Legitimate login latency alone and under a hydra attack (16 tasks, from another address), for
# Postern (default [defence]) and Dovecot 2.3 (its per-IP auth penalty), same machine, same run.
# Also: argon2 verifications Postern spent on the attacker, from its audit log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
SECS=${SECS:-30}
OFFSET=${OFFSET:-33000}
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}
command -v hydra >/dev/null || apt-get install -y -qq hydra >/dev/null
bash "$SHARED/peers/dovecot.sh" setup >/dev/null
bash "$SHARED/peers/dovecot.sh" stop >/dev/null 2>&1 || true
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}
D=$(mktemp -d /tmp/postern-defbench.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; bash "$SHARED/peers/dovecot.sh" stop >/dev/null 2>&1 || true; rm -rf "$D"' EXIT
"$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
# benchmarks run as root: the server stays root here (a real one runs as [server] user)
[ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
REAL='Quasar#Lantern-Orbit-2026'
echo "$REAL" | "$BIN" --dir "$D/data" user add real@example.test --password-stdin >/dev/null
echo 'Harbor#Quantum-Zephyr-77' | "$BIN" --dir "$D/data" user add victim@example.test --password-stdin >/dev/null
for i in $(seq 2000); do echo "Guess-$i-Password!"; done > "$D/words"
POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
PID=$!
PORT=$((993 + OFFSET))
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done

lat() { python3 bench/login-latency.py --port "$1" --user "$2" --password "$3" --seconds "$SECS"; }
attack() { # port user
  timeout "$SECS" hydra -l "$2" -P "$D/words" -S -s "$1" -t 16 -w 5 -W 1 -I 127.0.0.1 imap </dev/null >/dev/null 2>&1 || true
}

echo "== Postern: alone"
p_alone=$(lat $PORT real@example.test "$REAL")
echo "$p_alone"
echo "== Postern: under hydra -t 16 from 127.0.0.1"
t0=$(date +%s)
attack $PORT victim@example.test &
APID=$!
p_attack=$(lat $PORT real@example.test "$REAL")
wait $APID
sleep 1
verified=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM audit_log WHERE ip='127.0.0.1' AND reason IN ('bad_password','unknown_user')")
refused=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM audit_log WHERE ip='127.0.0.1' AND reason IN ('banned','locked')")
echo "$p_attack; attacker: $verified passwords verified (argon2), $refused refused without hashing"
kill $PID; wait $PID || true; PID=

echo "== Dovecot: alone"
bash "$SHARED/peers/dovecot.sh" start >/dev/null
d_alone=$(lat 10993 user1 pass1)
echo "$d_alone"
echo "== Dovecot: under hydra -t 16 from 127.0.0.1"
attack 10993 user2 &
APID=$!
d_attack=$(lat 10993 user1 pass1)
wait $APID
echo "$d_attack"
bash "$SHARED/peers/dovecot.sh" stop >/dev/null

python3 - "$p_alone" "$p_attack" "$d_alone" "$d_attack" "$verified" "$refused" "$SECS" <<'PY'
import json, sys, datetime
pa, pt, da, dt = (json.loads(x) for x in sys.argv[1:5])
ver, ref, secs = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
now = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%MZ")
print()
print("| run | server | alone p50 / p99 ms | under attack p50 / p99 ms | real-user failures under attack | argon2 on attacker |")
print("|---|---|---|---|---|---|")
print(f"| {now} | Postern | {pa['p50_ms']} / {pa['p99_ms']} | {pt['p50_ms']} / {pt['p99_ms']} | {pt['failures']} of {pt['logins']+pt['failures']} | {ver} in {secs:.0f} s ({ver/secs:.2f}/s); {ref} attempts refused unhashed |")
print(f"| {now} | Dovecot {{PLAIN}} | {da['p50_ms']} / {da['p99_ms']} | {dt['p50_ms']} / {dt['p99_ms']} | {dt['failures']} of {dt['logins']+dt['failures']} | n/a |")
PY
