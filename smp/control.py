"""The local control server: a zmq ROUTER on an owner-only ipc socket, speaking control.proto.

One thread owns the socket. Quick requests are answered inline; slow ones (checksum verification,
waiting for a commit) complete on other threads through futures, whose replies are queued and
handed back to the socket thread through an inproc wake-up socket. Any malformed or invalid
request gets an error reply; the loop never dies on bad input.
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
from smp.crossnode.coordinator import CrossNode, RebuildResult
from smp.errors import BadRequest, SmpError
from smp.jobs import CommitState, OpenedSnapshot, RankInfo
from smp.service import SnapshotService

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 80 << 20
MAX_WAIT_MS = 10 * 60 * 1000
MAX_PIN_S = 3600
_POLL_MS = 200
Reply = tuple[bytes, pb.Response]
Status = Callable[[], pb.StatusResponse]
Deferred = tuple[Future[Any], Callable[[Any, pb.Response], None]]
Handler = Callable[[pb.Request, pb.Response], "Deferred | None"]


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
        self._service = service
        self._crossnode = crossnode
        self._registration = registration
        self._executor = executor
        self._status = status
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
        # The explicit dispatch table: request body field -> handler.
        self._handlers: dict[str, Handler] = {
            "register": self._on_register,
            "begin_save": self._on_begin_save,
            "commit_save": self._on_commit_save,
            "abort_save": self._on_abort_save,
            "list_steps": self._on_list_steps,
            "open_snapshot": self._on_open_snapshot,
            "wait_committed": self._on_wait_committed,
            "status": self._on_status,
            "configure": self._on_configure,
            "save_ready": self._on_save_ready,
            "rebuild": self._on_rebuild,
            "pin": self._on_pin,
            "forget": self._on_forget,
            "locate": self._on_locate,
            "stage": self._on_stage,
            "retain": self._on_retain,
        }

    def start(self) -> None:
        path = Path(self.socket_path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            _set_error(response.error, exc)
            logger.info(
                "request %s from %s refused: %s",
                request.WhichOneof("body"),
                request.job_id or "?",
                exc,
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
                _set_error(response.error, exc)
            elif exc is not None:
                logger.error("deferred request failed: %r", exc)
                response.error.code = pb.INTERNAL
                response.error.message = f"internal error in the SMP: {exc!r} (see its log)"
            else:
                fill(f.result(), response)
            self._send_later(identity, response)

        fut.add_done_callback(done)

    # -- handlers: translate wire <-> service -------------------------------------------------

    def _on_register(self, req: pb.Request, resp: pb.Response) -> None:
        r = req.register
        self._service.register(
            req.job_id,
            RankInfo(
                r.rank,
                r.world_size,
                r.local_rank,
                r.local_world_size,
                r.node_rank,
                r.num_nodes,
                r.pid,
                r.session,
            ),
        )
        resp.register.CopyFrom(self._registration())  # static: its cost does not grow with jobs

    def _on_begin_save(self, req: pb.Request, resp: pb.Response) -> None:
        b = req.begin_save
        grant = self._service.begin_save(req.job_id, b.rank, b.step, b.nbytes, b.session)
        resp.begin_save.slot = grant.slot
        resp.begin_save.generation = grant.generation
        resp.begin_save.path = grant.path
        resp.begin_save.capacity = grant.capacity

    def _on_commit_save(self, req: pb.Request, resp: pb.Response) -> None:
        c = req.commit_save
        self._service.commit_save(
            req.job_id, c.rank, c.step, c.slot, c.generation, c.nbytes, c.manifest, c.session
        )
        resp.commit_save.SetInParent()

    def _on_abort_save(self, req: pb.Request, resp: pb.Response) -> None:
        a = req.abort_save
        self._service.abort_save(
            req.job_id, a.rank, a.step, a.slot, a.generation, a.reason, a.session
        )
        resp.abort_save.SetInParent()

    def _on_list_steps(self, req: pb.Request, resp: pb.Response) -> None:
        steps, committed, worlds = self._service.list_steps(req.job_id, req.list_steps.rank)
        resp.list_steps.complete_steps.extend(steps)
        resp.list_steps.world_sizes.extend(worlds)
        if committed is not None:
            resp.list_steps.has_committed = True
            resp.list_steps.committed_step = committed

    def _on_open_snapshot(self, req: pb.Request, resp: pb.Response) -> Deferred:
        o = req.open_snapshot
        fut = self._service.open_snapshot(req.job_id, o.rank, o.step, not o.skip_verify)

        def fill(opened: OpenedSnapshot, r: pb.Response) -> None:
            r.open_snapshot.slot = opened.slot
            r.open_snapshot.path = opened.path
            r.open_snapshot.nbytes = opened.nbytes
            r.open_snapshot.manifest = opened.manifest
            r.open_snapshot.verify_seconds = opened.verify_seconds

        return fut, fill

    def _on_wait_committed(self, req: pb.Request, resp: pb.Response) -> Deferred:
        w = req.wait_committed
        timeout_ms = min(w.timeout_ms, MAX_WAIT_MS)
        fut = self._service.wait_committed(req.job_id, w.step)
        job_id = req.job_id

        def expire() -> None:
            if not fut.done():
                self._service.cancel_wait(job_id, fut)
                fut.set_result(self._service.commit_state(job_id))

        if not fut.done():
            self._timers.append((time.monotonic() + timeout_ms / 1000, expire))

        def fill(state: CommitState, r: pb.Response) -> None:
            r.wait_committed.committed = state.committed
            r.wait_committed.degraded = state.degraded
            if state.committed_step is not None:
                r.wait_committed.has_committed = True
                r.wait_committed.committed_step = state.committed_step

        return fut, fill

    def _on_configure(self, req: pb.Request, resp: pb.Response) -> None:
        c = req.configure
        self._service.touch(req.job_id)
        resp.configure.layout = self._crossnode.configure(
            req.job_id,
            c.node_rank,
            c.num_nodes,
            c.group_size,
            c.parity,
            c.placement,
            list(c.peer_addresses),
            c.secret,
        )

    def _on_save_ready(self, req: pb.Request, resp: pb.Response) -> None:
        ready, pending, failure = self._crossnode.save_ready(req.job_id)
        resp.save_ready.ready = ready and self._service.slots_free(req.job_id)
        if pending is not None:
            resp.save_ready.has_pending, resp.save_ready.pending_step = True, pending
        if failure is not None:
            _set_error(resp.save_ready.failure, failure)

    def _on_rebuild(self, req: pb.Request, resp: pb.Response) -> Deferred:
        timeout = min(req.rebuild.timeout_ms, MAX_WAIT_MS) / 1000 or 300.0
        fut = self._executor.submit(self._crossnode.rebuild, req.job_id, timeout)

        def fill(result: RebuildResult, r: pb.Response) -> None:
            r.rebuild.rebuilt, r.rebuild.seconds = result.rebuilt, result.seconds
            r.rebuild.bytes_fetched = result.bytes_fetched
            if result.step is not None:
                r.rebuild.has_step, r.rebuild.step = True, result.step

        return fut, fill

    def _on_pin(self, req: pb.Request, resp: pb.Response) -> None:
        p = req.pin
        lease = min(p.lease_s or MAX_PIN_S, MAX_PIN_S)
        self._service.pin(req.job_id, p.rank, p.step, p.pinned, lease)
        resp.pin.SetInParent()

    def _on_forget(self, req: pb.Request, resp: pb.Response) -> None:
        resp.forget.freed_bytes = self._service.forget(req.job_id)

    def _on_locate(self, req: pb.Request, resp: pb.Response) -> None:
        held, committed = self._service.locate(req.job_id)
        for rank, step, world, nbytes in held:
            resp.locate.held.add(rank=rank, step=step, world_size=world, nbytes=nbytes)
        resp.locate.SetInParent()
        if committed is not None:
            resp.locate.has_committed, resp.locate.committed_step = True, committed

    def _on_stage(self, req: pb.Request, resp: pb.Response) -> Deferred:
        st = req.stage
        timeout = min(st.timeout_ms, MAX_WAIT_MS) / 1000 or 300.0
        fut = self._executor.submit(
            self._crossnode.stage, req.job_id, st.rank, st.step, st.source_node, timeout
        )

        def fill(result: tuple[int, float], r: pb.Response) -> None:
            r.stage.bytes_fetched, r.stage.seconds = result

        return fut, fill

    def _on_retain(self, req: pb.Request, resp: pb.Response) -> None:
        self._service.retain(req.job_id, list(req.retain.ranks))
        resp.retain.SetInParent()

    def _on_status(self, req: pb.Request, resp: pb.Response) -> None:
        resp.status.CopyFrom(self._status())


def _set_error(error: pb.Error, exc: SmpError) -> None:
    error.code = pb.ErrorCode.Value(exc.code)  # type: ignore[assignment]
    error.message = str(exc)
