"""The echo bot: replies ``echo: <text>`` to any text, and the help text to ``/help``."""

from botrelay import Bot, Message

bot = Bot()


@bot.command("help")  # text starting with "/help"
async def help_(msg: Message) -> str:
    return "Try /weather <city>"


@bot.on_text()  # any other text message
async def echo(msg: Message) -> str:
    return f"echo: {msg.text}"
