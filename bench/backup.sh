#!/usr/bin/env bash
# What backups cost: a server holding MSGS messages of SIZE bytes (stored through port 25 by
# Postfix's smtp-source), then `postern backup create` on the idle server, the same while
# smtp-source keeps delivering (intake during the backup against intake without one), `backup
# verify`, and `backup restore` into a new directory. ROUNDS rounds; prints each figure's median
# and spread. Needs Debian's postfix package for smtp-source (the peer script installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
MSGS=${MSGS:-20000}
SIZE=${SIZE:-4096}
SESS=${SESS:-20}
ROUNDS=${ROUNDS:-3}
OFFSET=${OFFSET:-32000}
PORT=$((25 + OFFSET))
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}

command -v /usr/sbin/smtp-source >/dev/null || bash "$SHARED/peers/postfix.sh" setup >/dev/null
echo "== building postern (release)"
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}

now() { date +%s.%N; }
load() {  # $1 messages; prints msgs/s
  local t0 t1; t0=$(now)
  /usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$1" -f a@example.test -t b@example.test "127.0.0.1:$PORT"
  t1=$(now)
  echo "$1 / ($t1 - $t0)" | bc -l
}

declare -a CREATE CREATE_LOADED VERIFY RESTORE BYTES INTAKE INTAKE_BACKUP
for r in $(seq "$ROUNDS"); do
  D=$(mktemp -d /tmp/postern-bench-backup.XXXXXX)
  "$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
  # benchmarks run as root: the server stays root here (a real one runs as [server] user)
  [ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
  sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$D/data/postern.toml"
  printf '\n[inbound]\nchecks = false\n\n[greylist]\nenabled = false\n\n[delivery]\nenabled = false\n\n[alerts]\nmail = false\n' >> "$D/data/postern.toml"
  echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/data" user add b@example.test --password-stdin >/dev/null
  "$BIN" backup keygen --out "$D/backup.key" >/dev/null
  POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
  pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  load "$MSGS" >/dev/null
  t0=$(now); "$BIN" --dir "$D/data" backup create --to "$D/b1.tar.age" --key "file:$D/backup.key" >/dev/null; t1=$(now)
  CREATE+=("$(echo "$t1 - $t0" | bc -l)")
  BYTES+=("$(stat -c %s "$D/b1.tar.age")")
  INTAKE+=("$(load 4000)")
  # a backup while mail keeps coming in
  load 4000 >"$D/intake" &
  lp=$!
  t0=$(now); "$BIN" --dir "$D/data" backup create --to "$D/b2.tar.age" --key "file:$D/backup.key" >/dev/null; t1=$(now)
  wait $lp
  CREATE_LOADED+=("$(echo "$t1 - $t0" | bc -l)")
  INTAKE_BACKUP+=("$(cat "$D/intake")")
  kill -TERM $pid; wait $pid || true
  t0=$(now); "$BIN" backup verify "$D/b1.tar.age" --key "file:$D/backup.key" >/dev/null; t1=$(now)
  VERIFY+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now)
  "$BIN" backup restore "$D/b1.tar.age" --key "file:$D/backup.key" --master-key "file:$D/data/master.key" --dir "$D/restored" >/dev/null
  t1=$(now)
  RESTORE+=("$(echo "$t1 - $t0" | bc -l)")
  n=$(sqlite3 "$D/restored/postern.db" "SELECT COUNT(*) FROM messages")
  [ "$n" = "$MSGS" ] || { echo "restored $n of $MSGS messages" >&2; exit 1; }
  rm -rf "$D"
  echo "round $r: create ${CREATE[-1]} s (${BYTES[-1]} bytes), under load ${CREATE_LOADED[-1]} s, verify ${VERIFY[-1]} s, restore ${RESTORE[-1]} s; intake ${INTAKE[-1]} msgs/s, during a backup ${INTAKE_BACKUP[-1]} msgs/s"
done

stats() {  # name values...: median (min-max)
  local name=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v n="$name" '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%-34s median %.2f (%.2f-%.2f)\n", n, m, a[1], a[NR]}'
}
echo "== $MSGS messages of $SIZE bytes, $ROUNDS rounds"
stats "backup create, idle (s)" "${CREATE[@]}"
stats "backup create, under load (s)" "${CREATE_LOADED[@]}"
stats "backup verify (s)" "${VERIFY[@]}"
stats "backup restore (s)" "${RESTORE[@]}"
stats "backup size (MB)" $(for b in "${BYTES[@]}"; do echo "$b / 1000000" | bc -l; done)
stats "intake without a backup (msgs/s)" "${INTAKE[@]}"
stats "intake during a backup (msgs/s)" "${INTAKE_BACKUP[@]}"
