"""Fuzzing ``shared.payloads``: whatever bytes arrive, parsing either gives a usable ``Callback``
or raises ``PayloadError`` (a 400 at the ingress, a dead letter at the worker), never anything
else; and what it accepts can be published (AMQP limits) and answered."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from botrelay.shared.errors import PayloadError
from botrelay.shared.model import MESSAGE_TRIGGERS, Callback
from botrelay.shared.payloads import parse_body, parse_callback
from tests.chaos.hostile import BASES, dumps, fuzz, json_values, mutated_callbacks
from tests.chaos.report import Figures, record
from tests.helpers import fixture, text_callback

# AMQP's message-id is a short string: at most 255 bytes.
MAX_MESSAGE_ID = 255
# Headers must fit in one AMQP frame (128 KB); the conversation id is the only unbounded one.
MAX_HEADER = 1024


def check(callback: Callback) -> None:
    """Invariants of anything ``parse_callback`` accepts."""
    assert isinstance(callback.dedup_key, str) and callback.dedup_key
    assert len(callback.dedup_key.encode()) <= MAX_MESSAGE_ID
    assert callback.dedup_key.startswith(f"{callback.app_id}:{callback.source}:")
    assert isinstance(callback.conversation_id, str)
    assert len(callback.conversation_id.encode()) <= MAX_HEADER
    msg = callback.message
    if msg is None:
        assert callback.trigger not in MESSAGE_TRIGGERS
        return
    for value in (msg.id, msg.sender, msg.receiver, msg.app_id, msg.conversation_id):
        assert isinstance(value, str) and value
    assert msg.receiver_type in ("user", "group")
    assert msg.text is None or isinstance(msg.text, str)
    assert isinstance(msg.data, dict)
    # What a handler reads must not raise either.
    _ = (msg.command, msg.args, msg.attachments, msg.custom_data, msg.reply_receiver)


SEEN = {"bodies": 0, "accepted": 0}


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    started = time.monotonic()
    yield
    record(Figures("parser: hostile bodies (no services)", sent=SEEN["bodies"],
                   accepted=SEEN["accepted"], answered=SEEN["accepted"],
                   seconds=time.monotonic() - started,
                   note="each a Callback or a PayloadError, nothing else"))


def parse_or_reject(body: bytes) -> Callback | None:
    SEEN["bodies"] += 1
    try:
        callback = parse_body(body)
    except PayloadError as exc:
        assert exc.error and exc.detail
        return None
    check(callback)
    SEEN["accepted"] += 1
    return callback


@fuzz()
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xff\xfe\x00")
@example(b"null")
@example(b'"\\ud800"')
def test_random_bytes_are_parsed_or_rejected(body: bytes) -> None:
    parse_or_reject(body)


@fuzz()
@given(json_values)
def test_any_json_value_is_parsed_or_rejected(doc: object) -> None:
    with contextlib.suppress(PayloadError):
        check(parse_callback(doc))


@fuzz()
@given(mutated_callbacks())
def test_callbacks_with_missing_retyped_or_extra_fields(doc: dict[str, object]) -> None:
    parse_or_reject(dumps(doc))


@fuzz()
@given(field=st.sampled_from(["id", "sender", "receiver"]), size=st.integers(1, 200_000))
def test_huge_ids_are_rejected_not_published(field: str, size: int) -> None:
    doc = text_callback("1", "hi")
    doc["data"][field] = "x" * size
    callback = parse_or_reject(dumps(doc))
    # CometChat's UIDs and ids are at most 100 characters (and the key they make stays within
    # AMQP's 255-byte message-id).
    assert (callback is None) == (size > 100)


@fuzz()
@given(app_id=st.text(min_size=1, max_size=400), bot=st.text(min_size=1, max_size=400))
def test_long_or_unicode_app_and_bot_ids(app_id: str, bot: str) -> None:
    doc = text_callback("1", "hi", bot=bot, app_id=app_id)
    parse_or_reject(dumps(doc))


@fuzz()
@given(field=st.sampled_from(["conversationId", "sender", "receiver"]),
       size=st.integers(1, 200_000), group=st.booleans())
def test_huge_conversation_ids_are_rejected(field: str, size: int, group: bool) -> None:
    doc = text_callback("1", "hi", group="g" if group else None)
    doc["data"][field] = "c" * size
    callback = parse_or_reject(dumps(doc))
    if field == "conversationId" and size > MAX_HEADER:
        assert callback is None


def test_huge_text_is_accepted() -> None:
    callback = parse_or_reject(dumps(text_callback("1", "y" * 200_000)))
    assert callback is not None and callback.message is not None
    assert len(callback.message.text or "") == 200_000


@pytest.mark.parametrize("name", BASES)
def test_every_truncation_of_a_real_callback_is_rejected(name: str) -> None:
    body = dumps(fixture(name))
    for cut in range(len(body)):
        assert parse_or_reject(body[:cut]) is None, body[:cut]


@fuzz()
@given(st.data())
def test_invalid_utf8_anywhere_in_a_string_is_rejected(data: st.DataObject) -> None:
    body = dumps(fixture(data.draw(st.sampled_from(BASES))))
    # Positions inside string values: after an opening quote that follows ':' or ','.
    spots = [i + 1 for i in range(len(body) - 1) if body[i:i + 1] == b'"']
    at = data.draw(st.sampled_from(spots))
    bad = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    assert parse_or_reject(body[:at] + bad + body[at:]) is None


@pytest.mark.parametrize("depth", [100, 1000, 5000, 100_000])
def test_deeply_nested_json_is_rejected_or_parsed_without_crashing(depth: int) -> None:
    parse_or_reject(b"[" * depth + b"]" * depth)
    parse_or_reject(b"[" * depth)
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    body = dumps(text_callback("1", "hi"))[:-1] + b',"extra":' + nested + b"}"
    callback = parse_or_reject(body)
    if depth >= 1024:  # orjson's recursion limit: refused as invalid JSON, not a crash
        assert callback is None


def test_duplicate_keys_resolve_like_the_worker_sees_them() -> None:
    # The ingress validates and publishes the original bytes; the worker parses them again with
    # the same parser, so both must read the same (the last) value of a duplicated key.
    good = dumps(text_callback("1", "hi"))
    body = good[:-1] + b',"trigger":"not_a_message_trigger"}'
    first = parse_body(body)
    assert first.trigger == "not_a_message_trigger" and first.ignore_reason
    body = b'{"trigger":"not_a_message_trigger",' + good[1:]
    assert parse_body(body).trigger == "after_message"
