"""The operator's console in headless Chromium, against dead letters the real pipeline made."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import aiohttp
import pytest

from botrelay.shared import topology
from tests.console.conftest import AUTH, DEAD_TEXTS, Page, Pipeline
from tests.helpers import post_all, reply_counts, text_callback, wait_for
from tests.integration import failing_bot

# The first test's setup may install Chromium with apt-get (minutes on a fresh machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def _rows(page: Page) -> list[str]:
    return [str(await page.call(r.get_attribute, "data-dead-letter"))
            for r in await page.css("tr[data-dead-letter]")]


async def test_without_credentials_401_and_a_forged_post_changes_nothing(
        page: Page, pipeline: Pipeline) -> None:
    await page.login(False)
    await page.open("/dead")
    # Chromium answers a 401 with its own credentials prompt: the console showed nothing.
    assert await page.css("h1") == [] and await page.css("tr[data-dead-letter]") == []
    await page.shot("unauthorized")
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/dead"):
            async with session.get(pipeline.console_url + path) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Basic")
        # Credentials but no token (what a cross-site form would carry): refused, nothing moved.
        for form in ({"op": "purge-matching"}, {"op": "purge-matching", "csrf": "forged"}):
            async with session.post(pipeline.console_url + "/dead/apply", data=form,
                                    headers={"Authorization": AUTH}) as resp:
                assert resp.status == 403
                assert "CSRF" in (await resp.json())["detail"]
        # The real token, but from another site's page; or without the purge confirmation.
        async with session.get(pipeline.console_url + "/dead",
                               headers={"Authorization": AUTH}) as resp:
            token = re.findall(r"name='csrf' value='([0-9a-f]+)'", await resp.text())[0]
        form = {"op": "purge-matching", "csrf": token, "understood": "on"}
        async with session.post(pipeline.console_url + "/dead/apply", data=form, headers={
                "Authorization": AUTH, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403 and "cross-origin" in (await resp.json())["detail"]
        del form["understood"]
        async with session.post(pipeline.console_url + "/dead/apply", data=form,
                                headers={"Authorization": AUTH}) as resp:
            assert resp.status == 400 and "understood" in (await resp.json())["detail"]

    # The same from the logged-in browser: a form without the token, built on the page.
    await page.login()
    await page.open("/dead")
    await page.call(page.driver.execute_script, """
        const f = document.createElement('form');
        f.method = 'post'; f.action = '/dead/apply';
        for (const [k, v] of [['op', 'purge-matching'], ['q', ''], ['kind', '']]) {
          const i = document.createElement('input'); i.type = 'hidden'; i.name = k;
          i.value = v; f.appendChild(i);
        }
        document.body.appendChild(f); f.submit();""")
    assert await wait_for(lambda: "CSRF" in page.driver.page_source, timeout=10)
    await page.shot("forged-post")
    assert await pipeline.dead() == len(DEAD_TEXTS)
    await page.open("/dead")
    assert len(await _rows(page)) == len(DEAD_TEXTS)


async def test_overview_list_search_kind_filter_and_detail(page: Page,
                                                           pipeline: Pipeline) -> None:
    # Traffic over a few samples (one every 0.5 s), for the charts.
    for i in range(4):
        docs = [text_callback(str(7000 + 10 * i + j), f"more {i} {j}") for j in range(5)]
        assert set(await post_all(f"{pipeline.ingress_url}/callback", docs)) == {200}
        await asyncio.sleep(0.5)
    assert await wait_for(lambda: len(pipeline.fake.replies) >= 12 + 20, timeout=20)
    await asyncio.sleep(0.6)
    await page.open("/")
    count = await page.one("[data-dead-count]")
    assert await page.call(count.get_attribute, "data-dead-count") == str(len(DEAD_TEXTS))
    inbound = await page.one(f"tr[data-queue='{topology.inbound_queue(pipeline.settings.prefix)}']")
    assert (await page.call(lambda: inbound.text)).split()[-1] == "1"  # the worker consumes
    flow = await page.one("#flow")
    assert await page.call(flow.get_attribute, "data-reached") == "2/2"
    assert await page.css("figure[data-chart='reply latency'] svg polyline")
    await page.shot("overview")

    await page.open("/dead")
    assert sorted(await _rows(page)) == sorted(pipeline.letters.values())
    table = await page.text_of("table")
    for text in DEAD_TEXTS:
        assert text in table
    assert "PermanentError" in table and "RuntimeError" in table
    assert "after_message" in table and "2248348660ad9bd4" in table
    await page.shot("dead-letters")

    # Search by text, then by conversation.
    box = await page.one("#filter input[name=q]")
    await page.call(box.send_keys, "BETA")
    await page.submit("#filter button")
    assert await _rows(page) == [pipeline.letters["perm beta refund"]]
    await page.shot("dead-letters-search")
    await page.open("/dead?q=customer-2")
    assert await _rows(page) == [pipeline.letters["perm gamma invoice"]]

    # The kind filter, chosen in the select.
    await page.open("/dead")
    from selenium.webdriver.support.ui import Select

    kind = Select(await page.one("#filter select[name=kind]"))
    await page.call(kind.select_by_value, "transient")
    await page.submit("#filter button")
    assert await _rows(page) == [pipeline.letters["flaky delta weather"]]
    row = await page.text_of("tr[data-dead-letter]")
    assert "transient" in row and " 2 " in f" {row} "  # two attempts before it died
    await page.shot("dead-letters-transient")
    await page.open("/dead?kind=permanent")
    assert len(await _rows(page)) == 3

    # The detail view: payload and headers.
    await page.open("/dead")
    letter = pipeline.letters["perm alpha order 17"]
    await page.submit(f"tr[data-dead-letter='{letter}'] a")
    assert page.driver.current_url.endswith("/dead/" + quote(letter, safe=""))
    assert "perm alpha order 17" in await page.text_of("#payload")
    headers = await page.text_of("#headers")
    assert "x-botrelay-error" in headers and "PermanentError" in headers
    await page.shot("dead-letter-detail")
    assert await pipeline.dead() == len(DEAD_TEXTS)  # looking took nothing away


async def test_replay_one_from_a_console_without_the_workers_ordering(
        page: Page, pipeline: Pipeline) -> None:
    # The workers run BOTRELAY_ORDERING=none, the console the default (conversation).
    assert pipeline.settings.ordering == "none"
    failing_bot.HEALED["value"] = True  # the bot was fixed
    letter = pipeline.letters["perm beta refund"]
    await page.open("/dead")
    await page.click(f"input[name=id][value='{letter}']")
    await page.submit("button[value=replay-selected]")
    dry = await page.one("#dry-run")
    assert await page.call(dry.get_attribute, "data-count") == "1"
    await page.shot("replay-dry-run")
    assert await pipeline.dead() == len(DEAD_TEXTS)  # the dry run moved nothing
    await page.submit("#confirm")
    assert "replayed 1" in await page.text_of("#notice")
    assert await wait_for(lambda: "echo: perm beta refund" in reply_counts(pipeline.fake),
                          timeout=20)
    assert await pipeline.dead() == len(DEAD_TEXTS) - 1
    await asyncio.wait_for(pipeline.worker.until_idle(), 20)
    assert reply_counts(pipeline.fake)["echo: perm beta refund"] == 1
    assert letter not in await _rows(page)


async def test_purge_one_after_confirming(page: Page, pipeline: Pipeline) -> None:
    letter = pipeline.letters["perm gamma invoice"]

    async def ask_to_purge() -> None:
        await page.open("/dead")
        await page.click(f"input[name=id][value='{letter}']")
        await page.submit("button[value=purge-selected]")
        dry = await page.one("#dry-run")
        assert await page.call(dry.get_attribute, "data-count") == "1"

    await ask_to_purge()
    await page.shot("purge-dry-run")
    # Confirm without ticking the box: the browser does not send the form, nothing is purged.
    await page.click("#confirm")
    await asyncio.sleep(0.5)
    assert await page.one("#dry-run")  # still on the confirmation page
    assert await pipeline.dead() == len(DEAD_TEXTS)

    await page.click("#understood")
    await page.submit("#confirm")
    assert "purged 1" in await page.text_of("#notice")
    assert await pipeline.dead() == len(DEAD_TEXTS) - 1
    assert sorted(await _rows(page)) == sorted(
        v for k, v in pipeline.letters.items() if k != "perm gamma invoice")
    assert "echo: perm gamma invoice" not in reply_counts(pipeline.fake)
