"""Bounded resources under hostile load (a smaller run of bench/resources.py; the 10,000-connection
figures are in BENCHMARKS.md): thousands of idle connections, the per-IP cap, slowloris cut by
the line deadline, oversized DATA refused without buffering past the cap, a flood of RCPT cut
off, TLS connections that never handshake timed out while a real client logs in."""
import json
import subprocess
import sys

from conftest import BIN, ROOT


def test_hostile_load_stays_bounded():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "resources.py"), "--bin", BIN, "--conns", "3000",
                        "--data-mb", "70", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["conns_greeted"] == r["conns_open"] == 3000
    assert r["active_max_ms"] < 2000
    assert r["51st_from_one_ip"].startswith("421 4.7.0")
    assert isinstance(r["slowloris_cut_after_s"], float) and r["slowloris_cut_after_s"] <= 15
    assert r["big_data_reply"].startswith("552 5.3.4")
    # 70 MB sent against a 50 MB cap: the server holds at most about the cap
    assert r["big_data_rss_peak"] < r["rss_after_close"] + 120
    # repeating one address is not a way around the recipient cap: cut off by max_errors
    assert r["million_rcpt_sent_before_close"] < 1_000_000
    assert r["million_rcpt_last_reply"].startswith("421 4.7.0"), r["million_rcpt_last_reply"]
    assert r["flood_closed_by_server"] == 2000 and r["flood_all_closed_after_s"] < 30
    assert r["imaps_login_during_flood_ms"] < 5000
    assert r["exit"] == 0
