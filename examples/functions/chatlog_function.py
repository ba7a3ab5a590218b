"""chatlog_function: the HTTP side of a chatlog function (docs/protocol.md section 9), Python
standard library only. A function module gives `serve` a name and a `decide(event)`; this checks
every delivery's Chatlog-Signature, hands `decide` the event, and writes its answer back as a
CloudEvent in binary mode (attributes in ce-* headers, the data as the JSON body).

    decide(event) -> None | (ce_type, data)

`event` has `type`, `id`, `subject` (the room) and `data` (the event's data, a dict). An answer
without a subject goes to the room of the event answered.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# chatlog's deliveries are small: a message's data is at most a few KiB.
MAX_BODY = 64 * 1024


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """Chatlog-Signature is sha256=<hex of HMAC-SHA256(secret, body)>."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


def handler(name: str, secret: bytes, decide):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self.reply(400)
            if length < 0 or length > MAX_BODY:
                return self.reply(413)
            body = self.rfile.read(length)
            if not signature_ok(secret, body, self.headers.get("Chatlog-Signature")):
                return self.reply(401)
            try:
                data = json.loads(body)
            except ValueError:
                return self.reply(400)
            event = {
                "type": self.headers.get("ce-type", ""),
                "id": self.headers.get("ce-id", ""),
                "subject": self.headers.get("ce-subject", ""),
                "data": data if isinstance(data, dict) else {},
            }
            answer = decide(event)
            if answer is None:
                return self.reply(204)
            ce_type, out_data = answer
            out = json.dumps(out_data).encode()
            self.send_response(200)
            self.send_header("ce-specversion", "1.0")
            self.send_header("ce-id", str(uuid.uuid4()))
            self.send_header("ce-source", f"/examples/{name}")
            self.send_header("ce-type", ce_type)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def reply(self, status: int):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            sys.stderr.write(f"{name}: " + (format % args) + "\n")

    return Handler


def serve(name: str, decide, default_port: int, describe: str, extra_args=None):
    """Parses --host/--port (and `extra_args(parser)`), then serves until interrupted. The first
    line printed is `<name> listening on http://host:port/`. Returns nothing."""
    parser = argparse.ArgumentParser(description=describe)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args()
    secret = os.environ.get("CHATLOG_FUNCTION_SECRET", "")
    if len(secret) < 16:
        sys.exit("set CHATLOG_FUNCTION_SECRET to the function's secret (16 characters or more)")
    server = ThreadingHTTPServer(
        (args.host, args.port), handler(name, secret.encode(), decide(args))
    )
    host, port = server.server_address[:2]
    print(f"{name} listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
