"""Basic auth under attack: every wrong, malformed or missing credential gets 401 with
``WWW-Authenticate`` and a JSON error, before the body is even read; the comparison costs the same
however much of the secret a guess gets right; health endpoints and logs reveal no secret."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botrelay.shared import basic_auth as auth_module
from botrelay.shared.basic_auth import BasicAuth
from botrelay.shared.settings import Settings
from tests.chaos.hostile import dumps, fuzz
from tests.chaos.live import Answer, LiveIngress, free_port
from tests.chaos.report import Figures, record
from tests.helpers import text_callback

USER = "cometchat"
PASSWORD = "s3cr3t-Pässwört-☃"  # non-ASCII on purpose: CometChat lets you choose any
API_KEY = "apikey-should-never-show-up"


def basic(user: str, password: str, encoding: str = "utf-8") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode(encoding)).decode()


@pytest.fixture(scope="module")
def live(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveIngress]:
    settings = Settings(
        amqp_url=amqp_url, prefix=f"t{uuid.uuid4().hex[:10]}", host="127.0.0.1",
        port=free_port(), callback_username=USER, callback_password=PASSWORD,
        cometchat_api_key=API_KEY, log_format="json", log_level="DEBUG", metrics_port=None,
        retry_delays=(0.2, 0.5), handler_timeout=2.0, reply_budget=2.0, dedup_lease=5.0,
        cometchat_app_id="2248348660ad9bd4",
    )
    log_path = Path(tmp_path_factory.mktemp("ingress")) / "ingress.log"
    ingress = LiveIngress(settings, log_path).start()
    started = time.monotonic()
    yield ingress
    ingress.stop()
    ingress.delete_topology()
    record(Figures("ingress: wrong or hostile credentials", sent=TRIED[0], accepted=0,
                   seconds=time.monotonic() - started,
                   note=f"{TRIED[1]} x 401, {TRIED[0] - TRIED[1]} x 400 from the HTTP parser"))
    logged = log_path.read_bytes()
    for secret in (PASSWORD, API_KEY, basic(USER, PASSWORD).split()[1]):
        assert secret.encode() not in logged, f"{secret!r} leaked into the logs"


TRIED = [0, 0]  # requests with wrong credentials, of which answered 401


def refused(answer: Answer) -> None:
    """401 from the ingress, or 400 from aiohttp's HTTP parser for a header value no HTTP/1.1
    server may accept (control characters): either way the request never reached the app."""
    if answer.status == 400 and answer.headers["content-type"].startswith("text/plain"):
        TRIED[0] += 1
        assert answer.body.startswith(b"Invalid header value char"), answer.body
        return
    unauthorized(answer)


def unauthorized(answer: Answer) -> None:
    TRIED[0] += 1
    TRIED[1] += answer.status == 401
    assert answer.status == 401, (answer.status, answer.body)
    assert answer.headers.get("www-authenticate", "").startswith("Basic ")
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"] == "unauthorized"


BODY = dumps(text_callback("auth-1", "hi"))

WRONG = [
    None,
    "",
    "Basic",
    "Basic ",
    "Basic !!!!not-base64!!!!",
    "Basic " + base64.b64encode(b"no-colon-at-all").decode(),
    basic("someone-else", PASSWORD),
    basic(USER, "wrong"),
    basic(USER, PASSWORD[:-1]),
    basic(USER, PASSWORD + " "),
    basic(USER.upper(), PASSWORD),
    basic(USER, PASSWORD) + "=",
    basic(USER, PASSWORD) + " extra",
    "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    "Digest username=\"cometchat\"",
    basic(USER, PASSWORD, "utf-16"),
    basic("üser", "pässwörd"),
    "Basic " + "A" * 6000,
]


@pytest.mark.integration
@pytest.mark.parametrize("header", WRONG, ids=[f"case{i}" for i in range(len(WRONG))])
def test_wrong_or_malformed_credentials_get_401(live: LiveIngress, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    unauthorized(live.post(BODY, headers=headers))


@pytest.mark.integration
@pytest.mark.parametrize("raw", [
    b"Basic \xff\xfe\xfd",
    b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode())[:-2] + b"\xc3",
    b"\xe2\x98\x83 " + base64.b64encode(f"{USER}:{PASSWORD}".encode()),
    b"Basic " + f"{USER}:{PASSWORD}".encode(),  # not base64-encoded at all
])
def test_non_ascii_header_bytes_get_401(live: LiveIngress, raw: bytes) -> None:
    head = (b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + raw + b"\r\nContent-Length: " + str(len(BODY)).encode() +
            b"\r\nConnection: close\r\n\r\n")
    answer = _parse(live.raw(head + BODY))
    unauthorized(answer)


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body)


@pytest.mark.integration
def test_right_credentials_with_non_ascii_password_are_accepted(live: LiveIngress) -> None:
    answer = live.post(BODY, headers={"Authorization": basic(USER, PASSWORD)})
    assert answer.status == 200, answer.body
    assert answer.json()["status"] == "queued"


@pytest.mark.integration
def test_a_valid_callback_with_wrong_credentials_is_never_published(live: LiveIngress) -> None:
    # Well-formed callbacks, so only the credentials stand between them and the queue; the one
    # with the right credentials shows the count does see what is published.
    before = live.published()
    for i, header in enumerate(WRONG[:8]):
        headers = {} if header is None else {"Authorization": header}
        unauthorized(live.post(dumps(text_callback(f"auth-pub-{i}", "hi")), headers=headers))
    right = live.post(dumps(text_callback("auth-pub-ok", "hi")),
                      headers={"Authorization": basic(USER, PASSWORD)})
    assert right.status == 200, right.body
    assert live.published() == before + 1


@pytest.mark.integration
def test_401_comes_before_the_body_is_read(live: LiveIngress) -> None:
    before = live.published()
    unauthorized(live.post(b"{" + b" " * 10_000_000 + b"}"))  # over the size limit: still 401
    unauthorized(live.post(b"not json", content_type="text/plain"))
    assert live.published() == before


@pytest.mark.integration
@fuzz(40)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=120))
def test_random_authorization_headers_get_401(live: LiveIngress, header: str) -> None:
    if header.strip() == basic(USER, PASSWORD):
        return
    # http.client sends str headers as Latin-1 bytes, so this covers non-ASCII octets too.
    refused(live.post(BODY, headers={"Authorization": header}))


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
def test_health_endpoints_reveal_nothing_sensitive(live: LiveIngress, path: str) -> None:
    answer = live.request("GET", path)
    assert answer.status == 200
    shown = answer.body + repr(answer.headers).encode()
    secrets = [PASSWORD, API_KEY, basic(USER, PASSWORD).split()[1], "guest:guest",
               live.settings.amqp_url]
    for secret in secrets:
        assert secret.encode() not in shown, f"{path} reveals {secret!r}"


@pytest.mark.integration
def test_metrics_are_not_served_on_the_callback_port(live: LiveIngress) -> None:
    assert live.request("GET", "/metrics").status == 404


# --- the comparison itself (no services needed) ---------------------------------------------

def test_comparison_always_runs_over_two_fixed_size_digests(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    seen: list[tuple[int, int]] = []
    real = auth_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    checker = BasicAuth(USER, PASSWORD)
    for header in [*WRONG, basic(USER, PASSWORD)]:
        checker.check(header)
    assert seen and set(seen) == {(32, 32)}
    assert checker.check(basic(USER, PASSWORD))
    assert not checker.check(None)


def test_check_time_does_not_depend_on_how_close_the_guess_is() -> None:
    checker = BasicAuth(USER, PASSWORD)
    right = basic(USER, PASSWORD)
    # Same length: one differs in the last character, one in the first.
    close = right[:-1] + ("A" if right[-1] != "A" else "B")
    far = ("C" if right[0] != "C" else "D") + right[1:]

    def batch(header: str) -> float:
        started = time.perf_counter_ns()
        for _ in range(2000):
            checker.check(header)
        return float(time.perf_counter_ns() - started)

    close_times, far_times = [], []
    for _ in range(15):  # interleaved, so machine noise hits both alike
        close_times.append(batch(close))
        far_times.append(batch(far))
    ratio = statistics.median(close_times) / statistics.median(far_times)
    assert 0.6 < ratio < 1.6, ratio
    # What is compared never depends on the guess: both sides are SHA-256 digests.
    assert hashlib.sha256(close.encode()).digest() != hashlib.sha256(right.encode()).digest()
