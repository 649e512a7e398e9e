"""Open-loop load for zero-downtime checks: requests leave at a fixed rate whatever the answers.

A closed-loop client (wrk) slows down when the server does and multiplies fast failures; this
one keeps the schedule, so a gap in service shows up as failed requests. Bounded in count and
time; only for 127.0.0.1 or the project's own containers.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    completed: list[str] = field(default_factory=list)  # the version of each answer, in order


class OpenLoopClient:
    """POST `body` to `url` at `rate` requests/s until stop() or `max_requests`."""

    def __init__(
        self,
        url: str,
        body: object,
        rate: float = 50.0,
        max_requests: int = 6000,
        timeout: float = 10.0,
        version_key: str = "model_version",
    ):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path or "/"
        self.body = json.dumps(body).encode()
        self.rate, self.max_requests, self.timeout = rate, max_requests, timeout
        self.version_key = version_key
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=64)

    def _one(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.request("POST", self.path, self.body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:120]!r}")
            version = str(json.loads(data).get(self.version_key))
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none is fatal
            with self._lock:
                self.result.failures.append(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.result.ok += 1
            self.result.versions[version] += 1
            self.result.completed.append(version)

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.max_requests):
            if self._stop.is_set():
                break
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.result.sent += 1
            self._pool.submit(self._one)

    def __enter__(self) -> OpenLoopClient:
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        return self.result

    def __exit__(self, *exc) -> None:
        self.stop()
