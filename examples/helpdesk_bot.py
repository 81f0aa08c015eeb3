"""A help-desk bot: commands with arguments, custom and media replies, a reply to another receiver,
group manners (it answers in a group only when mentioned) and webhook events.

    botrelay dev --app examples.helpdesk_bot:bot

- ``/weather <city>``: a custom message (``category: custom``, type ``weather``) with a text
  fallback for clients that do not render it.
- ``/remind <minutes> <what>``: parses its arguments, answers with usage help when they are wrong.
- ``/ticket <problem>``: confirms to the user and files the problem in the ``support-team`` group.
- ``/cat``: an image by URL.
- A shared location (custom message ``location``): the weather there, as a custom message.
- ``message_edited`` (webhook): says that edits are not re-read.
- ``message_reaction_added`` with 👎 (webhook): asks the reacting user what went wrong.
- ``group_member_joined`` / ``group_member_added`` (webhook): welcomes the new members.
"""

from __future__ import annotations

from botrelay.worker import Bot, Message, Reply

SUPPORT_GROUP = "support-team"
CAT_URL = "https://example.invalid/files/cat.png"

bot = Bot(uid="demo_bot", mention_in_groups=True)


@bot.command("help", "start")
async def help_(msg: Message) -> str:
    return ("Commands: /weather <city>, /remind <minutes> <what>, /ticket <problem>, /cat. "
            "In a group, mention me.")


def _forecast(place: str) -> Reply:
    # A real bot would ask a weather service; the example answers the same for every place.
    return Reply(
        text=f"Weather for {place}: sunny, 21 °C",
        custom_type="weather",
        custom_data={"place": place, "forecast": "sunny", "celsius": 21},
        metadata={"source": "helpdesk-example"},
    )


@bot.command("weather")
async def weather(msg: Message) -> str | Reply:
    if not msg.args:
        return "Usage: /weather <city>"
    return _forecast(msg.args)


@bot.command("remind")
async def remind(msg: Message) -> str:
    minutes, _, what = msg.args.partition(" ")
    if not minutes.isdigit() or not what.strip() or int(minutes) == 0:
        return "Usage: /remind <minutes> <what>, e.g. /remind 10 tea"
    unit = "minute" if int(minutes) == 1 else "minutes"
    return f"OK, I will remind you about {what.strip()} in {int(minutes)} {unit}."


@bot.command("ticket")
async def ticket(msg: Message) -> list[Reply] | str:
    if not msg.args:
        return "Usage: /ticket <problem>"
    return [
        Reply(text=f"Thanks, ticket filed: {msg.args}"),
        Reply(text=f"New ticket from <@uid:{msg.sender}>: {msg.args}",
              receiver=SUPPORT_GROUP, receiver_type="group",
              metadata={"ticket": {"from": msg.sender, "message": msg.id}}),
    ]


@bot.command("cat")
async def cat(msg: Message) -> Reply:
    return Reply(media_url=CAT_URL, media_type="image", text="Here is a cat.")


@bot.on("after_message", category="custom", type="location")
@bot.on("message_sent", category="custom", type="location")
async def location(msg: Message) -> Reply | None:
    where = msg.custom_data or {}
    if "latitude" not in where or "longitude" not in where:
        return None
    return _forecast(f"{where['latitude']:.2f}, {where['longitude']:.2f}")


@bot.on("message_edited")
async def edited(msg: Message) -> str:
    return "I only read new messages: send it again if you want me to answer the new text."


@bot.on("message_reaction_added")
async def reaction(msg: Message) -> str | None:
    if msg.reaction != "👎":
        return None
    return "Sorry about that! Tell me what went wrong with /ticket <problem>."


@bot.on(["group_member_joined", "group_member_added"])
async def welcome(msg: Message) -> str | None:
    newcomers = [uid for uid in msg.members if uid != bot.uid]
    if not newcomers:
        return None
    names = ", ".join(f"<@uid:{uid}>" for uid in newcomers)
    return f"Welcome, {names}! Mention me with /help to see what I can do."


@bot.on_text()
async def fallback(msg: Message) -> str:
    return "I did not understand that. Try /help."
