#!/usr/bin/env python3
"""echo_bot: a chatlog bot (docs/protocol.md section 9), Python standard library only.

It answers `@echo <text>` with the text and `/roll 2d6` with a roll of the dice naming the
roller (`@ada rolled 2d6: …`, which notifies them), in the room and as a reply to the message. Every delivery's Chatlog-Signature is checked first.

    CHATLOG_FUNCTION_SECRET=<the secret given to `chatlog functions add`> \
        python3 examples/functions/echo_bot.py [--host 127.0.0.1] [--port 8090]
"""

import random
import re

from chatlog_function import serve

ROLL = re.compile(r"^/roll\s+(\d{1,3})d(\d{1,4})\s*$")


def reply_text(text: str, author: str):
    """The text to post for `author`'s message `text`, or None."""
    text = text.strip()
    if text.startswith("@echo "):
        echoed = text[len("@echo "):].strip()
        return echoed or None
    m = ROLL.match(text)
    if m:
        count, sides = int(m.group(1)), int(m.group(2))
        if not (1 <= count <= 100 and 2 <= sides <= 1000):
            return "I roll 1 to 100 dice of 2 to 1000 sides"
        rolls = [random.randint(1, sides) for _ in range(count)]
        shown = " + ".join(str(r) for r in rolls)
        return f"@{author} rolled {count}d{sides}: {shown} = {sum(rolls)}"
    return None


def decide(_args):
    def on_event(event):
        # The runtime delivers whatever the registration's filter matches: only posts matter.
        if event["type"] != "chat.message.posted":
            return None
        data = event["data"]
        text = reply_text(str(data.get("text", "")), str(data.get("user", "")))
        if text is None:
            return None
        return "chat.message.posted", {"text": text, "reply_to": event["id"]}

    return on_event


if __name__ == "__main__":
    serve("echo_bot", decide, 8090, __doc__.splitlines()[0])
