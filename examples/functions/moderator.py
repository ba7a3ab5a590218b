#!/usr/bin/env python3
"""moderator: a chatlog moderation function (docs/protocol.md section 9), Python stdlib only.

It deletes every message whose text holds a word of its list (whole words, any case), by
answering the delivery with a `chat.message.deleted` for it. chatlog stores that only in rooms
where the operator granted the function moderation (`chatlog functions add ... --moderates
<room>`); the web client then shows "Removed by moderation.".

    CHATLOG_FUNCTION_SECRET=<the secret given to `chatlog functions add`> \
        python3 examples/functions/moderator.py [--words spam,scam] [--port 8091]

The list is --words (comma-separated) or CHATLOG_MODERATION_WORDS, else a short default.
"""

import os
import re

from chatlog_function import serve

DEFAULT_WORDS = "spam,scam,phishing"


def matcher(words):
    """A function telling whether a text holds one of `words` as a whole word."""
    words = [w.strip().lower() for w in words if w.strip()]
    if not words:
        return lambda _text: False
    pattern = re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE
    )
    return lambda text: pattern.search(text) is not None


def decide(args):
    banned = matcher(args.words.split(","))

    def on_event(event):
        if event["type"] != "chat.message.posted":
            return None
        if not banned(str(event["data"].get("text", ""))):
            return None
        # The message's id is the id of the event that posted it.
        return "chat.message.deleted", {"message_id": event["id"]}

    return on_event


def words_arg(parser):
    parser.add_argument(
        "--words", default=os.environ.get("CHATLOG_MODERATION_WORDS", DEFAULT_WORDS)
    )


if __name__ == "__main__":
    serve("moderator", decide, 8091, __doc__.splitlines()[0], words_arg)
