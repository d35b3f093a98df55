"""The binary crate stays free of import circles: no file of crates/postern/src reaches itself
through the `crate::`/`super::` paths it uses (a circle is how a grab-bag grows back)."""
import re
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "crates" / "postern" / "src"


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def edges():
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    graph = {m: set() for m in files}
    for m, p in files.items():
        text = p.read_text()
        # test modules may use their parent freely
        text = text.split("#[cfg(test)]")[0]
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        for path in re.findall(r"\b(crate|super)::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            base, rest = path
            target = rest if base == "crate" else (f"{parent}::{rest}" if parent else rest)
            # the longest module prefix that is a file
            segs = target.split("::")
            for k in range(len(segs), 0, -1):
                cand = "::".join(segs[:k])
                if cand in files and cand != m:
                    graph[m].add(cand)
                    break
    return graph


def test_no_import_circle_in_the_binary_crate():
    graph = edges()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in graph[n]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)
    assert not cycles, " / ".join(" -> ".join(c) for c in cycles)


def test_systemd_unit_verifies():
    """contrib/systemd/postern.service passes `systemd-analyze verify` (binary path swapped for
    one that exists here), runs as its own user with only CAP_NET_BIND_SERVICE, and starts
    `postern --dir DIR serve` as the README documents."""
    import shutil
    import subprocess
    import tempfile
    import pytest
    unit = (ROOT / "contrib" / "systemd" / "postern.service").read_text()
    assert "ExecStart=/usr/local/bin/postern --dir /var/lib/postern serve" in unit
    assert "User=postern" in unit and "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/postern.service"
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/bin/postern", "/bin/true"))
        p = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
