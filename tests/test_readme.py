"""The README and docs/ state the settings and commands the code has.

Checked against the code itself, not a list kept here: the settings table of
docs/configuration.md against the fields of ``Settings`` (each row's default parsed by the field's
own parser must give the field's default, of the field's type; choices named; the CLI flag that
overrides it named), every ``BOTRELAY_*`` name in the docs against the settings, and every
``botrelay <command> --flag`` in the docs' code against the CLI parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from botrelay.cli import build_parser
from botrelay.shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"

FIELDS = {f.metadata["env"]: f for f in dataclasses.fields(Settings) if "env" in f.metadata}


# --- the settings table -----------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    line: int
    names: list[str]
    defaults: list[str]
    meaning: str


def _cells(line: str) -> list[str]:
    # Split on the table's pipes, not on `\|` (an escaped pipe inside a cell).
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _names(cell: str) -> list[str]:
    """`BOTRELAY_CALLBACK_USERNAME` / `_PASSWORD` names two settings: the second is short."""
    names: list[str] = []
    for part in re.findall(r"`([A-Z0-9_]+)`", cell):
        if part.startswith("_") and names:
            part = names[-1].rsplit("_", 1)[0] + part
        names.append(part)
    return names


def settings_rows() -> list[Row]:
    """Rows of every table in docs/configuration.md whose first cell names a `BOTRELAY_*`."""
    rows = []
    for number, line in enumerate(CONFIGURATION.read_text().splitlines(), 1):
        if not line.startswith("| `BOTRELAY_"):
            continue
        cells = _cells(line)
        assert len(cells) >= 3, f"configuration.md:{number}: a settings row has 3 cells"
        names = _names(cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        if len(defaults) != len(names):  # one default shared by every name of the row
            defaults = defaults[:1] * len(names)
        rows.append(Row(number, names, defaults, " | ".join(cells[2:])))
    return rows


def _documented_value(text: str) -> str | None:
    """The raw env-var value a default cell states: `5` -> "5"; "unset ..." -> None."""
    if text.startswith("unset"):
        return None
    match = re.match(r"`([^`]*)`", text)
    assert match, f"a default is `value` or starts with unset, not {text!r}"
    return match.group(1)


def _choices(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    hint = typing.get_type_hints(Settings)[field.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return tuple(str(a) for a in args)
    parse = field.metadata["parse"]
    closure = getattr(parse, "__closure__", None) or ()
    for cell in closure:  # _choice("DEBUG", ...) keeps its choices in its closure
        if isinstance(cell.cell_contents, tuple) and all(
                isinstance(c, str) for c in cell.cell_contents):
            return cell.cell_contents
    return ()


def _overriding_flags() -> dict[str, set[str]]:
    """Settings field -> the command-line flags that set it (an option whose dest is the field)."""
    flags: dict[str, set[str]] = {}
    for _, parser in walk(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest in {f.name for f in FIELDS.values()}:
                flags.setdefault(action.dest, set()).update(
                    o for o in action.option_strings if o.startswith("--"))
    return flags


def test_every_setting_has_exactly_one_row() -> None:
    documented = [name for row in settings_rows() for name in row.names]
    duplicated = sorted({n for n in documented if documented.count(n) > 1})
    assert duplicated == [], "each setting has one row in docs/configuration.md"
    assert sorted(set(FIELDS) - set(documented)) == [], "settings missing from configuration.md"
    assert sorted(set(documented) - set(FIELDS)) == [], "rows for settings the code lacks"


@pytest.mark.parametrize("env", sorted(FIELDS))
def test_the_documented_default_is_the_fields_default(env: str) -> None:
    field = FIELDS[env]
    rows = [(row, d) for row in settings_rows() for n, d in zip(row.names, row.defaults,
                                                                  strict=True) if n == env]
    assert rows, f"{env} has no row in docs/configuration.md"
    row, cell = rows[0]
    raw = _documented_value(cell)
    assert field.default is not dataclasses.MISSING
    if raw is None:  # "unset": nothing, None or an empty list of hosts
        assert field.default is None or field.default in ((), ""), (
            f"configuration.md:{row.line}: {env} defaults to {field.default!r}, not unset")
        return
    # The field's own parser reads the documented text as it would read the env var, so a
    # default or a type that drifts (an int documented as 1.5, seconds as "5s") fails here.
    value = field.metadata["parse"](raw)
    assert value == field.default, f"configuration.md:{row.line}: {env} is {field.default!r}"
    assert type(value) is type(field.default), f"configuration.md:{row.line}: {env}'s type"


@pytest.mark.parametrize("env", sorted(FIELDS))
def test_the_meaning_names_the_choices_and_the_flag(env: str) -> None:
    field = FIELDS[env]
    [row] = [row for row in settings_rows() if env in row.names]
    assert len(row.meaning) >= 10, f"configuration.md:{row.line}: say what {env} does"
    missing = [c for c in _choices(field) if f"`{c}`" not in row.meaning]
    assert missing == [], f"configuration.md:{row.line}: {env} accepts {missing}"
    flags = _overriding_flags().get(field.name, set())
    unnamed = sorted(f for f in flags if f"`{f}" not in row.meaning and f"{f}`" not in row.meaning
                     and f"{f}," not in row.meaning and f"{f})" not in row.meaning)
    assert unnamed == [], f"configuration.md:{row.line}: {env} is overridden by {unnamed}"


def test_the_table_reader_sees_shared_rows() -> None:
    """A guard on the reader above: a two-name row gives both names their own default."""
    [row] = [row for row in settings_rows() if "BOTRELAY_HOST" in row.names]
    assert dict(zip(row.names, row.defaults, strict=True)) == {
        "BOTRELAY_HOST": "`0.0.0.0`", "BOTRELAY_PORT": "`8080`"}
    [row] = [row for row in settings_rows() if "BOTRELAY_CALLBACK_PASSWORD" in row.names]
    assert row.names == ["BOTRELAY_CALLBACK_USERNAME", "BOTRELAY_CALLBACK_PASSWORD"]


# --- BOTRELAY_* names anywhere in the docs ----------------------------------------------------

def _not_settings() -> set[str]:
    """Names the docs may use that are not settings: the ones tests and the compose file read
    (``BOTRELAY_TEST_AMQP_URL``, ``${BOTRELAY_APP}``), found in their sources."""
    names: set[str] = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        if path.name != "test_readme.py":
            names.update(re.findall(r"[\"'](BOTRELAY_[A-Z0-9_]+)[\"']", path.read_text()))
    names.update(re.findall(r"\$\{(BOTRELAY_[A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))
    return names


def test_every_botrelay_name_in_the_docs_exists() -> None:
    known = set(FIELDS) | _not_settings()
    unknown = []
    for path in DOCS:
        for name in re.findall(r"\bBOTRELAY_[A-Z0-9_]*", path.read_text()):
            # `BOTRELAY_SPOOL_*` names a family, one of which must exist.
            family = name.endswith("_")
            if not (any(k.startswith(name) for k in known) if family else name in known):
                unknown.append(f"{path.relative_to(ROOT)}: {name}")
    assert unknown == []


# --- commands and flags -----------------------------------------------------------------------

def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command as (("dlq", "replay"), its parser), the top one as ((), parser)."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += walk(sub, (*path, name))
    return found


COMMANDS = dict(walk(build_parser()))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _code(text: str) -> list[str]:
    """Command-line snippets: lines of fenced code blocks, and inline `code` spans."""
    snippets: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            # A comment or the next command of a pipeline is not this command's flags.
            snippets += re.split(r"\s#\s|&&|;|\s\|\s", line)
    outside = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    # A span may wrap onto the next line of its paragraph.
    snippets += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", outside)]
    return snippets


_INVOCATION = re.compile(r"(?<![\w./-])(?:\.venv/bin/|python -m )?botrelay((?: [a-z][a-z-]*)+)?"
                         r"((?: \S+)*)")


def invocations() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(where, command path, flags) for each `botrelay <command> ...` in the docs' code."""
    found = []
    for path in DOCS:
        for snippet in _code(path.read_text()):
            if re.search(r"\b(?:from|import) botrelay\b", snippet):
                continue
            for match in _INVOCATION.finditer(snippet):
                words = (match.group(1) or "").split()
                command: tuple[str, ...] = ()
                for word in words:  # the longest known command path: `dlq replay`
                    if (*command, word) in COMMANDS:
                        command = (*command, word)
                    else:
                        break
                if not words:
                    continue
                flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", match.group(0))
                found.append((f"{path.relative_to(ROOT)}: {snippet.strip()}", command, flags))
    return found


def test_the_invocation_reader_finds_commands() -> None:
    """A guard on the reader: it sees commands, subcommands and their flags."""
    found = {(c, tuple(f)) for _, c, f in invocations()}
    assert (("worker",), ("--app",)) in {(c, f[:1]) for c, f in found}
    assert any(c == ("dlq", "replay") and "--dry-run" in f for c, f in found)
    assert len({c for c, _ in found}) >= 8


def test_every_documented_command_and_flag_exists() -> None:
    wrong = []
    for where, command, flags in invocations():
        if not command:
            wrong.append(f"{where}: no such command")
            continue
        parser = COMMANDS[command]
        # `botrelay dlq list / replay / purge` names several: a flag of any of them is fine.
        allowed = _flags(parser) | {f for path, p in COMMANDS.items()
                                    if path[:len(command)] == command for f in _flags(p)}
        wrong += [f"{where}: {' '.join(command)} has no {f}" for f in flags if f not in allowed]
    assert wrong == []


def test_every_command_and_flag_is_documented() -> None:
    """Each (sub)command has a line in configuration.md's commands table naming all its flags."""
    lines = [line for line in CONFIGURATION.read_text().splitlines()
             if line.startswith("| `botrelay ")]
    missing = []
    for command, parser in COMMANDS.items():
        if not command or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        name = "botrelay " + " ".join(command)
        rows = [line for line in lines if line.startswith(f"| `{name} ") or
                line.startswith(f"| `{name}`")]
        if not rows:
            missing.append(f"{name}: no row")
            continue
        missing += [f"{name} {flag}" for flag in sorted(_flags(parser) - {"-h", "--help"})
                    if flag not in rows[0]]
    assert missing == []


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    top = [c[0] for c in COMMANDS if len(c) == 1]
    assert {"ingress", "worker", "dev", "dlq", "fake-cometchat", "drain"} <= set(top)
    assert [c for c in top if f"botrelay {c}" not in readme] == []


def test_settings_rows_live_only_in_configuration_md() -> None:
    """One table of settings: a second copy elsewhere is how rows came to be duplicated."""
    elsewhere = [f"{path.relative_to(ROOT)}:{n}" for path in DOCS if path != CONFIGURATION
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if line.lstrip().startswith("| `BOTRELAY_")]
    assert elsewhere == []


def test_every_make_target_in_the_docs_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = {(str(path.relative_to(ROOT)), t) for path in DOCS
             for snippet in _code(path.read_text())
             for t in re.findall(r"(?<![\w-])make ([a-z][a-z-]*)", snippet)}
    assert {"install", "test"} <= {t for _, t in named}
    assert sorted((p, t) for p, t in named if t not in targets) == []


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
