"""Process management: load the model once, then serve it with uvicorn on 1..N processes.

- The model is loaded (and warmed up) in the parent before workers are forked, so workers share
  its memory copy-on-write and start ready.
- Slow clients cannot hold a worker: a request's headers must arrive within HEADER_TIMEOUT
  (HeaderTimeoutProtocol), its body within BODY_TIMEOUT (serving.api), and beyond
  MAX_CONNECTIONS open connections a worker answers 503.
- A model that cannot be loaded does not stop the server: it stays up, /ready answers 503 with
  the reason (also logged), so the cause is visible instead of a crash loop.
- SIGTERM: each worker first reports not-ready for SHUTDOWN_DRAIN_SECONDS while still serving,
  then closes its listener and finishes in-flight requests within GRACEFUL_TIMEOUT. Keep
  drain + grace below the container's stop grace period (Docker's default is 10 s).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from serving.settings import Settings, SettingsError

log = logging.getLogger("serving.server")
_TIMEOUT_BODY = b'{"detail":"request headers not received in time"}'
HEADER_TIMEOUT_REPLY = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT turns readiness off before stopping."""

    def __init__(self, config: uvicorn.Config, state: Any, drain_seconds: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: after a graceful stop the process exits 0
        # instead of re-raising the signal.
        if self.state.draining:  # a second signal: stop now
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self.state.draining = True
        log.info(
            "%s: reporting not-ready for %.1fs, then finishing in-flight requests (max %.1fs)",
            signal.Signals(sig).name,
            self.drain_seconds,
            self.config.timeout_graceful_shutdown or 0,
        )
        if self.drain_seconds > 0:
            timer = threading.Timer(self.drain_seconds, self._stop)
            timer.daemon = True
            timer.start()
        else:
            self._stop()

    def _stop(self) -> None:
        self.should_exit = True


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's httptools protocol, closing a connection whose request headers have not all
    arrived `seconds` after it opened or after the request's first byte. (uvicorn's own
    keep-alive timeout only runs between requests: a client that connects and sends nothing, or
    sends its headers a byte at a time, would hold the connection forever.)"""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: Any = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(HEADER_TIMEOUT_REPLY)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=header_timeout_protocol(settings.header_timeout),
        limit_concurrency=settings.max_connections,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout)),
        backlog=2048,
    )


def build(settings: Settings) -> tuple[Any, Any]:
    """Load the model (never raising for a bad model) and build the app: (app, state)."""
    from serving.app import ServingState, create_app
    from serving.artifact import ModelLoadError
    from serving.model import load_model

    state = ServingState()
    if settings.fetch_error:
        state.error = f"model not fetched: {settings.fetch_error}"
        log.error("NOT READY: %s", state.error)
        return create_app(settings, state), state
    try:
        model = load_model(
            settings.model_dir,
            name=settings.model_name,
            version=settings.model_version,
            compiled_dir=settings.compiled_dir,
            cache_dir=settings.cache_dir,
            fast_path=settings.fast_path,
        )
    except ModelLoadError as exc:
        state.error = str(exc)
        log.error("NOT READY: model not loaded from %s: %s", settings.model_dir, exc)
    except Exception as exc:  # noqa: BLE001 - stay up and say why, never crash-loop
        state.error = f"{type(exc).__name__}: {exc}"
        log.exception("NOT READY: unexpected error loading the model from %s", settings.model_dir)
    else:
        state.model = model
        log.info(
            "model %s version %s loaded from %s in %.2fs; inference path %s: %s",
            model.name,
            model.version,
            model.source,
            model.load_seconds,
            model.path,
            model.note,
        )
    return create_app(settings, state), state


def run_prefork(config: uvicorn.Config, state: Any, settings: Settings) -> int:
    sock = config.bind_socket()
    children: dict[int, float] = {}
    stopping = False
    restarts: list[float] = []

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                GracefulServer(config, state, settings.drain_seconds).run(sockets=[sock])
            except BaseException:  # noqa: BLE001
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def forward(sig: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(settings.workers):
        spawn()
    log.info("serving on %s:%d with %d workers", settings.host, settings.port, settings.workers)
    failed = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 5:
            log.error("workers keep dying (%d in 60 s): stopping", len(restarts))
            forward(signal.SIGTERM, None)
            failed = 1
            continue
        log.error("worker %d exited with %s: starting a new one", pid, code)
        spawn()
    sock.close()
    return 1 if failed else 0


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"serving: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported: every worker writes its metrics there
        try:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="conveyor-metrics-")
        except OSError as exc:
            log.error("no writable temp dir for multi-process metrics (%s): 1 worker", exc)
            settings = dataclasses.replace(settings, workers=1)
    app, state = build(settings)
    config = _uvicorn_config(app, settings)
    # Start-up objects live as long as the process: keep them out of every future collection
    # (and out of copy-on-write faults in forked workers), then collect as usual.
    gc.freeze()
    gc.enable()
    if settings.workers == 1:
        GracefulServer(config, state, settings.drain_seconds).run()
        return 0
    return run_prefork(config, state, settings)
