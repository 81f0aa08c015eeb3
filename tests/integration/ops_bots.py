"""Bots for the operations tests, loaded by worker child processes (``--app``)."""

from __future__ import annotations

import asyncio

from botrelay.worker import Bot, Message

slow = Bot()


@slow.on_text()
async def slow_echo(msg: Message) -> str:
    """``sleep <seconds> ...`` takes that long, then echoes like the echo bot."""
    words = (msg.text or "").split()
    if len(words) > 1 and words[0] == "sleep":
        await asyncio.sleep(float(words[1]))
    return f"echo: {msg.text}"
