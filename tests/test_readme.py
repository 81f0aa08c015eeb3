"""The README documents every setting and command the code has."""

from __future__ import annotations

from pathlib import Path

from botrelay.cli import build_parser
from botrelay.shared.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [env for env in Settings().env_names().values() if f"`{env}" not in README]
    # The two callback credentials share one row: `BOTRELAY_CALLBACK_USERNAME` / `_PASSWORD`.
    missing = [m for m in missing if m != "BOTRELAY_CALLBACK_PASSWORD"]
    assert missing == []


def test_every_command_is_in_the_readme() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = list(sub.choices)  # type: ignore[union-attr]
    assert {"ingress", "worker", "dev", "dlq", "fake-cometchat", "drain"} <= set(commands)
    assert [c for c in commands if f"botrelay {c}" not in README] == []
