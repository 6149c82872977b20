"""The local control server: a zmq ROUTER on an owner-only ipc socket, speaking control.proto.

One thread owns the socket and dispatches each request to its handler (`smp.handlers`, the
explicit table from request body to domain call). Quick requests are answered inline; slow ones
(checksum verification, waiting for a commit) complete on other threads through futures, whose
replies are queued and handed back to the socket thread through an inproc wake-up socket. Any
malformed or invalid request gets an error reply; the loop never dies on bad input.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import zmq
from google.protobuf.message import DecodeError

from smp._proto import control_pb2 as pb
from smp.crossnode.coordinator import CrossNode
from smp.errors import BadRequest, SmpError
from smp.handlers import ControlHandlers, Deferred, Status, set_error
from smp.logs import LogThrottle
from smp.service import SnapshotService

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 80 << 20
_POLL_MS = 200
Reply = tuple[bytes, pb.Response]


class ControlServer:
    def __init__(
        self,
        service: SnapshotService,
        crossnode: CrossNode,
        socket_path: str,
        status: Status,
        registration: Callable[[], pb.RegisterResponse],
        executor: Executor,
    ) -> None:
        self.socket_path = socket_path
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._outbox: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self._wake_addr = f"inproc://smp-wake-{id(self)}"
        self._wake_lock = threading.Lock()
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._wake_pull: zmq.Socket[bytes] | None = None
        self._wake_push: zmq.Socket[bytes] | None = None
        self._refusals = LogThrottle(logger, 60.0)
        self._handlers = ControlHandlers(
            service, crossnode, status, registration, executor, self._after
        ).table()

    def start(self) -> None:
        path = Path(self.socket_path)
        # The directory exists and is ours alone: Daemon.start checked it first (smp.sockdir).
        path.unlink(missing_ok=True)  # the caller made sure no live SMP owns it
        old_umask = os.umask(0o177)  # the socket is created owner-only
        try:
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 0)
            router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            router.bind(f"ipc://{self.socket_path}")
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        self._router = router
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.setsockopt(zmq.LINGER, 0)
        self._wake_push.connect(self._wake_addr)
        self._thread = threading.Thread(target=self._loop, name="smp-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, close the sockets and remove the socket file. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout)
            self._thread = None
        for sock in (self._wake_push, self._wake_pull, self._router):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._wake_pull = self._wake_push = None
        Path(self.socket_path).unlink(missing_ok=True)

    # -- loop ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_push is not None:
                self._wake_push.send(b"", zmq.NOBLOCK)

    def _send_later(self, identity: bytes, response: pb.Response) -> None:
        self._outbox.put((identity, response))
        self._wake()

    def _loop(self) -> None:
        assert self._router is not None and self._wake_pull is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                events = dict(poller.poll(self._poll_timeout()))
                if self._wake_pull in events:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv()
                if self._router in events:
                    while self._router.poll(0):
                        self._handle(self._router.recv_multipart(zmq.NOBLOCK))
                self._flush_outbox()
                self._fire_timers()
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                logger.exception("control loop: zmq error %s; continuing", exc)
            except Exception:
                logger.exception("control loop: unexpected error; continuing")

    def _poll_timeout(self) -> int:
        if not self._timers:
            return _POLL_MS
        return max(
            0, min(_POLL_MS, int((min(t for t, _ in self._timers) - time.monotonic()) * 1000) + 1)
        )

    def _flush_outbox(self) -> None:
        assert self._router is not None
        while True:
            try:
                identity, response = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._router.send_multipart([identity, response.SerializeToString()])

    def _after(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` on the socket thread in `delay_s` (handlers run there too)."""
        self._timers.append((time.monotonic() + delay_s, callback))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        due = [cb for t, cb in self._timers if t <= now]
        self._timers = [(t, cb) for t, cb in self._timers if t > now]
        for cb in due:
            cb()

    # -- dispatch -----------------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        assert self._router is not None
        if len(frames) < 2:
            return  # no identity to answer to
        identity, payload = frames[0], frames[-1]
        request = pb.Request()
        response = pb.Response()
        try:
            if len(frames) != 2:
                raise BadRequest(f"expected one frame per request, got {len(frames) - 1}")
            try:
                request.ParseFromString(payload)
            except DecodeError:
                raise BadRequest(
                    f"malformed request: {len(payload)} bytes that are not an ecsnap.v1.Request "
                    "(is the client the same ecsnap version?)"
                ) from None
            response.request_id = request.request_id
            kind = request.WhichOneof("body")
            if kind is None:
                raise BadRequest(
                    "empty or unknown request: no known body field is set "
                    "(is the client newer than this SMP?)"
                )
            deferred = self._handlers[kind](request, response)
            if deferred is not None:
                self._defer(identity, response, deferred)
                return
        except SmpError as exc:
            set_error(response.error, exc)
            kind = request.WhichOneof("body")
            # One line per job and kind of refusal per minute: a flood is not a flood of lines.
            self._refusals.warn(
                f"job {request.job_id or '?'}",
                f"{kind}:{exc.code}",
                f"request {kind} refused: {exc}",
                logging.INFO,
            )
        except Exception as exc:
            logger.exception("request %s failed", request.WhichOneof("body"))
            response.error.code = pb.INTERNAL
            response.error.message = f"internal error in the SMP: {exc!r} (see the SMP's log)"
        self._router.send_multipart([identity, response.SerializeToString()])

    def _defer(
        self,
        identity: bytes,
        response: pb.Response,
        deferred: Deferred,
    ) -> None:
        fut, fill = deferred

        def done(f: Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if isinstance(exc, SmpError):
                set_error(response.error, exc)
            elif exc is not None:
                logger.error("deferred request failed: %r", exc)
                response.error.code = pb.INTERNAL
                response.error.message = f"internal error in the SMP: {exc!r} (see its log)"
            else:
                fill(f.result(), response)
            self._send_later(identity, response)

        fut.add_done_callback(done)
