"""schemathesis against a live ingress backed by the real RabbitMQ: a fuzzer that no one here
wrote, driven by the OpenAPI document the ingress serves.

It checks that no answer is a 5xx, that every answer (status, content type, body, headers) is
one the document names, that requests valid under the document are accepted and that auth is
not ignored. Afterwards the broker holds exactly the callbacks the ingress said it queued, so no
answer that was not 2xx left anything published.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from botrelay.shared.settings import Settings
from tests.chaos.hostile import APP_ID
from tests.chaos.live import LiveIngress, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "cometchat", "schema-pass"
# Bounded: examples per operation and the whole run (it takes about a minute here).
MAX_EXAMPLES = 150
RUN_TIMEOUT = 400


def schemathesis_command() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent))
    if exe is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "schemathesis>=4.0"],
                       check=True, timeout=300)
        exe = shutil.which("st", path=str(Path(sys.executable).parent))
    assert exe is not None, "schemathesis installed but its `st` command is missing"
    return [exe]


@pytest.fixture(scope="module")
def live(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveIngress]:
    settings = Settings(
        amqp_url=amqp_url, prefix=f"t{uuid.uuid4().hex[:10]}", host="127.0.0.1",
        port=free_port(), metrics_port=free_port(), callback_username=USER,
        callback_password=PASSWORD, cometchat_app_id=APP_ID, log_format="json",
        log_level="WARNING", retry_delays=(0.2, 0.5), handler_timeout=2.0, reply_budget=2.0,
        dedup_lease=5.0,
    )
    log_path = Path(tmp_path_factory.mktemp("ingress")) / "ingress.log"
    ingress = LiveIngress(settings, log_path).start()
    yield ingress
    try:
        assert ingress.alive, "the ingress process died"
        assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]
    finally:
        ingress.stop()
        ingress.delete_topology()


def queued_total(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r'^botrelay_callbacks_total\{outcome="queued",reason=""\} (\S+)$', text,
                      re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def test_schemathesis_finds_nothing_and_only_queued_callbacks_are_published(
        live: LiveIngress, tmp_path: Path) -> None:
    report = tmp_path / "report"
    started = time.monotonic()
    run = subprocess.run(
        [*schemathesis_command(), "run", f"http://127.0.0.1:{live.port}/openapi.json",
         "--checks", "all",
         # The document is stricter than the parser on purpose (each id part bounded alone),
         # so data outside it may still be valid for the ingress: not a fault.
         "--exclude-checks", "negative_data_rejection",
         "--auth", f"{USER}:{PASSWORD}", "--max-examples", str(MAX_EXAMPLES), "--seed", "7",
         "--workers", "2", "--request-timeout", "5", "--report", "json",
         "--report-dir", str(report)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path,  # its cache too
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    print(output[-1500:], f"\nschemathesis took {time.monotonic() - started:.1f}s")
    assert live.alive
    metrics_port = live.settings.metrics_port
    assert metrics_port
    queued = queued_total(metrics_port)
    assert queued > 0, "no valid callback was generated: the run proved nothing"
    assert live.published() == queued, (live.published(), queued)
    summary = next(report.glob("*.json"), None)
    if summary is not None:
        json.loads(summary.read_text())  # a well-formed report is kept as an artifact
