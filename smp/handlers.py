"""The control requests, one handler each: translate a control.proto request into a domain call
(the local `SnapshotService`, the cross-node `CrossNode`) and its result into the response.

A handler fills the response inline, or returns a `Deferred` (a future and how to fill the
response from its result) for requests that wait: checksum verification, a commit, a rebuild.
Domain errors (`SmpError`) become the response's error code and message in `set_error`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from smp._proto import control_pb2 as pb
from smp.crossnode.coordinator import CrossNode
from smp.crossnode.rebuild import RebuildResult
from smp.errors import BadRequest, SmpError
from smp.jobs import CommitState, OpenedSnapshot, RankInfo
from smp.service import SnapshotService

MAX_WAIT_MS = 10 * 60 * 1000
MAX_PIN_S = 3600
MAX_TARGET = 4096  # characters of a persistence target (a path or URL)
MAX_ERROR = 2000  # characters of a persistence failure kept for status
Status = Callable[[], pb.StatusResponse]
Deferred = tuple[Future[Any], Callable[[Any, pb.Response], None]]
Handler = Callable[[pb.Request, pb.Response], "Deferred | None"]
Timer = Callable[[float, Callable[[], None]], None]


class ControlHandlers:
    def __init__(
        self,
        service: SnapshotService,
        crossnode: CrossNode,
        status: Status,
        registration: Callable[[], pb.RegisterResponse],
        executor: Executor,
        after: Timer,
    ) -> None:
        self._service = service
        self._crossnode = crossnode
        self._status = status
        self._registration = registration
        self._executor = executor
        self._after = after  # run a callback later, on the thread the handlers run on

    def table(self) -> dict[str, Handler]:
        """The explicit dispatch table: request body field -> handler, each behind the job's
        access check (`smp.access`; registrations and status check for themselves)."""
        handlers: dict[str, Handler] = {
            "begin_save": self._on_begin_save,
            "commit_save": self._on_commit_save,
            "abort_save": self._on_abort_save,
            "list_steps": self._on_list_steps,
            "open_snapshot": self._on_open_snapshot,
            "wait_committed": self._on_wait_committed,
            "configure": self._on_configure,
            "save_ready": self._on_save_ready,
            "rebuild": self._on_rebuild,
            "pin": self._on_pin,
            "forget": self._on_forget,
            "locate": self._on_locate,
            "stage": self._on_stage,
            "retain": self._on_retain,
            "persist_report": self._on_persist_report,
            "finish": self._on_finish,
        }
        return {kind: self._admitted(fn) for kind, fn in handlers.items()} | {
            "register": self._on_register,
            "status": self._on_status,
        }

    def _admitted(self, handler: Handler) -> Handler:
        def run(req: pb.Request, resp: pb.Response) -> Deferred | None:
            self._service.admit(req.job_id, req.job_key, req.admin_token)
            return handler(req, resp)

        return run

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
            req.job_key,
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
        finished = self._service.finished(req.job_id)
        if finished is not None:
            resp.list_steps.finished, resp.list_steps.finished_step = True, finished

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
            self._after(timeout_ms / 1000, expire)

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
            set_error(resp.save_ready.failure, failure)

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

    def _on_persist_report(self, req: pb.Request, resp: pb.Response) -> None:
        r = req.persist_report
        if not math.isfinite(r.seconds) or r.seconds < 0:
            raise BadRequest(f"a persistence round cannot take {r.seconds} seconds")
        if len(r.target) > MAX_TARGET:
            raise BadRequest(f"a persistence target of {len(r.target)} characters is too long")
        rate = r.bytes / r.seconds if r.seconds > 0 else 0.0
        step = r.step if r.has_step else None
        self._service.report_persist(req.job_id, r.target, step, rate, r.error[:MAX_ERROR])
        resp.persist_report.SetInParent()

    def _on_finish(self, req: pb.Request, resp: pb.Response) -> None:
        self._service.finish(req.job_id, req.finish.step)
        resp.finish.SetInParent()

    def _on_status(self, req: pb.Request, resp: pb.Response) -> None:
        """Every job for the admin token; else only the caller's own job (if it proves it)."""
        resp.status.CopyFrom(self._status())
        if self._service.access.is_admin(req.admin_token):
            return
        try:
            self._service.admit(req.job_id, req.job_key, b"")
            mine = [j for j in resp.status.jobs if j.job_id == req.job_id]
        except SmpError:
            mine = []
        del resp.status.jobs[:]
        resp.status.jobs.extend(mine)
        resp.status.jobs_hidden = True


def set_error(error: pb.Error, exc: SmpError) -> None:
    error.code = pb.ErrorCode.Value(exc.code)  # type: ignore[assignment]
    error.message = str(exc)
