"""Noticing an event loop that stopped turning.

A handler that blocks (``time.sleep``, a CPU-bound loop, a blocking HTTP client) stalls every
conversation on its worker: ``BOTRELAY_HANDLER_TIMEOUT`` cannot interrupt code that never yields.
botrelay cannot prevent that, but it can say so: a task that sleeps a tenth of a second measures
how late it wakes, and a wake-up late by half a second or more is logged (once per stall, with
what to do about it) and counted in ``botrelay_event_loop_blocked_seconds_total``.
"""

from __future__ import annotations

import asyncio
import logging

from botrelay.shared.metrics import WorkerMetrics

log = logging.getLogger("botrelay.worker")

INTERVAL = 0.1
THRESHOLD = 0.5


async def watch_loop(metrics: WorkerMetrics, *, interval: float = INTERVAL,
                     threshold: float = THRESHOLD) -> None:
    """Run until cancelled, reporting each stall of the event loop of ``threshold`` or more."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        late = loop.time() - started - interval
        if late >= threshold:
            metrics.loop_blocked.inc(late)
            log.warning(
                "the event loop was blocked for %.1fs, and every delivery on this worker "
                "waited: a handler blocks it (time.sleep, CPU-bound work, a blocking client); "
                "run such work with asyncio.to_thread or in a process pool", late)
