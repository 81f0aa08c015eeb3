"""The flow charts' numbers: rates and latency quantiles from two scrapes of /metrics."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from botrelay.shared.metrics import IngressMetrics, WorkerMetrics, render
from botrelay.worker.console.flow import Reading, combine, parse, quantile

INF = math.inf


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, INF: 100.0}
    assert quantile(0.5, buckets) == 0.1
    assert math.isclose(quantile(0.7, buckets) or 0, 0.3)
    assert math.isclose(quantile(0.99, buckets) or 0, 0.95)
    assert quantile(0.5, {0.1: 0.0, INF: 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, INF: 10.0}) == 0.1  # in +Inf: the last finite bound


def test_parse_reads_the_metrics_the_processes_export() -> None:
    ingress = IngressMetrics(CollectorRegistry())
    ingress.queued.inc(7)
    ingress.callbacks.labels("rejected", "auth").inc(3)  # not taken in: not counted
    worker = WorkerMetrics(CollectorRegistry())
    worker.deliveries.labels("replied").inc(5)
    worker.deliveries.labels("duplicate").inc(2)
    for seconds in (0.02, 0.03, 0.2, 4.0):
        worker.end_to_end_seconds.observe(seconds)
    assert parse(render(ingress.registry).decode()).callbacks == 7
    reading = parse(render(worker.registry).decode())
    assert reading.replied == 5
    assert reading.buckets[0.025] == 1 and reading.buckets[INF] == 4


def test_rates_come_from_the_differences_and_a_restart_counts_from_zero() -> None:
    before = {"a": Reading(100, 80, {0.1: 10, INF: 10}), "b": Reading(50, 0, {})}
    after = {"a": Reading(160, 110, {0.1: 20, INF: 40}), "b": Reading(5, 0, {})}
    point = combine(before, after, 10.0, at=1.0, urls=3)
    assert point.callbacks_per_s == (60 + 5) / 10  # b restarted: its 5 are new
    assert point.replies_per_s == 3.0
    # 30 new observations, 10 under 100 ms, 20 beyond the last finite bucket.
    assert point.p50 == 0.1 and point.p99 == 0.1
    assert (point.reached, point.urls) == (2, 3)
    first = combine({}, after, 10.0, at=1.0, urls=3)
    assert first.callbacks_per_s is None and first.p50 is None


def test_the_spool_is_read_where_an_ingress_has_used_one() -> None:
    idle = IngressMetrics(CollectorRegistry())  # exports the gauges, never spooled: no spool
    assert parse(render(idle.registry).decode()).spool is None
    spooling = IngressMetrics(CollectorRegistry())
    spooling.spooled.labels("broker_down").inc(12)
    spooling.spool_depth.set(9)
    spooling.spool_bytes.set(4096)
    spooling.spool_oldest_age.set(31)
    reading = parse(render(spooling.registry).decode())
    assert reading.spool == (9, 4096, 31)
    other = Reading(spool=(1, 1024, 5))
    point = combine({}, {"a": reading, "b": other, "c": Reading()}, 5.0, 1.0, 3)
    assert point.spool == (10, 5120, 31)  # summed over ingresses, the oldest of them
