"""Prometheus metric families. Each process builds its own registry (no module globals), so tests
can run an ingress and a worker side by side in one process and read each one's numbers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "IngressMetrics", "WorkerMetrics", "render"]

# Latency buckets from 1 ms to 30 s: the ingress lives in the low milliseconds, replies and
# end-to-end latency reach seconds when the reply API is slow or retries kick in.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.callbacks = Counter(
            "botrelay_callbacks_total",
            "Callbacks answered by the ingress, by outcome (queued, ignored, rejected, "
            "unavailable) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.queued = self.callbacks.labels("queued", "")  # the hot path's child, looked up once
        self.request_seconds = Histogram(
            "botrelay_ingress_request_seconds",
            "Time to answer POST /callback, publish confirm included.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        # The disk spool (``ingress/spool.py``): what it took, holds and handed to the broker.
        self.spooled = Counter(
            "botrelay_spool_spooled_total",
            "Callbacks written to the ingress's spool, by why they could not be published "
            "(broker_down, timeout, backlog).",
            ["reason"],
            registry=self.registry,
        )
        self.spool_depth = Gauge(
            "botrelay_spool_depth",
            "Callbacks in the ingress's spool, waiting to be forwarded.",
            registry=self.registry,
        )
        self.spool_bytes = Gauge(
            "botrelay_spool_bytes",
            "Bytes of callbacks in the ingress's spool (what BOTRELAY_SPOOL_MAX_BYTES bounds).",
            registry=self.registry,
        )
        self.spool_oldest_age = Gauge(
            "botrelay_spool_oldest_age_seconds",
            "Age of the oldest callback in the ingress's spool (0 when empty).",
            registry=self.registry,
        )
        self.spool_forwarded = Counter(
            "botrelay_spool_forwarded_total",
            "Spooled callbacks published to the broker with a confirm, then deleted.",
            registry=self.registry,
        )
        self.spool_corrupt = Counter(
            "botrelay_spool_corrupt_total",
            "Spool records that failed their checksum or could not be decoded, skipped.",
            registry=self.registry,
        )


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "botrelay_deliveries_total",
            "Deliveries settled by the worker, by outcome (replied, no_reply, duplicate, "
            "retried, delayed, dead_lettered).",
            ["outcome"],
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "botrelay_handler_seconds",
            "Time spent in the bot's handler.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.reply_requests = Counter(
            "botrelay_reply_requests_total",
            "Requests to the reply API, by HTTP status (or 'error' for no answer).",
            ["status"],
            registry=self.registry,
        )
        self.reply_seconds = Histogram(
            "botrelay_reply_request_seconds",
            "Latency of one request to the reply API.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "botrelay_end_to_end_seconds",
            "From the ingress receiving a callback to its last reply being accepted.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "botrelay_deliveries_in_flight",
            "Deliveries this worker holds and has not settled yet.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "botrelay_queue_messages",
            "Messages ready in each botrelay queue, sampled by the worker.",
            ["queue"],
            registry=self.registry,
        )
        self.loop_blocked = Counter(
            "botrelay_event_loop_blocked_seconds",
            "Time the worker's event loop was blocked (by a handler that does not yield), "
            "counted in stalls of half a second or more.",
            registry=self.registry,
        )
        self.throttle_seconds = Histogram(
            "botrelay_reply_throttle_seconds",
            "Time a reply waited for the outbound rate limit before being sent.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.dedup_unavailable = Counter(
            "botrelay_dedup_unavailable_total",
            "Deliveries delayed because the dedup store could not be reached.",
            registry=self.registry,
        )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
