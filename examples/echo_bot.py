"""The echo bot, as ``--app examples.echo_bot:bot``: it ships inside botrelay
(``botrelay/echo_bot.py``, what ``botrelay dev`` runs by default), so this module only names it."""

from botrelay.echo_bot import bot

__all__ = ["bot"]
