"""Names are pure functions of the prefix; delays are picked predictably."""

from __future__ import annotations

from shared import topology
from shared.settings import Settings


def test_names() -> None:
    assert topology.exchange_name("p") == "p"
    assert topology.inbound_queue("p") == "p.inbound"
    assert topology.dead_queue("p") == "p.dead"
    assert topology.retry_queue("p", 5.0) == "p.retry.5"
    assert topology.retry_queue("p", 0.2) == "p.retry.0.2"
    s = Settings(prefix="p", retry_delays=(1.0, 5.0))
    assert topology.all_queue_names(s) == ["p.inbound", "p.dead", "p.retry.1", "p.retry.5"]


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
