"""The ingress's disk spool: callbacks the broker could not take, kept until the forwarder
(``ingress/forwarder.py``) has each one confirmed by the broker.

The store is SQLite in WAL mode, from the standard library: a commit is one append to the log
plus one fsync (``synchronous=FULL``), the log carries a checksum per frame, and SQLite's
recovery on open drops a frame that was torn by a crash. The ingress answers ``200 spooled``
only after the commit returned, so a torn tail is never a callback that was acknowledged. What
SQLite cannot notice, a record damaged after its commit, is caught by a crc32 per record: such a
record is logged, counted, deleted and skipped, and the rest is forwarded. A file that is not a
database at all is moved aside (``spool.db.corrupt-<time>``) and a new spool started.

sqlite3 calls block, so they run on one thread of their own; appends are grouped: the callbacks
that arrive while a commit is under way go into the next commit together, so a burst costs one
fsync per batch rather than one per callback. One process owns a directory (an ``flock`` on
``lock``); every ingress replica needs a directory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from botrelay.shared.errors import BotrelayError
from botrelay.shared.metrics import IngressMetrics

log = logging.getLogger("botrelay.spool")

DB_NAME = "spool.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    message_id TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL
)
"""
# What a row costs beyond its three payload fields, roughly (ids, times, b-tree cell): counted
# against BOTRELAY_SPOOL_MAX_BYTES so many tiny callbacks cannot outgrow the bound.
_ROW_OVERHEAD = 32


class SpoolFull(Exception):
    """Taking this callback would pass BOTRELAY_SPOOL_MAX_BYTES."""


class SpoolUnavailable(BotrelayError):
    """The spool directory cannot be opened: the ingress does not start (``botrelay: ...``)."""


class SpoolLocked(SpoolUnavailable):
    """Another process already owns the spool directory."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    received_at: float
    message_id: str
    headers: dict[str, Any]
    body: bytes
    size: int  # as stored, what it counts against BOTRELAY_SPOOL_MAX_BYTES


def _size(message_id: bytes, headers: bytes, body: bytes) -> int:
    return len(message_id) + len(headers) + len(body) + _ROW_OVERHEAD


def _crc(message_id: bytes, headers: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(headers, zlib.crc32(message_id)))


@dataclass(slots=True)
class _Append:
    row: tuple[float, str, bytes, bytes, int]
    size: int
    future: asyncio.Future[int]


class Spool:
    """``await open()`` before use, ``await close()`` after. Every method runs on the event
    loop; the counters (``depth``, ``bytes``) include appends still being committed."""

    def __init__(self, directory: str | Path, max_bytes: int, metrics: IngressMetrics) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.depth = 0
        self.bytes = 0
        self.full = False  # a callback was refused for room; until the forwarder frees some
        self._oldest: float | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._queue: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        metrics.spool_oldest_age.set_function(self._oldest_age)

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._run(self._open_sync)
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown(wait=False)
            raise SpoolUnavailable(f"cannot open the spool in {self.directory}: {exc}") from exc
        self._publish_gauges()
        if self.depth:
            self._nonempty.set()
            self._empty.clear()
            log.warning("spool %s holds %d callbacks (%d bytes) from before; forwarding them",
                        self.path, self.depth, self.bytes)

    async def close(self) -> None:
        if self._writer is not None:
            # Appends already taken are committed: their senders are waiting for that answer.
            with contextlib.suppress(Exception):
                await self._writer
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    # --- the request path ---------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return self.depth == 0

    @property
    def has_room(self) -> bool:
        return not self.full and self.bytes < self.max_bytes

    async def append(self, body: bytes, message_id: str, headers: dict[str, Any]) -> int:
        """Store one callback and return its id once the commit is on disk; ``SpoolFull`` when
        it would pass the bound, ``SpoolUnavailable`` when the write failed."""
        mid, hdrs = message_id.encode(), orjson.dumps(headers)
        size = _size(mid, hdrs, body)
        if self.bytes + size > self.max_bytes:
            self.full = True
            raise SpoolFull(f"the spool holds {self.bytes} of {self.max_bytes} bytes")
        # Counted at once, so concurrent appends cannot all pass the bound together, and a
        # callback arriving meanwhile sees the spool non-empty and queues behind this one.
        self.bytes += size
        self.depth += 1
        self._empty.clear()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append((time.time(), message_id, hdrs, body, _crc(mid, hdrs, body)),
                                   size, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="spool-writer")
        return await asyncio.shield(future)

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                ids = await self._run(self._insert_sync, [a.row for a in batch])
            except Exception as exc:
                log.error("could not write %d callbacks to the spool: %r", len(batch), exc)
                failed = SpoolUnavailable(f"could not write to the spool: {exc!r}")
                for a in batch:
                    self.bytes -= a.size
                    self.depth -= 1
                    a.future.set_exception(failed)
                if self.depth <= 0:
                    self._empty.set()
                self._publish_gauges()
                continue
            if self._oldest is None:
                self._oldest = batch[0].row[0]
            for a, id_ in zip(batch, ids, strict=True):
                a.future.set_result(id_)
            self._publish_gauges()
            self._nonempty.set()

    # --- the forwarder's side -----------------------------------------------------------------

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def oldest(self, limit: int) -> list[Record]:
        """Up to ``limit`` committed records, oldest first. Damaged ones are logged, counted,
        deleted and left out."""
        records: list[Record]
        bad: list[tuple[int, int]]
        records, bad = await self._run(self._read_sync, limit)
        if bad:
            self.metrics.spool_corrupt.inc(len(bad))
            await self._forget(bad)
        return records

    async def delete(self, records: Sequence[Record]) -> None:
        """Forget records the broker has confirmed."""
        await self._forget([(r.id, r.size) for r in records])

    async def _forget(self, rows: list[tuple[int, int]]) -> None:
        if not rows:
            return
        self._oldest = await self._run(self._delete_sync, [id_ for id_, _ in rows])
        self.depth -= len(rows)
        self.bytes -= sum(size for _, size in rows)
        self.full = False
        if self.depth <= 0:
            self.depth, self.bytes = 0, 0
            self._nonempty.clear()
            self._empty.set()
        self._publish_gauges()

    # --- helpers ------------------------------------------------------------------------------

    def _oldest_age(self) -> float:
        return max(0.0, time.time() - self._oldest) if self._oldest is not None else 0.0

    def _publish_gauges(self) -> None:
        self.metrics.spool_depth.set(self.depth)
        self.metrics.spool_bytes.set(self.bytes)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- on the spool's thread ----------------------------------------------------------------

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"another process uses the spool in {self.directory}") from None
        self._lock_fd = fd
        try:
            self._open_db()
        except BaseException:
            self._close_sync()
            raise

    def _open_db(self) -> None:
        try:
            self._db = self._connect()
        except sqlite3.OperationalError:
            raise  # the disk or the directory, not the file's content: nothing to move aside
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            log.error("the spool %s is not a readable database (%s); moved it to %s and "
                      "started an empty one", self.path, exc, aside)
            self.metrics.spool_corrupt.inc()
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            self._db = self._connect()
        count, size, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(message_id AS BLOB)) + length(headers)"
            f" + length(body) + {_ROW_OVERHEAD}), 0), MIN(received_at) FROM callbacks"
        ).fetchone()
        self.depth, self.bytes, self._oldest = int(count), int(size), oldest

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # Set before the table exists, so a drained spool can give its pages back.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            # FULL: every commit is fsync'd before it returns; the 200 comes after that.
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            # Text comes back as bytes: a damaged message id must fail its checksum, not the
            # query that reads it.
            db.text_factory = bytes
        except BaseException:
            db.close()
            raise
        return db

    def _insert_sync(self, rows: list[tuple[float, str, bytes, bytes, int]]) -> list[int]:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = []
            for row in rows:
                cur = db.execute("INSERT INTO callbacks (received_at, message_id, headers, body,"
                                 " crc) VALUES (?, ?, ?, ?, ?)", row)
                ids.append(int(cur.lastrowid or 0))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return ids

    def _read_sync(self, limit: int) -> tuple[list[Record], list[tuple[int, int]]]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT id, received_at, message_id, headers, body, crc FROM callbacks"
            " ORDER BY id LIMIT ?", (limit,)).fetchall()
        records: list[Record] = []
        bad: list[tuple[int, int]] = []
        for id_, received_at, message_id, headers, body, crc in rows:
            mid, headers, body = bytes(message_id), bytes(headers), bytes(body)
            try:
                if _crc(mid, headers, body) != crc:
                    raise ValueError("checksum mismatch")
                decoded = orjson.loads(headers)
                if not isinstance(decoded, dict):
                    raise ValueError("headers are not an object")
                records.append(Record(int(id_), float(received_at), mid.decode(), decoded,
                                      body, _size(mid, headers, body)))
            except (ValueError, UnicodeDecodeError) as exc:
                # Never the body in the log: it is a user's message.
                log.error("spool record %s is damaged (%s); skipped", id_, exc)
                bad.append((int(id_), _size(mid, headers, body)))
        return records, bad

    def _delete_sync(self, ids: list[int]) -> float | None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM callbacks WHERE id = ?", [(i,) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        row = db.execute("SELECT received_at FROM callbacks ORDER BY id LIMIT 1").fetchone()
        if row is None:
            # Drained: hand the pages and the log back to the file system.
            db.execute("PRAGMA incremental_vacuum")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return None
        return float(row[0])

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
