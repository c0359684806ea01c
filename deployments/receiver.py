"""Receives S3 event notifications and emits one Prefect event per created object.

    RBEXPORT_WEBHOOK_SECRET=... python -m rbexport.deployments.receiver

Point the store's webhook at `http://<host>:8787/` with the header
`Authorization: Bearer <secret>` (MinIO: `auth_token`; AWS SNS: a subscription URL with
`user:<secret>@`, sent as basic auth). Answers 202 with the number of
events emitted; 401 without the secret, 400 for a body that is not an S3 notification,
411/413 for a missing or too large Content-Length. The export deployment's trigger
(prefect.yaml, export-on-upload) turns the events into runs.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rbexport.notifications import CreatedObject, NotificationError, created_objects

logger = logging.getLogger("rbexport.receiver")

# A refused body is read and dropped up to this size so that the client gets the answer;
# beyond it the connection is simply closed.
DRAIN_LIMIT = 64 * 1024 * 1024


def make_handler(secret: str, max_body: int, emit: Callable[[list[CreatedObject]], None]) -> type:
    expected = secret.encode("utf-8")

    class NotificationHandler(BaseHTTPRequestHandler):
        server_version = "rbexport-receiver"

        def do_GET(self) -> None:  # health check
            self._answer(200, {"status": "ok"})

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if not self._authorized():
                return self._refuse(401, {"error": "missing or wrong secret"}, length)
            if length is None or not length.isdigit():
                return self._refuse(411, {"error": "Content-Length required"}, None)
            if int(length) > max_body:
                return self._refuse(413, {"error": f"body over {max_body} bytes"}, length)
            try:
                objects = created_objects(self.rfile.read(int(length)))
            except NotificationError as error:
                return self._answer(400, {"error": str(error)})
            emit(objects)
            logger.info("%d created objects: %s", len(objects), ", ".join(item.url for item in objects[:5]))
            self._answer(202, {"emitted": len(objects)})

        def _authorized(self) -> bool:
            return hmac.compare_digest(_token(self.headers.get("Authorization", "")), expected)

        def _refuse(self, status: int, body: dict, length: str | None) -> None:
            """Answer, then read and drop the body the client is still sending (up to
            DRAIN_LIMIT) before closing: closing on unread bytes resets the connection,
            and the client sees a broken pipe instead of the answer."""
            self.close_connection = True
            self._answer(status, body)
            remaining = min(int(length), DRAIN_LIMIT) if length and length.isdigit() else 0
            try:
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 64 * 1024))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except OSError:
                pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # one line per request, no headers
            logger.info("%s %s", self.address_string(), format % args)

    return NotificationHandler


def _token(authorization: str) -> bytes:
    """The secret a request carries: `Bearer <secret>`, `<secret>` (MinIO's auth_token), or
    HTTP basic auth with the secret as password (an AWS SNS subscription URL user:secret@)."""
    scheme, _, value = authorization.partition(" ")
    if scheme == "Bearer":
        return value.encode("utf-8")
    if scheme == "Basic":
        try:
            return base64.b64decode(value, validate=True).partition(b":")[2]
        except ValueError:
            return b""
    return authorization.encode("utf-8")


def main() -> int:
    from pydantic import ValidationError

    from rbexport.deployments.settings import ReceiverSettings
    from rbexport.tasks.events import emit_created

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = ReceiverSettings()
    except ValidationError:
        print("rbexport receiver: set RBEXPORT_WEBHOOK_SECRET (the shared secret the store sends)", file=sys.stderr)
        return 2
    handler = make_handler(settings.webhook_secret.get_secret_value(), settings.receiver_max_body, emit_created)
    server = ThreadingHTTPServer((settings.receiver_host, settings.receiver_port), handler)
    logger.info("receiving S3 notifications on http://%s:%d/", settings.receiver_host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
