"""A non-editable install puts one package, ``botrelay``, into site-packages, and a user's bot
folder with its own ``worker.py``, ``shared.py`` and ``ingress.py`` runs with ``--app``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """botrelay installed from a wheel of this tree into a folder of its own (dependencies come
    from the test environment, so no download is needed)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(target), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    return target


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTRELAY_")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_only_botrelay_lands_in_site_packages(installed: Path) -> None:
    top = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {"botrelay"}  # bin/ holds the console script
    assert not (installed / "botrelay" / "examples").exists()
    assert (installed / "botrelay" / "echo_bot.py").is_file()
    for sub in ("ingress", "worker", "shared"):  # real folders, not the checkout's symlinks
        assert (installed / "botrelay" / sub).is_dir()
        assert not (installed / "botrelay" / sub).is_symlink()
        # every module of the checkout is in the install (a subpackage missing from
        # pyproject.toml's package list would be left out silently)
        here = {p.relative_to(ROOT / sub) for p in (ROOT / sub).rglob("*.py")}
        there = {p.relative_to(installed / "botrelay" / sub)
                 for p in (installed / "botrelay" / sub).rglob("*.py")}
        assert here == there


def test_the_public_api_and_the_cli_import_from_the_install(installed: Path,
                                                            tmp_path: Path) -> None:
    code = ("import botrelay; from botrelay import Bot, Message, Reply, Retry, PermanentError, "
            "BotTester; print(botrelay.__file__)")
    result = _run(installed, tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(installed))
    result = _run(installed, tmp_path, "-m", "botrelay", "--help")
    assert result.returncode == 0, result.stderr
    assert "worker" in result.stdout and "ingress" in result.stdout


def test_a_worker_without_app_refuses(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, tmp_path, "-m", "botrelay", "worker")
    assert result.returncode == 2
    assert "--app" in result.stderr
    assert "Traceback" not in result.stderr
