"""``python -m bench --smoke`` runs every scenario briefly and prints its table and JSON.

Only that it works is checked, never a timing. Missing benchmark extras (FastStream, matplotlib)
are skipped by the suite itself with a line saying so; without wrk the load comes from the
aiohttp client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_bench_smoke_prints_the_table_and_writes_json() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "scenario" in text and "contender" in text
    for scenario in ("ingress", "drain", "scaling", "ordering", "e2e 500/s", "e2e 2000/s"):
        assert f"\n{scenario} " in text, scenario
    for goal in ("ingress vs baseline (1), one quorum queue each",
                 "drain, memory dedup vs baseline (2)", "ordering=conversation vs none"):
        assert goal in text
    path = Path(next(x for x in text.splitlines() if x.startswith("results: ")).split(" ", 1)[1])
    doc = orjson.loads(path.read_bytes())
    assert doc["smoke"] is True and not doc["failures"]
    contenders = {r["contender"] for r in doc["rows"]}
    assert any(c.startswith("baseline (1)") for c in contenders)
    assert any(c.startswith("baseline (2)") for c in contenders)
    assert any(c.startswith("botrelay, Redis dedup") for c in contenders)
    if any(c.startswith("baseline (3)") for c in contenders):
        assert not doc["skipped"]
    else:
        assert "FastStream not installed" in text
    assert all(r["throughput"] > 0 for r in doc["rows"])
