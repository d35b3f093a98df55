#!/usr/bin/env python3
"""IMAP load generator (asyncio, implicit TLS): N concurrent clients, each repeating sessions of
LOGIN, SELECT INBOX, FETCH (flags of all + one full message), STORE, APPEND, LOGOUT, for a fixed
duration. Prints one JSON object: ops/s and latency percentiles per command and overall.

The same generator drives Postern and Dovecot in one run (bench/imap-vs-dovecot.sh), so the
client's own cost is the same on both sides.

    imap-load.py --port 993 --users user1:pass1,user2:pass2 --clients 20 --seconds 30
    imap-load.py --port 993 --users ... --idle 10000       # hold N sessions in IDLE, then report
    imap-load.py --port 993 --users ... --rate 100         # at most 100 sessions/s in all: the
                                                           # same load on both servers, to compare
                                                           # command latencies like for like
"""
import argparse
import asyncio
import json
import random
import ssl
import statistics
import time

MSG = (b"From: load@example.test\r\nTo: user@example.test\r\nSubject: load test message\r\n"
       b"Message-ID: <load@example.test>\r\n\r\n" + b"x" * 2000 + b"\r\n")


class Client:
    def __init__(self, reader, writer):
        self.r, self.w, self.n = reader, writer, 0

    async def cmd(self, text, literal=None):
        self.n += 1
        tag = f"t{self.n}"
        if literal is not None:
            self.w.write(f"{tag} {text} {{{len(literal)}}}\r\n".encode())
            await self.w.drain()
            line = await self.r.readline()
            if not line.startswith(b"+"):
                raise RuntimeError(f"no continuation: {line!r}")
            self.w.write(literal + b"\r\n")
        else:
            self.w.write(f"{tag} {text}\r\n".encode())
        await self.w.drain()
        while True:
            line = await self.r.readline()
            if not line:
                raise EOFError(text)
            # skip literals in responses
            if line.endswith(b"}\r\n") and b"{" in line:
                n = int(line[line.rindex(b"{") + 1:-3])
                await self.r.readexactly(n)
                continue
            if line.startswith(tag.encode() + b" "):
                if not line.startswith(tag.encode() + b" OK"):
                    raise RuntimeError(f"{text.split()[0]} failed: {line!r}")
                return


def _ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


# One context for every connection: building one per connection (loading the CA store) costs
# more than the whole IMAP session being measured.
CTX = _ctx()


def ctx():
    return CTX


async def connect(port):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx(), limit=1 << 18)
    await r.readline()
    return Client(r, w)


async def worker(port, user, pw, deadline, lat, errors, interval=0.0):
    def rec(name, t0):
        lat.setdefault(name, []).append(time.perf_counter() - t0)

    # paced: one session every `interval` seconds per client, the clients' starts spread out
    slot = time.time() + random.random() * interval
    while time.time() < deadline:
        if interval:
            await asyncio.sleep(max(0.0, slot - time.time()))
            slot += interval
            if time.time() >= deadline:
                break
        try:
            t0 = time.perf_counter()
            c = await connect(port)
            rec("CONNECT+TLS", t0)
            t0 = time.perf_counter()
            await c.cmd(f'LOGIN "{user}" "{pw}"')
            rec("LOGIN", t0)
            t0 = time.perf_counter()
            await c.cmd("SELECT INBOX")
            rec("SELECT", t0)
            t0 = time.perf_counter()
            await c.cmd("FETCH 1:* (FLAGS)")
            rec("FETCH", t0)
            t0 = time.perf_counter()
            await c.cmd(f"FETCH {random.randint(1, 20)} (BODY.PEEK[])")
            rec("FETCH", t0)
            t0 = time.perf_counter()
            await c.cmd(f"STORE {random.randint(1, 20)} FLAGS (\\Seen)")
            rec("STORE", t0)
            t0 = time.perf_counter()
            await c.cmd("APPEND INBOX", MSG)
            rec("APPEND", t0)
            t0 = time.perf_counter()
            await c.cmd("LOGOUT")
            rec("LOGOUT", t0)
            c.w.close()
        except Exception as e:  # noqa: BLE001 - a load tool counts errors and goes on
            errors.append(repr(e)[:200])
            await asyncio.sleep(0.05)


async def prepare(port, users, n):
    """Make sure each INBOX has at least n messages and at most 4n (so runs stay comparable)."""
    for user, pw in users:
        c = await connect(port)
        await c.cmd(f'LOGIN "{user}" "{pw}"')
        await c.cmd("SELECT INBOX")
        await c.cmd("UID STORE 1:* +FLAGS.SILENT (\\Deleted)")
        await c.cmd("EXPUNGE")
        for _ in range(n):
            await c.cmd("APPEND INBOX", MSG)
        await c.cmd("LOGOUT")
        c.w.close()


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else 0


async def load(args, users):
    await prepare(args.port, users, 20)
    lat, errors = {}, []
    deadline = time.time() + args.seconds
    t0 = time.time()
    interval = args.clients / args.rate if args.rate else 0.0
    await asyncio.gather(*(worker(args.port, *users[i % len(users)], deadline, lat, errors, interval)
                           for i in range(args.clients)))
    elapsed = time.time() - t0
    # IMAP commands only; the TCP+TLS set-up is reported per command but not counted as an op.
    allv = [x for k, v in lat.items() if k != "CONNECT+TLS" for x in v]
    out = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "ops": len(allv),
        "ops_per_s": round(len(allv) / elapsed, 1),
        "sessions_per_s": round(len(lat.get("CONNECT+TLS", [])) / elapsed, 1),
        "p50_ms": round(pct(allv, 0.5) * 1000, 2),
        "p99_ms": round(pct(allv, 0.99) * 1000, 2),
        "errors": len(errors),
        "first_errors": errors[:3],
        "per_command": {k: {"n": len(v), "p50_ms": round(statistics.median(v) * 1000, 2),
                            "p99_ms": round(pct(v, 0.99) * 1000, 2)} for k, v in sorted(lat.items())},
    }
    print(json.dumps(out))


async def idle(args, users):
    conns = []
    errors = 0
    sem = asyncio.Semaphore(200)

    async def one(i):
        nonlocal errors
        user, pw = users[i % len(users)]
        async with sem:
            try:
                c = await connect(args.port)
                await c.cmd(f'LOGIN "{user}" "{pw}"')
                await c.cmd("SELECT INBOX")
                c.w.write(b"i IDLE\r\n")
                await c.w.drain()
                line = await c.r.readline()
                if not line.startswith(b"+"):
                    raise RuntimeError(line)
                conns.append(c)
            except Exception:  # noqa: BLE001
                errors += 1

    t0 = time.time()
    await asyncio.gather(*(one(i) for i in range(args.idle)))
    print(json.dumps({"idle_sessions": len(conns), "errors": errors, "setup_s": round(time.time() - t0, 1)}),
          flush=True)
    # hold them until told to stop (the caller measures RSS meanwhile)
    await asyncio.sleep(args.hold)
    for c in conns:
        c.w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--users", required=True, help="user:pass,user:pass,...")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--hold", type=int, default=30)
    ap.add_argument("--rate", type=float, default=0.0, help="sessions per second in all (0: as fast as possible)")
    args = ap.parse_args()
    users = [tuple(u.split(":", 1)) for u in args.users.split(",")]
    asyncio.run(idle(args, users) if args.idle else load(args, users))


if __name__ == "__main__":
    main()
