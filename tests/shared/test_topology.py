"""Names are pure functions of the prefix; delays are picked predictably."""

from __future__ import annotations

from botrelay.shared import topology
from botrelay.shared.queue_changes import parse_refusal
from botrelay.shared.settings import Settings


def test_names() -> None:
    assert topology.exchange_name("p") == "p"
    assert topology.inbound_queue("p") == "p.inbound"
    assert topology.dead_queue("p") == "p.dead"
    assert topology.retry_queue("p", 5.0) == "p.retry.5"
    assert topology.retry_queue("p", 0.2) == "p.retry.0.2"
    s = Settings(prefix="p", retry_delays=(1.0, 5.0), ordering="none")
    assert topology.all_queue_names(s) == ["p.inbound", "p.dead", "p.retry.1", "p.retry.5"]
    s = Settings(prefix="p", retry_delays=(1.0,), partitions=2)
    assert topology.all_queue_names(s) == ["p.inbound", "p.inbound.0", "p.inbound.1", "p.dead",
                                           "p.retry.1"]


def test_routing_by_conversation() -> None:
    ordered = Settings(prefix="p", partitions=16)
    keys = {topology.inbound_key(ordered, f"conv-{i}") for i in range(200)}
    assert keys == {f"inbound.{n}" for n in range(16)}  # every partition gets conversations
    # Stable: the same conversation always lands in the same partition (crc32, not hash()).
    assert topology.partition_of("cometchat-uid-1_user_demo_bot", 16) == 3
    assert topology.inbound_key(Settings(ordering="none"), "anything") == "inbound"


def test_delay_choice() -> None:
    delays = (1.0, 5.0, 30.0)
    assert topology.pick_delay(delays, 0.2) == 1.0
    assert topology.pick_delay(delays, 5.0) == 5.0
    assert topology.pick_delay(delays, 6.0) == 30.0
    assert topology.pick_delay(delays, 999) == 30.0
    assert [topology.delay_for_attempt(delays, n) for n in (1, 2, 3, 4, 9)] == [1, 5, 30, 30, 30]


def test_queue_arguments_are_quorum_and_reject_when_full() -> None:
    s = Settings(prefix="p", inbound_max_length=10)
    inbound = topology.inbound_arguments(s)
    assert inbound["x-queue-type"] == "quorum"
    assert inbound["x-overflow"] == "reject-publish"
    assert inbound["x-max-length"] == 10
    retry = topology.retry_arguments(s, 0.5)
    assert retry["x-message-ttl"] == 500
    assert retry["x-dead-letter-exchange"] == "p"
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert "x-dead-letter-routing-key" not in retry  # the message keeps its own key


def test_only_the_queues_workers_consume_have_a_delivery_limit() -> None:
    # The limit sends a handed-back message to the head of its queue (conversation order) and
    # bounds a crash loop; the DLQ, read by holding letters unacked, must never reach it.
    s = Settings(prefix="p", delivery_limit=7)
    assert topology.inbound_arguments(s)["x-delivery-limit"] == 7
    assert topology.partition_arguments(s)["x-delivery-limit"] == 7
    assert "x-delivery-limit" not in topology.dead_arguments(s)
    assert "x-delivery-limit" not in topology.retry_arguments(s, 1.0)
    assert Settings().delivery_limit == 20


def test_a_delivery_limit_mismatch_names_its_setting() -> None:
    refusal = ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue "
               "'p.inbound.3' in vhost '/': received the value '20' of type 'byte' but current "
               "is none")
    mismatch = parse_refusal(refusal)
    assert mismatch is not None
    assert mismatch.line() == ("queue p.inbound.3 has x-delivery-limit=unset, but "
                               "BOTRELAY_DELIVERY_LIMIT asks for 20")
