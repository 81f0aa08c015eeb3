"""The per-delivery path: decode -> dedup -> handler -> replies -> mark done -> settle.

``Consumer.process`` is the one place a delivery's fate is decided, by what was raised:

- ``PayloadError`` / ``PermanentError`` -> dead letter now (retrying cannot fix it);
- ``DedupUnavailable`` -> delay without counting an attempt (never reply without a record);
- ``RateLimited`` (our own outbound limit) -> delay until the slot, without counting an attempt;
- ``Retry`` or anything else -> a later attempt via a retry queue, or the DLQ after the last.

Deliveries of one conversation run one after another in arrival order; different conversations
run concurrently, up to the prefetch (``BOTRELAY_CONCURRENCY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Protocol

from botrelay.shared.broker import PUBLISH_ERRORS
from botrelay.shared.errors import (
    DedupUnavailable,
    PayloadError,
    PermanentError,
    Retry,
    TransientError,
)
from botrelay.shared.headers import CONVERSATION, RECEIVED_AT, REPLIED, TRIGGER
from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.model import Message
from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings
from botrelay.shared.topology import delay_for_attempt, pick_delay
from botrelay.shared.transport import Delivery
from botrelay.worker.bot import Bot
from botrelay.worker.dedup import Claim, DedupStore, NotAlive, Status
from botrelay.worker.rate_limit import RateLimited
from botrelay.worker.reply import muid
from botrelay.worker.reply_lookup import Lookup, stored
from botrelay.worker.retry import Mover, attempt_of

log = logging.getLogger("botrelay.worker")

# How long a timed-out handler gets to honour its cancellation before it is abandoned.
CANCEL_GRACE = 1.0


class Outcome(enum.Enum):
    """How a delivery ended; the value is the ``outcome`` label of ``botrelay_deliveries_total``
    and of the worker's log lines."""

    REPLIED = "replied"  # answered, acked
    NO_REPLY = "no_reply"  # the handler returned nothing, acked
    IGNORED = "ignored"  # the bot's own message, an unhandled trigger, acked
    DUPLICATE = "duplicate"  # already answered, acked
    BUSY = "busy"  # another live worker holds the claim: settled as DELAYED
    PARKED = "parked"  # waits behind an earlier message of its conversation
    DELAYED = "delayed"  # back after the shortest delay (busy claim, dedup store down)
    RETRIED = "retried"  # failed, back after its attempt's delay
    DEAD_LETTERED = "dead_lettered"
    UNSETTLED = "unsettled"  # could not be moved or acked: the broker redelivers it


@dataclass(slots=True)
class Result:
    """What running a delivery gave, before it is settled."""

    outcome: Outcome
    replies: int = 0
    delay: float = 0.0  # parked: how long the conversation's head is waiting
    text: str | None = None  # the message's text, for debug lines only


IGNORED = Result(Outcome.IGNORED)
DUPLICATE = Result(Outcome.DUPLICATE)
BUSY = Result(Outcome.BUSY)


@dataclass(slots=True)
class Context:
    """What is known about a delivery so far, for whichever way it ends."""

    key: str | None = None
    pen: str | None = None  # its conversation's pen, when replies are kept in order
    delivering: bool = False  # replies may be going out: the job runs to the end
    timed_out: bool = False  # the handler overran BOTRELAY_HANDLER_TIMEOUT and was cancelled
    sending: bool = False  # a reply request is out, its outcome not known yet
    unsure: bool = False  # an earlier attempt's reply may be stored: not looked up yet
    last_attempt: bool = False  # no attempt follows this one


class Unrecorded(DedupUnavailable):
    """Replies were accepted but the dedup store could not record it. The retry carries how many
    (header ``x-botrelay-replied``) and does not send them again."""

    def __init__(self, sent: int, cause: DedupUnavailable) -> None:
        super().__init__(f"{sent} replies sent, not recorded: {cause}")
        self.sent = sent


def _replied(delivery: Delivery) -> int:
    value = (delivery.headers or {}).get(REPLIED)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ReplySender(Protocol):
    """What the consumer needs to send replies: ``worker.reply_client.ReplyClient``, or a stand-in
    (``botrelay dev`` prints them, the testing kit records them)."""

    def url(self, app_id: str, bot: str) -> str: ...

    async def send(self, url: str, body: dict[str, Any]) -> dict[str, Any]: ...


class Consumer:
    def __init__(self, settings: Settings, bot: Bot, dedup: DedupStore, replies: ReplySender,
                 mover: Mover, metrics: WorkerMetrics, lookup: Lookup | None = None) -> None:
        self.settings = settings
        self.lookup = lookup
        self.bot = bot
        self.dedup = dedup
        self.replies = replies
        self.mover = mover
        self.metrics = metrics
        # Per conversation with a delivery running: the deliveries waiting behind it.
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._running: set[asyncio.Task[Any]] = set()
        self._jobs: set[asyncio.Task[int]] = set()
        self._abandoned: set[asyncio.Task[int]] = set()
        self.ordered = settings.ordering == "conversation"
        # Read at scrape time: no gauge update on the per-delivery path.
        metrics.in_flight.set_function(lambda: self.in_flight)

    async def on_delivery(self, delivery: Delivery) -> None:
        """Consumer callback. A delivery joins its conversation's line before the first await,
        so deliveries of one conversation run in the order the broker delivered them. The
        common case (nobody ahead) costs two dict operations, no future."""
        conversation = str((delivery.headers or {}).get(CONVERSATION) or "")
        line = self._lines.get(conversation)
        turn: asyncio.Future[None] | None = None
        if line is None:
            self._lines[conversation] = deque()
        else:
            turn = asyncio.get_running_loop().create_future()
            line.append(turn)
        self.in_flight += 1
        self.idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            if turn is not None:
                await turn
            await self.process(delivery)
        finally:
            self._running.discard(task)
            try:
                # Only the holder of the turn passes it on. A waiter cancelled in line (the
                # connection dropped) finds its turn cancelled with it, or still pending: it
                # just leaves, and the holder skips it.
                if turn is None or (turn.done() and not turn.cancelled()):
                    self._next_in_line(conversation)
                else:
                    turn.cancel()
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()

    def _next_in_line(self, conversation: str) -> None:
        line = self._lines[conversation]
        while line:
            turn = line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del self._lines[conversation]

    async def cancel_in_flight(self, timeout: float = 5.0) -> None:
        """Give up on the deliveries still running (shutdown past its grace): each releases its
        dedup claim, so the broker's redelivery is taken up at once instead of after the lease;
        none is acked, so the broker redelivers them all."""
        tasks = [t for t in self._running if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def process(self, delivery: Delivery) -> None:
        attempt = attempt_of(delivery)
        headers = delivery.headers or {}
        fields: dict[str, Any] = {"key": delivery.message_id, "attempt": attempt,
                                  "trigger": headers.get(TRIGGER),
                                  "conversation": headers.get(CONVERSATION)}
        outcome = Outcome.DEAD_LETTERED
        ctx = Context()
        try:
            try:
                result = await self._run(delivery, ctx)
            except (PayloadError, PermanentError) as exc:
                await self._unhold(ctx)
                await self.mover.to_dead(delivery, exc, permanent=True)
                fields.update(error=str(exc), outcome=outcome.value)
                log.warning("dead-lettered: permanent failure", extra=fields)
                return
            except DedupUnavailable as exc:
                self.metrics.dedup_unavailable.inc()
                extra = {REPLIED: exc.sent} if isinstance(exc, Unrecorded) else None
                delay = await self.mover.to_retry(delivery, attempt=attempt,
                                                  delay=self.settings.retry_delays[0],
                                                  extra=extra)
                outcome = Outcome.DELAYED
                log.warning("delayed: dedup store unavailable, not replying unrecorded",
                            extra={**fields, "delay": delay, "error": str(exc),
                                   "outcome": outcome.value})
                return
            except RateLimited as exc:
                # Waiting for our own budget is no failure of the message: no attempt spent.
                delay = pick_delay(self.settings.retry_delays, exc.delay)
                await self._hold(ctx, delay)
                await self.mover.to_retry(delivery, attempt=attempt, delay=delay)
                outcome = Outcome.DELAYED
                log.info("delayed: outbound rate limit",
                         extra={**fields, "delay": delay, "outcome": outcome.value})
                return
            except Exception as exc:  # Retry, TransientError, or a bug in the handler
                outcome = await self._fail(delivery, attempt, exc, fields, ctx)
                return
            if result.outcome is Outcome.BUSY:
                # Another live worker holds the claim: come back after the shortest delay,
                # with the conversation's later messages waiting behind this one.
                delay = self.settings.retry_delays[0]
                await self._hold(ctx, delay)
                await self.mover.to_retry(delivery, attempt=attempt, delay=delay)
                outcome = Outcome.DELAYED
            elif result.outcome is Outcome.PARKED:
                # An earlier message of this conversation is waiting for a retry: wait behind
                # it, in the same delay queue, without spending an attempt.
                await self.mover.to_retry(delivery, attempt=attempt, delay=result.delay)
                outcome = Outcome.PARKED
            else:
                await delivery.ack()
                outcome = result.outcome
            fields["outcome"] = outcome.value
            # A line per answered message would cost more than the rest of its path; a message
            # that has to wait (delayed, parked) stays at info.
            level = logging.INFO if outcome in (Outcome.DELAYED, Outcome.PARKED) else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "settled", extra=fields)
            if result.text is not None and log.isEnabledFor(logging.DEBUG):
                log.debug("message text", extra={**fields, "text": result.text})
        except PUBLISH_ERRORS as exc:
            # Could not move or ack it (broker gone): the broker redelivers it, dedup holds.
            outcome = Outcome.UNSETTLED
            log.error("could not settle delivery; the broker will redeliver it",
                      extra={**fields, "error": repr(exc), "outcome": outcome.value})
            with contextlib.suppress(*PUBLISH_ERRORS):
                await delivery.nack(requeue=True)
        finally:
            self.metrics.deliveries.labels(outcome.value).inc()

    async def _fail(self, delivery: Delivery, attempt: int, exc: Exception,
                    fields: dict[str, Any], ctx: Context) -> Outcome:
        fields = {**fields, "error": f"{type(exc).__name__}: {exc}"}
        if attempt >= self.settings.max_attempts:
            await self._unhold(ctx)
            await self.mover.to_dead(delivery, exc, permanent=False)
            log.warning("dead-lettered: attempts exhausted",
                        extra={**fields, "outcome": Outcome.DEAD_LETTERED.value})
            return Outcome.DEAD_LETTERED
        wanted = exc.delay if isinstance(exc, Retry) and exc.delay is not None else (
            delay_for_attempt(self.settings.retry_delays, attempt))
        delay = pick_delay(self.settings.retry_delays, wanted)
        await self._hold(ctx, delay)
        await self.mover.to_retry(delivery, attempt=attempt + 1, delay=delay)
        level = logging.INFO if isinstance(exc, Retry | TransientError) else logging.WARNING
        log.log(level, "retrying later",
                extra={**fields, "delay": delay, "outcome": Outcome.RETRIED.value},
                exc_info=level == logging.WARNING)
        return Outcome.RETRIED

    async def _hold(self, ctx: Context, delay: float) -> None:
        """Make the conversation's later messages wait behind this one (ordered mode)."""
        if ctx.key is not None and ctx.pen is not None:
            try:
                await self.dedup.hold(ctx.key, ctx.pen, delay)
            except DedupUnavailable:
                log.warning("could not hold the conversation; later messages may overtake",
                            extra={"key": ctx.key})

    async def _unhold(self, ctx: Context) -> None:
        """This message leaves its conversation's pen for good (dead-lettered)."""
        if ctx.key is not None and ctx.pen is not None:
            with contextlib.suppress(DedupUnavailable):
                await self.dedup.unhold(ctx.key, ctx.pen)

    async def _run(self, delivery: Delivery, ctx: Context) -> Result:
        callback = parse_body(delivery.body)
        msg = callback.message
        if msg is None or callback.ignore_reason is not None or self.bot.is_own(msg):
            return IGNORED
        key = ctx.key = callback.dedup_key
        if self.ordered:
            ctx.pen = f"{callback.app_id}:{callback.source}:{callback.conversation_id}"
        claim = await self.dedup.claim(key, ctx.pen)
        ctx.unsure = claim.unsure
        ctx.last_attempt = attempt_of(delivery) >= self.settings.max_attempts
        if claim.status is Status.DONE:
            return DUPLICATE
        if claim.status is Status.PARKED:
            return Result(Outcome.PARKED, delay=claim.delay or self.settings.retry_delays[0])
        if claim.status is Status.BUSY:
            return BUSY
        if _replied(delivery) > claim.sent:
            claim = replace(claim, sent=_replied(delivery))
        sent = await self._answer(msg, key, claim, ctx)
        received = (delivery.headers or {}).get(RECEIVED_AT)
        if sent and isinstance(received, int):
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - received / 1000))
        return Result(Outcome.REPLIED if sent else Outcome.NO_REPLY, sent, text=msg.text)

    async def _answer(self, msg: Message, key: str, claim: Claim, ctx: Context) -> int:
        """Run the handler and deliver its replies in a task of their own (``_job``), which
        owns the claim from here on: it marks the key done or releases it.

        This task only waits for it. Losing the broker connection cancels consumer tasks: a
        job still in the handler is cancelled with it, but one that is delivering runs to the
        end, so the redelivery finds the key done instead of answering again. A handler that
        swallows its cancellation at ``BOTRELAY_HANDLER_TIMEOUT`` is abandoned after
        ``CANCEL_GRACE``: it must neither hold its conversation and a delivery slot for ever
        nor reply after its time is up (the job checks ``ctx.timed_out`` before sending)."""
        job = asyncio.ensure_future(self._job(msg, key, claim, ctx))
        self._jobs.add(job)
        job.add_done_callback(self._job_done)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer: asyncio.TimerHandle

        def overrun() -> None:
            if not ctx.delivering:  # still in the handler: stop it, give it a grace to stop
                ctx.timed_out = True
                job.cancel()
                nonlocal timer
                timer = loop.call_later(CANCEL_GRACE, wake)

        job.add_done_callback(wake)
        timer = loop.call_later(self.settings.handler_timeout, overrun)
        try:
            await waiter  # cancelling this task cancels the waiter only, not the job
        except asyncio.CancelledError:
            if not ctx.delivering:
                job.cancel()  # it releases the claim; give it a moment to do so
                await asyncio.wait({job}, timeout=CANCEL_GRACE)
            raise
        finally:
            timer.cancel()
            job.remove_done_callback(wake)
        if not job.done():  # the grace ran out: it swallowed its cancellation
            log.error("a handler ignored its cancellation; abandoned it",
                      extra={"conversation": msg.conversation_id})
            self._abandoned.add(job)
            with contextlib.suppress(DedupUnavailable):
                await self.dedup.release(key, claim.token, pen=ctx.pen)
        if ctx.timed_out:
            raise TransientError(
                f"handler did not finish within {self.settings.handler_timeout:g}s")
        return job.result()

    def _job_done(self, job: asyncio.Task[int]) -> None:
        self._jobs.discard(job)
        self._abandoned.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved: an abandoned job's late result is dropped on purpose

    async def _job(self, msg: Message, key: str, claim: Claim, ctx: Context) -> int:
        """Handler, then replies, then the key marked done; on any failure the claim is
        released so another attempt can take it. Never sends a reply whose predecessor could
        not be recorded (``Unrecorded``)."""
        try:
            started = time.perf_counter()
            try:
                replies = await self.bot.dispatch(msg)
            finally:
                self.metrics.handler_seconds.observe(time.perf_counter() - started)
            if ctx.timed_out:  # it swallowed its cancellation and returned late: no replies
                raise TransientError(
                    f"handler did not finish within {self.settings.handler_timeout:g}s")
            # Only a bot that replies needs to know who it is (webhook events name no bot).
            url = self.replies.url(msg.app_id, self.bot.sender_uid(msg)) if replies else ""
            # Every body first: an invalid reply fails the message before anything is sent.
            bodies = [reply.body(msg, muid(key, i)) for i, reply in enumerate(replies)]
            ctx.delivering = True  # from here a reply may go out
            for i in range(claim.sent, len(bodies)):
                if not self.dedup.liveness.valid(claim.owner):
                    # Another worker may take this claim over any moment now: never send
                    # alongside it. What was sent is recorded; the rest goes on elsewhere.
                    raise NotAlive("this worker's liveness lapsed before a reply; not sending")
                if ctx.unsure and await self._stored(url, bodies[i], ctx):
                    log.info("reply found stored by an earlier attempt; not sent again",
                             extra={"key": key, "muid": bodies[i].get("muid")})
                else:
                    ctx.sending = True
                    await self.replies.send(url, bodies[i])
                    ctx.sending = False
                ctx.unsure = False
                if i + 1 < len(bodies):
                    try:
                        await self.dedup.progress(key, i + 1, ctx.pen)
                    except DedupUnavailable as exc:
                        raise Unrecorded(i + 1, exc) from exc
            try:
                await self._mark_done(key, claim.token, ctx.pen)
            except DedupUnavailable as exc:
                raise Unrecorded(max(len(bodies), claim.sent), exc) from exc
        except BaseException as exc:
            # A send that raised may still have been stored (a timeout after the request was
            # written, a lost answer): the next attempt looks it up before sending it again.
            # A rate-limit wait raises before any request is made.
            unsure = (ctx.sending or ctx.unsure) and not isinstance(exc, RateLimited)
            with contextlib.suppress(DedupUnavailable):
                await self.dedup.release(key, claim.token, unsure=unsure, pen=ctx.pen)
            raise
        return len(bodies)

    async def _stored(self, url: str, body: dict[str, Any], ctx: Context) -> bool:
        """Was this reply stored by an attempt whose outcome is unknown? Only asked on that
        path. A lookup that fails sends nothing now (the message is retried, still unsure),
        except on the last attempt: a rare duplicate is the lesser harm than no answer."""
        found = await stored(self.lookup, url, body)
        if found is not None:
            return found
        if ctx.last_attempt:
            return False
        raise TransientError("could not look up whether an earlier reply was stored")

    async def _mark_done(self, key: str, token: str, pen: str | None) -> None:
        """The replies are out: recording that must not fail lightly, or a redelivery would
        answer again. Keep trying for a few seconds (well within the lease)."""
        for pause in (0.0, 0.2, 0.5, 1.0, 2.0):
            if pause:
                await asyncio.sleep(pause)
            try:
                await self.dedup.done(key, token, pen)
                return
            except DedupUnavailable:
                log.warning("could not record a sent reply yet; retrying", extra={"key": key})
        await self.dedup.done(key, token, pen)
