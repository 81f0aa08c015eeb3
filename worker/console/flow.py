"""Callbacks/s, replies/s and reply latency, from the ``/metrics`` endpoints the ingresses and
workers already serve (``--metrics-url``, repeatable).

The processes export counters and cumulative histograms, not rates: the console scrapes each URL
at every sample and works on the differences between two scrapes of the same URL. A process that
restarted (a counter went down) counts from zero again instead of giving a negative rate. Latency
is ``botrelay_end_to_end_seconds`` (the ingress receiving a callback to its last reply being
accepted), its p50 and p99 estimated from the bucket counts the way Prometheus's
``histogram_quantile`` does: linearly inside the bucket the rank falls in.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

CALLBACKS = "botrelay_callbacks_total"  # ingress, outcome="queued": callbacks taken in
DELIVERIES = "botrelay_deliveries_total"  # worker, outcome="replied"
LATENCY = "botrelay_end_to_end_seconds_bucket"
# An ingress with BOTRELAY_SPOOL_DIR: callbacks held on its disk while the broker is away.
SPOOL_DEPTH = "botrelay_spool_depth"
SPOOL_BYTES = "botrelay_spool_bytes"
SPOOL_OLDEST = "botrelay_spool_oldest_age_seconds"
SPOOLED = "botrelay_spool_spooled_total"
SCRAPE_TIMEOUT = 2.0  # a hung process must not stall the other URLs' samples for long


@dataclass(frozen=True, slots=True)
class Reading:
    """One scrape of one process: the counters and the latency buckets (le -> cumulative)."""

    callbacks: float = 0.0
    replied: float = 0.0
    buckets: Mapping[float, float] = field(default_factory=dict)
    spool: tuple[float, float, float] | None = None  # depth, bytes, oldest age; None: no spool


@dataclass(frozen=True, slots=True)
class FlowPoint:
    at: float
    callbacks_per_s: float | None
    replies_per_s: float | None
    p50: float | None  # seconds; None when nothing was replied in the interval
    p99: float | None
    reached: int  # URLs that answered this sample
    urls: int
    # Over the ingresses that spool: callbacks and bytes held, the oldest one's age (seconds).
    spool: tuple[float, float, float] | None = None


def parse(text: str) -> Reading:
    callbacks = replied = 0.0
    buckets: dict[float, float] = {}
    spool: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == CALLBACKS and sample.labels.get("outcome") == "queued":
                callbacks += sample.value
            elif sample.name == DELIVERIES and sample.labels.get("outcome") == "replied":
                replied += sample.value
            elif sample.name == LATENCY:
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name in (SPOOL_DEPTH, SPOOL_BYTES, SPOOL_OLDEST):
                spool[sample.name] = sample.value
            elif sample.name == SPOOLED:
                spool[SPOOLED] = spool.get(SPOOLED, 0.0) + sample.value
    held = None
    # Every ingress exports the gauges; one that never spooled and holds nothing has no spool
    # worth a card (it may not have one at all).
    if spool.get(SPOOL_DEPTH, 0.0) > 0 or spool.get(SPOOLED, 0.0) > 0:
        held = (spool.get(SPOOL_DEPTH, 0.0), spool.get(SPOOL_BYTES, 0.0),
                spool.get(SPOOL_OLDEST, 0.0))
    return Reading(callbacks, replied, buckets, held)


def _spool(readings: Iterable[Reading]) -> tuple[float, float, float] | None:
    held = [r.spool for r in readings if r.spool is not None]
    if not held:
        return None
    return (sum(h[0] for h in held), sum(h[1] for h in held), max(h[2] for h in held))


def _delta(now: float, before: float) -> float:
    return now - before if now >= before else now  # below: the process restarted


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of observations counted in cumulative ``buckets`` (le -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is the best estimate
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def combine(previous: Mapping[str, Reading], current: Mapping[str, Reading], seconds: float,
            at: float, urls: int) -> FlowPoint:
    """The rates and quantiles between two samples, over the URLs read both times."""
    callbacks = replied = 0.0
    buckets: dict[float, float] = {}
    both = [url for url in current if url in previous]
    for url in both:
        now, before = current[url], previous[url]
        callbacks += _delta(now.callbacks, before.callbacks)
        replied += _delta(now.replied, before.replied)
        restarted = sum(now.buckets.values()) < sum(before.buckets.values())
        for le, count in now.buckets.items():
            base = 0.0 if restarted else before.buckets.get(le, 0.0)
            buckets[le] = buckets.get(le, 0.0) + max(0.0, count - base)
    spool = _spool(current.values())
    if not both or seconds <= 0:
        return FlowPoint(at, None, None, None, None, len(current), urls, spool)
    return FlowPoint(at, callbacks / seconds, replied / seconds, quantile(0.5, buckets),
                     quantile(0.99, buckets), len(current), urls, spool)


class Scraper:
    """Reads every URL once per sample and turns two consecutive samples into a FlowPoint."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)
        self._previous: dict[str, Reading] = {}
        self._previous_at = 0.0
        self._session: aiohttp.ClientSession | None = None

    async def _read(self, session: aiohttp.ClientSession, url: str) -> Reading | None:
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    return None
                return parse(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return None  # unreachable or not a Prometheus page: a gap for this URL

    async def sample(self, at: float) -> FlowPoint | None:
        if not self.urls:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT))
        # All at once: one hung process costs one timeout per sample, not one per URL.
        readings = await asyncio.gather(*(self._read(self._session, url) for url in self.urls))
        current = {url: r for url, r in zip(self.urls, readings, strict=True) if r is not None}
        point = combine(self._previous, current, at - self._previous_at, at, len(self.urls))
        self._previous, self._previous_at = current, at
        return point

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def series(points: Iterable[FlowPoint], attr: str) -> list[float | None]:
    return [getattr(p, attr) for p in points]
