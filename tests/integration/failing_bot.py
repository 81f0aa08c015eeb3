"""A bot whose failures an operator can fix: until ``HEALED`` is set, a text starting with
``perm`` raises ``PermanentError`` and one starting with ``flaky`` raises a transient error, so
those callbacks reach the dead-letter queue through the real pipeline; once healed, every text
is echoed, so a replayed letter gets its reply."""

from __future__ import annotations

from botrelay.worker import Bot, Message, PermanentError

HEALED = {"value": False}

bot = Bot()


@bot.on_text()
async def fragile_echo(msg: Message) -> str:
    text = msg.text or ""
    if not HEALED["value"]:
        if text.startswith("perm"):
            raise PermanentError("the bot cannot handle this yet")
        if text.startswith("flaky"):
            raise RuntimeError("the weather service is down")
    return f"echo: {text}"
