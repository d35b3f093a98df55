#!/usr/bin/env python3
"""Bounded resources under hostile load, measured (issue: robustness). Starts a Postern on
127.0.0.1 high ports and reports its RSS and behaviour with:
  1. 10,000 idle connections (SMTP, IMAP, POP3) from 200 loopback addresses, 50 each;
  2. an active client sending mail meanwhile (latency), while a tenth of them trickle a byte a second;
  3. the per-IP cap (a 51st connection from one address);
  4. a slowloris client (one byte a second);
  5. 1 GB of DATA against a 50 MB limit (--data-mb);
  6. a million pipelined RCPT commands;
  7. endless lines (SMTP, IMAP, POP3) and an endless IMAP literal (before and after login),
     1 GB each, sent as fast as the server reads;
  8. 2,000 TLS connections that never send a ClientHello, while a real IMAPS login is timed;
  9. a second wave of the same idle connections (does the RSS grow again?).
Usage: python3 bench/resources.py [--bin target/release/postern] [--conns 10000]
"""
import argparse
import atexit
import os
import random
import resource
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PW = "Resource-Bench-Pass-9!x"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cli(binary, d, *args, stdin=None):
    return subprocess.run([binary, "--dir", str(d), *args], input=stdin, capture_output=True, text=True,
                          check=True)


def free_offset():
    """A port offset for which every listener's port (+offset) is free on 127.0.0.1, below Linux's
    ephemeral range (32768-60999), where outgoing connections of the machine would take them."""
    for _ in range(500):
        off = random.randrange(20000, 32768 - 8080)
        ok = True
        for base in (25, 587, 465, 143, 993, 110, 995, 8080):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", base + off))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            return off
    raise SystemExit("no free port offset")


def connect_from(ip, port, timeout=10):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((ip, 0))
    s.connect(("127.0.0.1", port))
    return s


def stream_until_closed(sock, prefix, mb, pid, piece=b"a" * 1_000_000, suffix=b"", until=None):
    """Sends `prefix`, then `piece` (1 MB) `mb` times as fast as the peer reads, then `suffix`; a
    reader thread keeps the replies meanwhile (and stops early once `until` arrives). Returns (MB
    sent before the server cut the session or the end, last reply line, peak server RSS)."""
    replies = []
    seen = threading.Event()

    def drain():
        try:
            while True:
                r = sock.recv(65536)
                if not r:
                    return
                replies.append(r[-300:])
                if until and until in b"".join(replies[-2:]):
                    return
        except OSError:
            return
        finally:
            seen.set()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sent, peak = 0, 0.0
    sock.settimeout(20)
    try:
        sock.sendall(prefix)
        for _ in range(mb):
            if seen.is_set():
                break
            sock.sendall(piece)
            sent += 1
            if sent % 10 == 0:
                peak = max(peak, rss_mib(pid))
        if not seen.is_set():
            sock.sendall(suffix)
    except OSError:
        pass
    peak = max(peak, rss_mib(pid))
    reader.join(timeout=20)
    last = b"".join(replies).decode(errors="replace").strip().splitlines()
    sock.close()
    # each of the last two lines cut on its own: a long greeting (the capability list) must not
    # push the final reply out of what the caller sees
    return sent, (" | ".join(l[:150] for l in last[-2:]) if last else "closed, no reply"), peak


def idle_wave(n, ports):
    """Opens n connections, 50 per source address, over the ports in turn; returns them and how
    many got their greeting."""
    socks = [connect_from(f"127.{1 + (i // 50) // 250}.{(i // 50) % 250 + 1}.1", ports[i % 3]) for i in range(n)]
    greeted = 0
    for s in socks:
        try:
            if s.recv(64):
                greeted += 1
        except OSError:
            pass
    return socks, greeted


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "postern"))
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--data-mb", type=int, default=1000, help="DATA sent against the 50 MB limit")
    ap.add_argument("--endless-mb", type=int, default=1000, help="size of each endless line or literal")
    ap.add_argument("--json", action="store_true", help="print one JSON object (for the test suite)")
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="postern-res-"))
    d = tmp / "data"
    off = free_offset()
    cli(a.bin, d, "init", "--dir", str(d), "--domain", "example.test", "--listen-ip", "127.0.0.1",
        "--port-offset", str(off))
    cfg = d / "postern.toml"
    text = cfg.read_text().replace(
        "[smtp]\n", "[smtp]\nmax_connections = 12000\nmax_connections_per_ip = 50\ncommand_timeout_secs = 10\nidle_timeout_secs = 10\n"
    ).replace("[imap]\n", "[imap]\nmax_connections = 12000\nmax_connections_per_ip = 50\n")
    text += "\n[delivery]\nenabled = false\n"
    if os.geteuid() == 0:
        # benchmarks run as root: the server stays root here (a real one runs as [server] user)
        text = text.replace("[server]\n", "[server]\nuser = \"root\"\n", 1)
    # Port-25 checks stay on (their memory counts too), asking a DNS server on loopback (never the
    # system's resolvers); greylisting would only answer 451 to the load.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from dnsfake import FakeDns
    dns = FakeDns().start()
    text += f"\n[dns]\nserver = \"127.0.0.1:{dns.port}\"\n\n[greylist]\nenabled = false\n"
    cfg.write_text(text)
    cli(a.bin, d, "user", "add", "rcpt@example.test", "--password-stdin", stdin=PW + "\n")
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([a.bin, "--dir", str(d), "serve"], stdout=log, stderr=subprocess.STDOUT)
    # a phase that fails must not leave the server (or the DNS server) running
    atexit.register(lambda: proc.poll() is None and proc.kill())
    atexit.register(dns.stop)
    smtp, imap, pop3, imaps = 25 + off, 143 + off, 110 + off, 993 + off
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", imaps), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the server did not start: " + (tmp / "server.log").read_text()[-2000:])
            time.sleep(0.1)
    time.sleep(0.5)
    pid = proc.pid
    out = {}
    phase_t = time.time()

    def phase(name):
        nonlocal_t = time.time()
        out[f"t_{name}"] = round(nonlocal_t - phase_t_box[0], 1)
        phase_t_box[0] = nonlocal_t
    phase_t_box = [phase_t]
    out["rss_idle_server"] = rss_mib(pid)

    # 1. 10,000 idle connections, 50 per source address
    t0 = time.time()
    socks, greeted = idle_wave(a.conns, [smtp, imap, pop3])
    out["conns_open"] = len(socks)
    out["conns_greeted"] = greeted
    out["open_secs"] = time.time() - t0
    time.sleep(1)
    out["rss_10k"] = rss_mib(pid)
    out["kib_per_idle_conn"] = round((out["rss_10k"] - out["rss_idle_server"]) * 1024 / max(len(socks), 1), 1)

    phase("open")
    # 2. an active client meanwhile, while every tenth connection turns slow (a byte a second)
    slow_stop = threading.Event()
    slow = socks[1::10]

    def trickle():
        while not slow_stop.is_set():
            for s in slow:
                try:
                    s.send(b"N")
                except OSError:
                    pass
            slow_stop.wait(1.0)
    slow_thread = threading.Thread(target=trickle, daemon=True)
    slow_thread.start()
    out["slow_clients"] = len(slow)
    lat = []
    for i in range(20):
        t = time.time()
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10, source_address=("127.250.0.1", 0)) as c:
            c.sendmail("x@remote.test", ["rcpt@example.test"], f"Subject: {i}\r\n\r\nhello\r\n")
        lat.append((time.time() - t) * 1000)
    lat.sort()
    out["active_p50_ms"] = lat[len(lat) // 2]
    out["active_max_ms"] = lat[-1]
    time.sleep(max(0.0, 3 - (time.time() - phase_t_box[0])))
    out["rss_mixed"] = rss_mib(pid)
    slow_stop.set()
    slow_thread.join()

    phase("active")
    # 3. per-IP cap: 50 SMTP connections from one address, then a 51st
    held = [connect_from("127.249.0.1", smtp) for _ in range(50)]
    for h in held:
        h.recv(200)
    extra = connect_from("127.249.0.1", smtp)
    try:
        data = extra.recv(200)
    except OSError:
        data = b""
    out["51st_from_one_ip"] = data.decode(errors="replace").strip()[:60] or "closed"
    extra.close()
    for h in held:
        h.close()

    phase("cap")
    # 4. slowloris: one byte a second is cut off by the command deadline
    sl = connect_from("127.251.0.1", smtp, timeout=60)
    sl.recv(200)
    t = time.time()
    cut = None
    for ch in b"EHLO slowly.example.test.and.a.long.tail.of.bytes":
        try:
            sl.send(bytes([ch]))
            sl.settimeout(1.0)
            r = sl.recv(200)
            if r == b"" or r.startswith(b"421"):
                cut = time.time() - t
                break
        except socket.timeout:
            continue
        except OSError:
            cut = time.time() - t
            break
    out["slowloris_cut_after_s"] = round(cut, 1) if cut else "not cut"
    sl.close()

    phase("slowloris")
    for s in socks:
        s.close()
    socks.clear()
    time.sleep(2)
    out["rss_after_close"] = rss_mib(pid)

    phase("close")
    # 5. DATA (1 GB by default) against the 50 MB limit
    big = connect_from("127.252.0.1", smtp, timeout=60)
    f = big.makefile("rwb")
    f.readline()
    for cmd in (b"EHLO big.example\r\n", b"MAIL FROM:<x@remote.test>\r\n", b"RCPT TO:<rcpt@example.test>\r\n",
                b"DATA\r\n"):
        f.write(cmd)
        f.flush()
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                break
    sent, reply, peak = stream_until_closed(big, b"", a.data_mb, pid, piece=(b"x" * 998 + b"\r\n") * 1000,
                                            suffix=b".\r\n", until=b"552 ")
    out["big_data_sent_mb"] = sent
    out["big_data_reply"] = reply
    out["big_data_rss_peak"] = peak
    phase("data")
    # 6. a million pipelined RCPT commands
    m = connect_from("127.253.0.1", smtp, timeout=30)
    m.recv(200)
    m.sendall(b"EHLO many.example\r\nMAIL FROM:<x@remote.test>\r\n")
    replies = []

    def drain():  # read the replies, so that only the server's own limits end this
        try:
            while True:
                r = m.recv(65536)
                if not r:
                    return
                replies.append(r[-200:])
        except OSError:
            return
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sent_rcpt = 0
    try:
        batch = b"RCPT TO:<rcpt@example.test>\r\n" * 10000
        for _ in range(100):
            m.sendall(batch)
            sent_rcpt += 10000
    except OSError:
        pass
    reader.join(timeout=30)
    out["million_rcpt_sent_before_close"] = sent_rcpt
    out["million_rcpt_last_reply"] = (replies[-1].decode(errors="replace").strip().splitlines() or [""])[-1][:60] if replies else ""
    out["million_rcpt_rss"] = rss_mib(pid)
    m.close()

    phase("rcpt")
    # 7. endless lines and literals: each cut off without buffering, whatever the client pushes
    s = connect_from("127.248.0.1", smtp, timeout=20)
    s.recv(200)
    out["endless_smtp_line"] = stream_until_closed(s, b"EHLO ", a.endless_mb, pid)
    s = connect_from("127.248.0.2", imap, timeout=20)
    s.recv(200)
    out["endless_imap_line"] = stream_until_closed(s, b"a1 NOOP ", a.endless_mb, pid)
    s = connect_from("127.248.0.3", pop3, timeout=20)
    s.recv(200)
    out["endless_pop3_line"] = stream_until_closed(s, b"USER ", a.endless_mb, pid)
    lit = str(a.endless_mb * 1_000_000).encode()
    s = connect_from("127.248.0.4", imap, timeout=20)
    s.recv(200)
    out["endless_imap_literal_prelogin"] = stream_until_closed(s, b"a1 LOGIN {" + lit + b"+}\r\n", a.endless_mb, pid)
    ctx0 = ssl.create_default_context()
    ctx0.check_hostname = False
    ctx0.verify_mode = ssl.CERT_NONE
    raw = connect_from("127.248.0.5", imaps, timeout=20)
    t = ctx0.wrap_socket(raw)
    t.recv(300)
    t.sendall(f'a1 LOGIN "rcpt@example.test" "{PW}"\r\n'.encode())
    buf = b""
    while b"a1 " not in buf:
        buf += t.recv(4096)
    out["endless_imap_literal_append"] = stream_until_closed(t, b"a2 APPEND INBOX {" + lit + b"+}\r\n", a.endless_mb, pid)

    phase("endless")
    # 8. TLS handshake flood: 2,000 connections to 993 that never say hello
    flood = []
    for i in range(2000):
        flood.append(connect_from(f"127.254.{i // 50 % 250 + 1}.1", imaps))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import imaplib
    t = time.time()
    im = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=ctx, timeout=30)
    im.login("rcpt@example.test", PW)
    im.logout()
    out["imaps_login_during_flood_ms"] = (time.time() - t) * 1000
    t = time.time()
    closed = 0
    for s in flood:
        s.settimeout(max(0.1, 40 - (time.time() - t)))
        try:
            if s.recv(10) == b"":
                closed += 1
        except OSError:
            closed += 1
    out["flood_closed_by_server"] = closed
    out["flood_all_closed_after_s"] = round(time.time() - t, 1)
    for s in flood:
        s.close()
    phase("flood")
    out["rss_before_second_wave"] = rss_mib(pid)
    # 9. the same idle connections again: freed memory is reused, not added to
    socks, greeted = idle_wave(a.conns, [smtp, imap, pop3])
    out["second_wave_greeted"] = greeted
    time.sleep(1)
    out["rss_second_wave"] = rss_mib(pid)
    for s in socks:
        s.close()
    time.sleep(2)
    phase("second_wave")
    out["rss_end"] = rss_mib(pid)
    out["rss_peak_hwm"] = hwm_mib(pid)
    proc.send_signal(signal.SIGTERM)
    out["exit"] = proc.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        import json
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:32} {round(v, 1) if isinstance(v, float) else v}")


if __name__ == "__main__":
    main()
