"""Hostile input against a real ingress process and broker.

Every answer is a 2xx, or a 4xx with a JSON error body (no 5xx but the documented 503); the
ingress answers what the contract decides (``tests.chaos.hostile.expected``: the OpenAPI schema the
ingress serves and the answers table, not the ingress's own parser); one message reaches the
queue exactly when the answer was "queued" (nothing consumes it here, so each request counts
what was published, and the module finally reads it all); slow clients are cut off while others
are served; memory stays flat.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings
from tests.chaos.hostile import (
    APP_ID,
    BASES,
    dumps,
    expected,
    fuzz,
    json_values,
    mutated_callbacks,
)
from tests.chaos.live import Answer, LiveIngress, free_port
from tests.chaos.report import Figures, record
from tests.helpers import fixture, text_callback

pytestmark = pytest.mark.integration

MAX_BODY = 262144  # the default
BODY_TIMEOUT = 1.0


class Tally:
    """What the ingress answered over the module, for the figures table."""

    def __init__(self) -> None:
        self.sent = 0
        self.queued = 0
        self.statuses: dict[int, int] = {}

    def add(self, answer: Answer) -> None:
        self.sent += 1
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        if answer.status == 200 and answer.json().get("status") == "queued":
            self.queued += 1


TALLY = Tally()


@pytest.fixture(scope="module")
def live(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveIngress]:
    settings = Settings(
        amqp_url=amqp_url, prefix=f"t{uuid.uuid4().hex[:10]}", host="127.0.0.1",
        port=free_port(), max_body=MAX_BODY, body_timeout=BODY_TIMEOUT, log_format="text",
        log_level="WARNING", metrics_port=None, retry_delays=(0.2, 0.5), handler_timeout=2.0,
        reply_budget=2.0, dedup_lease=5.0, cometchat_app_id="2248348660ad9bd4",
        callback_auth="none",
    )
    log_path = Path(tmp_path_factory.mktemp("ingress")) / "ingress.log"
    ingress = LiveIngress(settings, log_path).start()
    started = time.monotonic()
    yield ingress
    try:
        assert ingress.alive, "the ingress process died"
        # Whatever ran, in whatever order: the queue holds exactly what was answered "queued",
        # and each is a callback a handler can take.
        bodies = ingress.drain()
        assert len(bodies) == TALLY.queued, (len(bodies), TALLY.queued)
        for body in bodies:
            callback = parse_body(body)
            assert callback.message is not None and callback.ignore_reason is None
    finally:
        ingress.stop()
        ingress.delete_topology()
    logged = log_path.read_text()
    assert "Traceback" not in logged and "Error handling request" not in logged, logged[-3000:]
    figures = Figures("ingress: hostile HTTP requests", sent=TALLY.sent,
                      accepted=TALLY.queued, answered=TALLY.queued,
                      seconds=time.monotonic() - started)
    figures.note = ("queue held exactly the queued, all valid; statuses "
                    + " ".join(f"{k}:{v}" for k, v in sorted(TALLY.statuses.items())))
    record(figures)


def well_formed(answer: Answer) -> Answer:
    """The contract for every answer, whatever was sent."""
    TALLY.add(answer)
    assert answer.status < 500 or answer.status == 503, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    doc = answer.json()
    if answer.status >= 400:
        assert isinstance(doc.get("error"), str) and doc["error"], doc
    else:
        assert doc.get("status") in ("queued", "ignored"), doc
    if answer.status == 503:
        assert answer.headers.get("retry-after")
    return answer


def agrees(live: LiveIngress, body: bytes) -> Answer:
    """POST ``body``; check the answer against the contract's verdict, and that the broker got
    one message exactly when the answer was "queued"."""
    before = live.published()
    answer = well_formed(live.post(body))
    verdict = expected(body)
    queued = answer.status == 200 and answer.json()["status"] == "queued"
    assert live.published() - before == (1 if queued else 0), (answer.status, answer.body)
    if verdict == "rejected":
        assert answer.status == 400, (answer.status, answer.body[:300])
    elif verdict == "outside":
        assert answer.status in (200, 400, 403), (answer.status, answer.body[:300])
        if answer.status == 403:  # only for a well-formed appId that is not the app served
            assert orjson.loads(body).get("appId") != APP_ID, answer.body[:300]
    elif answer.status != 503:
        assert answer.status == 200 and answer.json()["status"] == verdict, (
            verdict, answer.body[:300])
    return answer


@fuzz(40)
@given(st.binary(max_size=1024))
def test_random_bytes(live: LiveIngress, body: bytes) -> None:
    agrees(live, body)


@fuzz(40)
@given(json_values)
def test_any_json_value(live: LiveIngress, doc: object) -> None:
    agrees(live, orjson.dumps(doc))


@fuzz(60)
@given(mutated_callbacks())
def test_missing_retyped_and_extra_fields(live: LiveIngress, doc: dict[str, object]) -> None:
    agrees(live, dumps(doc))


@pytest.mark.parametrize("name", BASES)
def test_truncated_invalid_utf8_and_duplicate_keys(live: LiveIngress, name: str) -> None:
    body = dumps(fixture(name))
    for cut in (1, len(body) // 3, len(body) // 2, len(body) - 1):
        assert agrees(live, body[:cut]).status == 400
    at = body.index(b'"', 10) + 1
    assert agrees(live, body[:at] + b"\xff\xfe" + body[at:]).status == 400
    agrees(live, body[:-1] + b',"appId":"other-app"}')
    agrees(live, body[:-1] + b',"data":7}')


def test_a_header_too_big_for_one_amqp_frame_is_refused_not_published(live: LiveIngress
                                                                     ) -> None:
    # The conversation id becomes a header; over 128 KB the broker would close the ingress's
    # connection, and every sender would get 503 until it reconnected.
    for field in ("conversationId", "sender"):
        doc = text_callback(f"frame-{field}", "hi")
        del doc["data"]["conversationId"]  # made from sender and receiver then
        doc["data"][field] = "c" * 140_000
        assert agrees(live, dumps(doc)).status == 400
        assert agrees(live, dumps(text_callback(f"next-{field}", "hi"))).status == 200


def test_huge_strings_and_deep_nesting(live: LiveIngress) -> None:
    assert agrees(live, dumps(text_callback("x" * 300, "hi"))).status == 400  # id > AMQP limit
    assert agrees(live, dumps(text_callback("1", "y" * (MAX_BODY - 2000)))).status == 200
    assert agrees(live, b"[" * (MAX_BODY - 1)).status == 400
    nested = b'{"a":' * 2000 + b"1" + b"}" * 2000
    assert agrees(live, dumps(text_callback("2", "hi"))[:-1] + b',"x":' + nested + b"}"
                  ).status == 400


@pytest.mark.parametrize("content_type, accepted", [
    (None, False),
    ("", False),
    ("text/plain", False),
    ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=xyz", False),
    ("application/json5", False),
    ("application/jsonx", False),
    ("text/json", False),
    ("application/json; charset=utf-8", True),
    ("application/json;charset=latin-1", True),
    ("Application/JSON", True),
    ("application/json;;;;", True),
])
def test_content_types(live: LiveIngress, content_type: str | None, accepted: bool) -> None:
    body = dumps(text_callback(f"ct-{uuid.uuid4().hex[:8]}", "hi"))
    answer = well_formed(live.post(body, content_type))
    assert answer.status == (200 if accepted else 415), (content_type, answer.body)


@fuzz(30)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60))
def test_random_content_type_headers(live: LiveIngress, content_type: str) -> None:
    answer = well_formed(live.post(dumps(text_callback("1", "hi")), content_type))
    assert answer.status in (200, 415)


def test_oversized_body_with_content_length(live: LiveIngress) -> None:
    before = live.published()
    for size in (MAX_BODY + 1, MAX_BODY * 4, MAX_BODY * 16):
        answer = well_formed(live.post(b"{" + b" " * (size - 2) + b"}"))
        assert answer.status == 413
    assert live.published() == before


def test_compression_bomb(live: LiveIngress) -> None:
    # 200 KB of gzip that inflates to 200 MB: refused once the inflated body passes the limit.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = packer.compress(b"[" + b" " * (200 * 1024 * 1024)) + packer.flush()
    assert len(bomb) < MAX_BODY
    before = live.rss_kib()
    answer = well_formed(live.post(bomb, headers={"Content-Encoding": "gzip"}))
    assert answer.status == 413
    assert live.rss_kib() - before < 32 * 1024
    small = gzip.compress(dumps(text_callback(f"gz-{uuid.uuid4().hex[:8]}", "hi")))
    answer = well_formed(live.post(small, headers={"Content-Encoding": "gzip"}))
    assert answer.status == 200  # inflated, then handled (and published) like any callback


def _chunked(body: bytes, chunk: int = 8192) -> bytes:
    out = b""
    for i in range(0, len(body), chunk):
        part = body[i:i + chunk]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def _parse_raw(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    elif "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Answer(int(lines[0].split()[1]), headers, body)


def _send_raw(live: LiveIngress, head: bytes, body: bytes, timeout: float = 10.0) -> Answer:
    with socket.create_connection(("127.0.0.1", live.port), timeout=timeout) as sock:
        # The server may answer and close before the whole body is sent.
        with contextlib.suppress(OSError):
            sock.sendall(head + body)
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
                if b"\r\n\r\n" in raw and len(_parse_raw(raw).body) >= int(
                        _parse_raw(raw).headers.get("content-length", "0")):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    assert raw, "no answer"
    return _parse_raw(raw)


def test_oversized_chunked_body_without_content_length(live: LiveIngress) -> None:
    before = live.published()
    head = (b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    for size in (MAX_BODY + 1, MAX_BODY * 4):
        answer = well_formed(_send_raw(live, head, _chunked(b"[" + b"1," * (size // 2) + b"1]")))
        assert answer.status == 413
    small = dumps(text_callback(f"chunked-{uuid.uuid4().hex[:8]}", "hi"))
    assert well_formed(_send_raw(live, head, _chunked(small, 100))).status == 200
    assert live.published() == before + 1


def test_body_shorter_than_its_content_length(live: LiveIngress) -> None:
    before = live.published()
    body = dumps(text_callback("short", "hi"))
    head = (b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body) + 50).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)  # the client gives up half way
        with contextlib.suppress(OSError):
            sock.recv(65536)  # the server closes; no 5xx, nothing published
    time.sleep(0.2)
    assert live.published() == before
    assert live.request("GET", "/healthz").status == 200


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/callback", 405),
    ("PUT", "/callback", 405),
    ("DELETE", "/callback", 405),
    ("POST", "/nope", 404),
    ("GET", "/../../etc/passwd", 404),
    ("POST", "/callback/", 404),
])
def test_wrong_methods_and_paths(live: LiveIngress, method: str, path: str, status: int) -> None:
    answer = well_formed(live.request(method, path, b"{}", {"Content-Type": "application/json"}))
    assert answer.status == status


def _dribble(port: int, head: bytes, body: bytes, pause: float, out: list[float | int]) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(pause)
        raw = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
                raw += sock.recv(65536)  # answered (and closed) yet?
            except TimeoutError:
                continue
            except OSError:
                break
            if raw:
                break
        answered_after = time.monotonic() - started
    out.append(answered_after)
    out.append(_parse_raw(raw).status if raw else 0)


def test_slow_clients_are_timed_out_while_others_are_served(live: LiveIngress) -> None:
    before = live.published()
    body = dumps(text_callback(f"slow-{uuid.uuid4().hex[:8]}", "hi"))
    head = (b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    results: list[list[float | int]] = [[] for _ in range(20)]
    threads = [threading.Thread(target=_dribble, args=(live.port, head, body, 0.2, r))
               for r in results]
    for t in threads:
        t.start()
    # Meanwhile, ordinary callbacks are answered promptly.
    latencies = []
    for i in range(20):
        started = time.monotonic()
        ok = well_formed(live.post(dumps(text_callback(f"fast-{uuid.uuid4().hex[:8]}-{i}",
                                                       "hi"))))
        latencies.append(time.monotonic() - started)
        assert ok.status == 200
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=15)
    for elapsed, status in results:
        TALLY.statuses[int(status)] = TALLY.statuses.get(int(status), 0) + 1
        TALLY.sent += 1
        assert status == 408, results
        assert elapsed < BODY_TIMEOUT + 2.0, results
    assert max(latencies) < 1.0, latencies
    assert live.published() == before + 20


def test_memory_stays_flat(live: LiveIngress) -> None:
    bodies = [b"", b"\xff" * 100, b"[" * 5000, dumps(text_callback("1", "z" * 30_000))[:-5],
              dumps({"trigger": "after_message", "data": {}}), b'{"a":' * 1500,
              b"{" + b" " * MAX_BODY + b"}"]

    def burst(n: int) -> None:
        for i in range(n):
            well_formed(live.post(bodies[i % len(bodies)]))

    burst(300)  # warm up: caches, buffers, allocator pools
    baseline = live.rss_kib()
    started = time.monotonic()
    requests = 2800
    burst(requests)
    grown = live.rss_kib() - baseline
    print(f"ingress RSS {baseline} KiB -> +{grown} KiB after {requests} hostile requests "
          f"in {time.monotonic() - started:.1f}s")
    # 1 MiB over 2800 requests: a leak of 0.4 KiB a request fails (88 KiB measured here).
    assert grown < 1024, f"RSS grew by {grown} KiB: {grown * 1024 / requests:.0f} B a request"


@pytest.mark.xfail(strict=True, reason=(
    "aiohttp has no deadline for the request line and headers: a client dribbling its headers "
    "holds a connection until the keep-alive timeout (75 s, set by `botrelay ingress`), not "
    "BOTRELAY_BODY_TIMEOUT; cap header time in the load balancer in front of the ingress"))
def test_slow_headers_are_timed_out(live: LiveIngress) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=BODY_TIMEOUT + 2) as sock:
        sock.sendall(b"POST /callback HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + BODY_TIMEOUT + 1.5
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X")
                sock.settimeout(0.3)
                closed = sock.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed, "the server still holds a connection whose headers never end"
