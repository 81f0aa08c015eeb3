"""Fixtures for the console's tests: Debian's headless Chromium (installed when missing, started
once per module), a ``botrelay console`` child process, and dead letters made through the real
pipeline (ingress -> RabbitMQ -> worker running a failing bot)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from botrelay.shared.settings import Settings
from botrelay.worker import dlq
from botrelay.worker.service import Worker
from tests.helpers import ROOT, post_all, settings_env, text_callback, wait_for
from tests.integration import failing_bot
from tests.integration.processes import free_port, wait_exit

USER, PASSWORD = "ops", "correct horse battery"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"


def _install_chromium() -> None:
    """Debian's packages, when missing; only a machine without apt may skip."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("chromium/chromedriver missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (starting it is the slow part)."""
    _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # Both paths are given, so selenium looks nothing up on the network.
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots in {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, driven from async tests: every selenium call runs in a thread so the
    in-process ingress and worker keep running while the browser waits."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def login(self, on: bool = True) -> None:
        headers = {"Authorization": AUTH} if on else {}
        await self.call(self.driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders",
                        {"headers": headers})

    async def open(self, path: str) -> None:
        await self.call(self.driver.get, self.base + path)

    async def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(await self.call(self.driver.find_elements, By.CSS_SELECTOR, selector))

    async def one(self, selector: str, timeout: float = 10.0) -> Any:
        """The one element ``selector`` finds, waiting (bounded) for a page still loading
        after a click that navigates."""
        found: list[Any] = []
        for _ in range(int(timeout / 0.1)):
            found = await self.css(selector)
            if len(found) == 1:
                return found[0]
            await asyncio.sleep(0.1)
        raise AssertionError(f"{selector}: {len(found)} elements on {self.driver.current_url}:"
                             f" {self.driver.page_source[:600]}")

    async def submit(self, selector: str, timeout: float = 15.0) -> None:
        """Click something that loads a new page, and wait until the new page is there."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        old = await self.one("html")
        await self.click(selector)
        stale = expected_conditions.staleness_of(old)

        def gone(driver: Any) -> bool:
            # Chromium answers a lookup of an element of the page being replaced either with
            # "stale element" (what staleness_of expects) or, mid-navigation, with "Node with
            # given id does not belong to the document": both mean the old page is gone.
            try:
                return bool(stale(driver))
            except WebDriverException as exc:
                if "does not belong to the document" in str(exc):
                    return True
                raise

        await self.call(WebDriverWait(self.driver, timeout).until, gone)
        await self.one("body")

    async def click(self, selector: str) -> None:
        await self.call((await self.one(selector)).click)

    async def text_of(self, selector: str) -> str:
        """The text of the one element ``selector`` finds, once the page has it."""
        return str(await self.call(lambda e: e.text, await self.one(selector)))

    async def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path


@dataclass
class Pipeline:
    settings: Settings
    ingress_url: str
    worker: Worker
    console_url: str
    letters: dict[str, str]  # text -> dead letter id
    fake: Any

    async def dead(self) -> int:
        return await dlq.dead_count(self.settings) or 0


DEAD_TEXTS = ("perm alpha order 17", "perm beta refund", "perm gamma invoice",
              "flaky delta weather")


def spawn_console(settings: Settings, extra_env: dict[str, str], args: list[str],
                  log: Path) -> subprocess.Popen[bytes]:
    env = settings_env(settings)
    env.update(extra_env)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "botrelay", "console", *args], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


async def start_console(settings: Settings, extra_env: dict[str, str], args: list[str],
                        log: Path) -> subprocess.Popen[bytes]:
    """``botrelay console`` as an operator starts it; returned once it answers HTTP."""
    port = args[args.index("--port") + 1]
    proc = spawn_console(settings, extra_env, args, log)
    stop_at = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop_at:
            if proc.poll() is not None:
                raise RuntimeError(f"console exited with {proc.returncode}: "
                                   f"{tail(log)}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/dead"):
                    return proc
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise TimeoutError("console did not answer within 30s")


async def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        await wait_exit(proc, 15)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture
async def pipeline(make_settings: Any, start_ingress: Any, fake_api: Any,
                   ingress_metrics_url: Any, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """Workers in BOTRELAY_ORDERING=none, four dead letters (three permanent, one transient)
    from callbacks the failing bot cannot handle, some answered traffic for the charts, and a
    console started with the default ordering (not the workers')."""
    failing_bot.HEALED["value"] = False
    settings = make_settings(ordering="none", max_attempts=2, retry_delays=(0.2,))
    ingress = await start_ingress(settings)
    ingress_metrics = await ingress_metrics_url(ingress)
    worker = Worker(settings, failing_bot.bot)
    await worker.start()
    metrics_port = free_port()
    await worker.serve_metrics(metrics_port, "127.0.0.1")
    console_port = free_port()
    env = {"BOTRELAY_CONSOLE_USERNAME": USER, "BOTRELAY_CONSOLE_PASSWORD": PASSWORD,
           "BOTRELAY_ORDERING": ""}  # empty: unset, so the console runs with the default
    args = ["--host", "127.0.0.1", "--port", str(console_port), "--sample-seconds", "0.5",
            "--metrics-url", ingress_metrics,
            "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics"]
    console = await start_console(settings, env, args, tmp_path / "console.log")
    try:
        docs = [text_callback(str(5000 + i), text, sender=f"customer-{i}")
                for i, text in enumerate(DEAD_TEXTS)]
        docs += [text_callback(str(6000 + i), f"hello {i}", sender=f"happy-{i % 3}")
                 for i in range(12)]
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 12, timeout=30)
        letters: dict[str, str] = {}
        for _ in range(300):
            letters = {x.text: x.id for x in await dlq.list_letters(settings)}
            if len(letters) == len(DEAD_TEXTS):
                break
            await asyncio.sleep(0.1)
        assert sorted(letters) == sorted(DEAD_TEXTS)
        await asyncio.wait_for(worker.until_idle(), 20)
        yield Pipeline(settings, ingress.url, worker, f"http://127.0.0.1:{console_port}",
                       letters, fake_api.fake)
    finally:
        await stop_process(console)
        await worker.stop()
        failing_bot.HEALED["value"] = False


@pytest.fixture
async def page(browser: Any, pipeline: Pipeline) -> AsyncIterator[Page]:
    page = Page(browser, pipeline.console_url)
    await page.login()
    yield page
    await page.login(False)
