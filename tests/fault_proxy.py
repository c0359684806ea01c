"""A loopback HTTP proxy in front of an S3 server that fails a share of the requests.

    with FaultProxy(upstream="http://127.0.0.1:8333", share=0.3, seed=1) as proxy:
        ... boto3 with endpoint_url=proxy.url ...

Each request, with probability `share`, gets one fault: a 503 SlowDown, a 500
InternalError, a reset connection (RST, no answer), or a slow answer (delayed, then
forwarded). Otherwise it is forwarded unchanged, Host header included, so SigV4
signatures stay valid. Deterministic for a seed and an order of requests.

`corrupt_bodies=N` flips one byte in the body of each of the first N uploads (PUTs with a
body: PutObject, UploadPart), headers untouched: what a bad NIC or a broken middlebox
would do. The signature still holds (over http botocore signs the payload's hash, which
SeaweedFS does not check), so only a checksum the store verifies catches it.
`proxy.corrupted` lists the paths of those requests.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slow-down", "internal-error", "reset", "slow")
_ERRORS = {
    "slow-down": (503, "SlowDown", "Please reduce your request rate."),
    "internal-error": (500, "InternalError", "We encountered an internal error. Please try again."),
}


class FaultProxy:
    def __init__(
        self, upstream: str, share: float, seed: int = 0, slow_seconds: float = 0.3, corrupt_bodies: int = 0
    ) -> None:
        parts = urlsplit(upstream)
        self.corrupt_bodies = corrupt_bodies
        self.corrupted: list[str] = []
        self.upstream = (parts.hostname, parts.port)
        self.share = share
        self.slow_seconds = slow_seconds
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, **{fault: 0 for fault in FAULTS}}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def choose(self) -> str | None:
        with self.lock:
            fault = self.random.choice(FAULTS) if self.random.random() < self.share else None
            self.counts[fault or "forwarded"] += 1
            return fault

    def maybe_corrupt(self, method: str, path: str, body: bytes | None) -> bytes | None:
        """An upload's body with its middle byte flipped, while `corrupt_bodies` are left to corrupt."""
        if not body or method != "PUT":
            return body
        with self.lock:
            if len(self.corrupted) >= self.corrupt_bodies:
                return body
            self.corrupted.append(path)
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]

    @property
    def faults(self) -> int:
        return sum(count for name, count in self.counts.items() if name != "forwarded")


def _handler(proxy: FaultProxy) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for uploads

        def log_message(self, *args) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = proxy.maybe_corrupt(self.command, self.path, self.rfile.read(length) if length else None)
            fault = proxy.choose()
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault in _ERRORS:
                status, code, message = _ERRORS[fault]
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if fault == "slow":
                time.sleep(proxy.slow_seconds)
            connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            headers = {name: value for name, value in self.headers.items() if name.lower() != "expect"}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler
