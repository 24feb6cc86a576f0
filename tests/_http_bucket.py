"""A real HTTP server on 127.0.0.1 that serves weight files as the public bucket does (tests only).

It answers ``Range`` requests, sends an MD5 ``ETag``, and can misbehave on purpose: drop a connection
halfway, corrupt bytes, or send slowly (so that several processes are seen downloading at once).
Every request is logged with its path and ``Range`` header.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/models/"


class Bucket:
    """What the server serves and how it misbehaves."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()  # send half of the body, then close the connection
        self.corrupt: set[str] = set()  # flip bytes but announce the original's MD5 ETag
        self.slow: dict[str, float] = {}  # seconds the body of this path takes to send, in 20 pieces
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    def put(self, base_url: str, url: str, data: bytes) -> None:
        """Serve ``data`` at ``url`` (a URL under ``base_url``)."""
        self.files[PREFIX + url[len(base_url):].lstrip("/")] = data

    def count(self, path: str) -> int:
        """Requests made for ``path`` (``/models/...``)."""
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path)

    def log(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((path, range_header))


class _Handler(BaseHTTPRequestHandler):
    bucket: Bucket

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        bucket = self.bucket
        bucket.log(self.path, self.headers.get("Range"))
        data = bucket.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        if self.path in bucket.corrupt:
            data = data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if self.path in bucket.drop_once:
            bucket.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        seconds = bucket.slow.get(self.path)
        if not seconds:
            self.wfile.write(body)
            return
        piece = -(-len(body) // 20)
        try:
            for i in range(0, len(body), piece):
                self.wfile.write(body[i:i + piece])
                self.wfile.flush()
                time.sleep(seconds / 20)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-transfer
            self.close_connection = True


@contextmanager
def serve() -> Iterator[tuple[str, Bucket]]:
    """``(base_url, bucket)`` of a server running in a thread for the duration of the block."""
    bucket = Bucket()
    handler = type("BoundHandler", (_Handler,), {"bucket": bucket})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/models", bucket
    finally:
        httpd.shutdown()
        httpd.server_close()


def publish(bucket: Bucket, base_url: str, variant, encoder: Path | bytes, classifiers: list[Path | bytes]) -> None:
    """Serve ``encoder`` and ``classifiers`` (seeds 0..) at the variant's published URLs."""
    def data(item: Path | bytes) -> bytes:
        return item if isinstance(item, bytes) else Path(item).read_bytes()

    bucket.put(base_url, variant.encoder_url(base_url), data(encoder))
    for k, classifier in enumerate(classifiers):
        bucket.put(base_url, variant.classifier_url(k, base_url), data(classifier))
