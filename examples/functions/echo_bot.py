#!/usr/bin/env python3
"""echo_bot: a chatlog function (docs/protocol.md section 9), Python standard library only.

It answers `@echo <text>` with the text and `/roll 2d6` with a roll of the dice, in the room
and as a reply to the message. Every delivery's Chatlog-Signature is checked first.

    CHATLOG_FUNCTION_SECRET=<the secret given to `chatlog functions add`> \
        python3 examples/functions/echo_bot.py [--host 127.0.0.1] [--port 8090]
"""

import argparse
import hashlib
import hmac
import json
import os
import random
import re
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# chatlog's deliveries are small: a message's data is at most a few KiB.
MAX_BODY = 64 * 1024
ROLL = re.compile(r"^/roll\s+(\d{1,3})d(\d{1,4})\s*$")


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """Chatlog-Signature is sha256=<hex of HMAC-SHA256(secret, body)>."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


def answer(text: str):
    """The text to post for a message's text, or None."""
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
        return f"{count}d{sides}: {shown} = {sum(rolls)}"
    return None


class Handler(BaseHTTPRequestHandler):
    secret = b""

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.reply(413)
        body = self.rfile.read(length)
        if not signature_ok(self.secret, body, self.headers.get("Chatlog-Signature")):
            return self.reply(401)
        # The runtime delivers whatever the registration's filter matches: only posts matter here.
        if self.headers.get("ce-type") != "chat.message.posted":
            return self.reply(204)
        try:
            data = json.loads(body)
        except ValueError:
            return self.reply(400)
        text = answer(str(data.get("text", "")))
        if text is None:
            return self.reply(204)
        # A CloudEvent in binary mode: attributes in ce-* headers, the data as the body. Without
        # ce-subject it goes to the room of the message answered.
        out = json.dumps({"text": text, "reply_to": self.headers.get("ce-id")}).encode()
        self.send_response(200)
        self.send_header("ce-specversion", "1.0")
        self.send_header("ce-id", str(uuid.uuid4()))
        self.send_header("ce-source", "/examples/echo_bot")
        self.send_header("ce-type", "chat.message.posted")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def reply(self, status: int):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        sys.stderr.write("echo_bot: " + (format % args) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("ECHO_BOT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ECHO_BOT_PORT", "8090")))
    args = parser.parse_args()
    secret = os.environ.get("CHATLOG_FUNCTION_SECRET", "")
    if len(secret) < 16:
        sys.exit("set CHATLOG_FUNCTION_SECRET to the function's secret (16 characters or more)")
    Handler.secret = secret.encode()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"echo_bot listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
