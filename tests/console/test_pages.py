"""The console's HTML: what a dead letter says is shown, never run."""

from __future__ import annotations

import time

from botrelay.worker.console import pages
from botrelay.worker.dlq import DeadLetter

HOSTILE = "<script>alert('x')</script>"


def _letter(**overrides: object) -> DeadLetter:
    values: dict[str, object] = {
        "id": "app:bot:after_message:1", "trigger": "after_message", "conversation": "c1",
        "attempts": 3, "error": "RuntimeError: down", "error_kind": "transient",
        "failed_at_ms": int(time.time() * 1000) - 90_000, "queue": "p.inbound", "text": "hi",
        "app": "app", "body": b'{"a": 1}', "headers": {"x-botrelay-error": "RuntimeError"}}
    values.update(overrides)
    return DeadLetter(**values)  # type: ignore[arg-type]


def test_letter_fields_are_escaped_in_the_list_and_the_detail() -> None:
    letter = _letter(text=HOSTILE, error=HOSTILE, conversation=HOSTILE, id=f"id-{HOSTILE}",
                     body=HOSTILE.encode(), headers={"x": HOSTILE})
    for html in (pages.dead_letters([letter], HOSTILE, "", "tok"), pages.detail(letter, "tok")):
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_the_list_row_has_every_column_and_a_checkbox() -> None:
    html = pages.dead_letters([_letter()], "", "transient", "tok")
    row = html.split("<tr data-dead-letter=", 1)[1].split("</tr>", 1)[0]
    for value in ("after_message", "app", "c1", "RuntimeError: down", "transient", ">3<", "2m"):
        assert value in row
    assert "type='checkbox' name='id' value='app:bot:after_message:1'" in row
    assert "<option value='transient' selected>" in html
    assert html.count("name='csrf' value='tok'") == 1


def test_only_the_purge_confirmation_needs_the_box_ticked() -> None:
    purge = pages.preview("purge", "selected", ["a"], "", "", 1, "tok")
    replay = pages.preview("replay", "selected", ["a"], "", "", 1, "tok")
    assert "id='understood' required" in purge and "understood" not in replay
    assert "data-count='1'" in purge and "name='csrf' value='tok'" in replay


def test_charts_leave_gaps_for_samples_that_could_not_be_read() -> None:
    svg = pages.chart("reply latency", [[0.1, 0.2, None, 0.3, 0.4, None, 0.5]], ("p50",), "s")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1
    assert "p50 500 ms" in svg  # the last known value
    assert "collecting" in pages.chart("x", [[None, None]])


def test_the_overview_shows_what_an_ingress_spooled() -> None:
    from botrelay.worker.console.flow import FlowPoint
    from botrelay.worker.console.overview import Overview, Snapshot

    def view(spool: tuple[float, float, float] | None) -> str:
        point = FlowPoint(1.0, 1.0, 1.0, 0.1, 0.2, 1, 1, spool)
        return pages.overview(Overview(Snapshot(1.0, ()), None, (), (point,), ("http://x",)))

    assert "data-spool='7'" in view((7, 8192, 42)) and "oldest 42s" in view((7, 8192, 42))
    assert "data-spool" not in view(None)
