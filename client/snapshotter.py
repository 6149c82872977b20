"""Snapshotter: save the app state into the node's SMP in the background; restore it in place.

Ordering invariants:
- `save` captures the state (state_dict() calls and the skeleton pickle) in the caller's thread,
  then only launches the copy. Tensors must not change until the copy is done: a pre-hook on every
  optimizer (and on modules with buffers) found in the app state waits for it. On GPU the hook
  makes the compute stream wait for the copy stream instead of blocking the CPU.
- The SMP is told "step S is in slot X" only after every byte is in the slot.
- At most one save is in flight; errors of a background save surface at the next call.
- Multi-node jobs: ranks join collectively (restore() or the first save()): SMP addresses and the
  job's secret travel through the process group. Before each save the ranks agree (one small
  all-reduce) that every SMP has a free slot, so all ranks save or all skip the same step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist

from ecsnap.arena import MappedArena
from ecsnap.channel import Channel
from ecsnap.cluster import JobGroup, exchange_addresses
from ecsnap.env import RankEnv, job_id_from, layout_from, socket_from
from ecsnap.errors import EcsnapError, RestoreError, SnapshotError
from ecsnap.flatten import FlatState, arena_views, flatten, unflatten
from ecsnap.handle import SaveHandle
from ecsnap.loader import load_into
from smp._proto import control_pb2 as pb
from smp._proto import snapshot_pb2

logger = logging.getLogger(__name__)


class Snapshotter:
    """Saves and restores one rank's app state through its node's SMP.

    job_id: default $ECSNAP_JOB, else $TORCHELASTIC_RUN_ID, else "default".
    socket: default $ECSNAP_SOCKET, else /tmp/ecsnap-<uid>/smp.sock.
    process_group: used to agree on the step to restore; default: the default group if initialized.
    group_size, parity, placement: redundancy across nodes; default $ECSNAP_GROUP_SIZE (4, capped
      by the node count), $ECSNAP_PARITY (1), $ECSNAP_PLACEMENT ("consecutive" or "strided").
    on_busy: what save() does while the previous step is not yet committed on every node:
      "skip" (default: the step is not snapshotted; training goes on) or "wait".
    """

    ON_BUSY = ("skip", "wait")

    def __init__(
        self,
        job_id: str | None = None,
        socket: str | None = None,
        process_group: Any = None,
        *,
        timeout: float = 60.0,
        verify: bool = True,
        group_size: int | None = None,
        parity: int | None = None,
        placement: str | None = None,
        on_busy: str = "skip",
    ) -> None:
        if on_busy not in self.ON_BUSY:
            raise ValueError(f"on_busy={on_busy!r}: use 'skip' or 'wait'")
        self.on_busy = on_busy
        self.job_id = job_id_from(job_id)
        self.socket = socket_from(socket)
        self.timeout = timeout
        self.verify = verify
        self._pg = process_group
        self._channel = Channel(self.socket, self.job_id, timeout)
        self._worker_channel = Channel(self.socket, self.job_id, timeout)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecsnap-copy")
        self._inflight: SaveHandle | None = None
        self._error: BaseException | None = None
        self._arenas: dict[int, MappedArena] = {}
        self._hooks: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._env: RankEnv | None = None
        self._side_stream: Any = None
        self._closed = False
        self.smp_info: pb.RegisterResponse | None = None
        self.fence_wait_s = 0.0  # total time optimizer/module hooks waited for copies
        self.skipped = 0  # saves skipped because the previous step was not committed yet
        self.layout = layout_from(self.env.num_nodes, group_size, parity, placement)
        self._group: JobGroup | None = None
        self._introduction: dict[str, Any] | None = None  # the Configure sent to the SMP
        self.last_rebuild: pb.RebuildResponse | None = None

    # -- where we are ---------------------------------------------------------------------------

    @property
    def env(self) -> RankEnv:
        if self._env is None:
            env = RankEnv.from_environ()
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
                if (rank, world) != (env.rank, env.world_size):
                    env = RankEnv(
                        rank,
                        world,
                        env.local_rank if world > 1 else 0,
                        env.local_world_size if world > 1 else 1,
                        env.node_rank,
                        env.num_nodes,
                        env.restart_count,
                        env.hostname,
                    )
            self._env = env
        return self._env

    @property
    def rank(self) -> int:
        return self.env.rank

    def _ensure_registered(self) -> None:
        if self.smp_info is not None:
            return
        e = self.env
        self.smp_info = self._channel.call(
            "register",
            rank=e.rank,
            world_size=e.world_size,
            local_rank=e.local_rank,
            local_world_size=e.local_world_size,
            node_rank=e.node_rank,
            num_nodes=e.num_nodes,
            pid=os.getpid(),
            hostname=e.hostname,
        )
        logger.info(
            "rank %d registered with SMP %s at %s (job %s)",
            e.rank,
            self.smp_info.smp_version,
            self.socket,
            self.job_id,
        )
        if self._introduction is not None:  # the SMP restarted: introduce the job again
            self._channel.call("configure", **self._introduction)

    def _join(self) -> None:
        """Collective, once: register, exchange SMP addresses and the secret, configure the SMP."""
        if self._group is not None:
            return
        e, own, address = self.env, None, ""
        try:
            self._ensure_registered()
            assert self.smp_info is not None
            address = self.smp_info.grpc_address
        except EcsnapError as exc:
            own = exc
        group = JobGroup.create(self._pg)
        try:
            intro = exchange_addresses(
                group, e.rank, e.node_rank, e.num_nodes, address, str(own or "")
            )
        except SnapshotError:
            if own is not None:
                raise own from None  # this rank's own failure, with its type (e.g. no SMP)
            raise
        fields = {
            "node_rank": e.node_rank,
            "num_nodes": e.num_nodes,
            "group_size": self.layout.group_size,
            "parity": self.layout.parity,
            "placement": self.layout.placement,
            "peer_addresses": intro.addresses,
            "secret": intro.secret,
        }
        error = ""
        try:
            described = self._call("configure", **fields).layout
        except EcsnapError as exc:
            error = str(exc)
        failed = [f"rank {r}: {err}" for r, err in group.all_gather((e.rank, error)) if err]
        if failed:  # also the barrier: every SMP knows the job before anyone goes on
            raise SnapshotError("cannot introduce the job to its SMPs: " + "; ".join(failed))
        self._introduction, self._group = fields, group
        if e.rank == 0:
            logger.info("job %s: %s", self.job_id, described)

    def _call(self, kind: str, **fields: Any) -> Any:
        """A control call that re-registers once if the SMP restarted and forgot us."""
        try:
            return self._channel.call(kind, **fields)
        except SnapshotError as exc:
            if exc.code != "NOT_REGISTERED":
                raise
            self.smp_info = None
            self._ensure_registered()
            return self._channel.call(kind, **fields)

    # -- save -----------------------------------------------------------------------------------

    def save(
        self, step: int, app_state: Mapping[str, Any], *, on_busy: str | None = None
    ) -> SaveHandle:
        """Snapshot `app_state` as `step`; returns once the background copy is launched.

        Multi-node jobs: while the previous step is not committed on every node, the step is
        skipped on every rank (the handle says `skipped`) or, with on_busy="wait" (here or in the
        constructor), save waits for the commit. Every rank must pass the same on_busy."""
        self._check_open()
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start = time.perf_counter()
        self._finish_inflight()
        self._raise_pending()
        self._join()
        if on_busy is not None and on_busy not in self.ON_BUSY:
            raise ValueError(f"on_busy={on_busy!r}: use 'skip' or 'wait'")
        if self.layout.protected and not self._slot_free_everywhere(on_busy or self.on_busy):
            self.skipped += 1
            return SaveHandle.skipped_step(step, self._wait_committed)
        self._install_guards(app_state)
        flat = flatten(app_state)
        grant = self._call("begin_save", rank=self.rank, step=step, nbytes=max(flat.nbytes, 1))
        arena = self._map(grant.slot, grant.path, grant.capacity)
        targets = arena_views(flat.manifest, arena.tensor)
        sources_on_cuda = any(t.is_cuda for t in flat.tensors)
        ready = None
        if sources_on_cuda:
            arena.register_with_cuda()
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream())  # the values the caller computed so far
        handle = SaveHandle(step, flat.nbytes, self._wait_committed)
        self._inflight = handle
        self._executor.submit(self._copy_and_commit, handle, flat, targets, grant, ready)
        handle.blocked_s = time.perf_counter() - start
        return handle

    def _copy_and_commit(
        self,
        handle: SaveHandle,
        flat: FlatState,
        targets: list[torch.Tensor],
        grant: pb.BeginSaveResponse,
        ready: Any,
    ) -> None:
        try:
            with torch.no_grad():
                if ready is not None:
                    self._launch_cuda_copies(handle, flat, targets, ready)
                for dst, src in zip(targets, flat.tensors, strict=True):
                    if not src.is_cuda and src.numel():
                        dst.copy_(src)
                handle._cpu_done.set()
                if handle._gpu_event is not None:
                    handle._gpu_event.synchronize()
            handle._set_copied()
            self._worker_channel.call(
                "commit_save",
                rank=self.rank,
                step=handle.step,
                slot=grant.slot,
                generation=grant.generation,
                nbytes=max(flat.nbytes, 1),
                manifest=flat.manifest.SerializeToString(),
            )
            handle._set_handed_over()
        except BaseException as exc:  # noqa: BLE001 - reported to the SMP and to the next call
            logger.error("rank %d: save of step %d failed: %s", self.rank, handle.step, exc)
            self._error = exc
            handle._fail(exc)
            # If the SMP is gone too, the step simply never commits.
            with contextlib.suppress(EcsnapError):
                self._worker_channel.call(
                    "abort_save",
                    timeout=5.0,
                    rank=self.rank,
                    step=handle.step,
                    slot=grant.slot,
                    generation=grant.generation,
                    reason=str(exc),
                )

    def _launch_cuda_copies(
        self, handle: SaveHandle, flat: FlatState, targets: list[torch.Tensor], ready: Any
    ) -> None:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        stream = self._side_stream
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            for dst, src in zip(targets, flat.tensors, strict=True):
                if src.is_cuda and src.numel():
                    dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        handle._gpu_event = done

    def _map(self, slot: int, path: str, capacity: int) -> MappedArena:
        arena = self._arenas.get(slot)
        if arena is None or not arena.still_valid(path, capacity):
            if arena is not None:
                arena.close()
            arena = self._arenas[slot] = MappedArena(path, capacity)
        return arena

    def _finish_inflight(self) -> None:
        # Until the SMP answered the previous commit, its slot is still being written: a new
        # begin_save (another socket) could otherwise overtake the commit and supersede it.
        if self._inflight is not None:
            self._inflight._handed_over.wait()

    def _raise_pending(self) -> None:
        exc, self._error = self._error, None
        if exc is not None:
            raise SnapshotError(f"an earlier background save failed: {exc}") from exc

    def _slot_free_everywhere(self, on_busy: str) -> bool:
        """Collective: may every SMP of the job take a new step? (all ranks get the same answer)"""
        assert self._group is not None
        deadline = time.monotonic() + self.timeout
        while True:
            busy, error = False, ""
            try:
                busy = not self._call("save_ready").ready
            except EcsnapError as exc:
                error = str(exc)
            expired = on_busy == "skip" or time.monotonic() > deadline
            any_busy, any_expired, any_error = self._group.max_flags(busy, expired, bool(error))
            if any_error:
                errors = self._group.all_gather((self.rank, error))
                raise SnapshotError(
                    "cannot save: " + "; ".join(f"rank {r}: {e}" for r, e in errors if e)
                )
            if not any_busy:
                return True
            if any_expired:
                if on_busy == "wait":
                    raise TimeoutError(
                        f"waited {self.timeout}s for the previous step to commit on every node"
                    )
                return False
            time.sleep(0.005)

    # -- guards: no tensor changes while its copy is in flight ----------------------------------

    def _install_guards(self, app_state: Mapping[str, Any]) -> None:
        for value in app_state.values():
            if not isinstance(value, (torch.optim.Optimizer, torch.nn.Module)):
                continue
            if value in self._hooks:
                continue
            if isinstance(value, torch.optim.Optimizer):
                self._hooks[value] = value.register_step_pre_hook(self._fence_hook)
            elif isinstance(value, torch.nn.Module) and _has_persistent_buffers(value):
                # Buffers (e.g. BatchNorm statistics) change in forward, before any optimizer step.
                self._hooks[value] = value.register_forward_pre_hook(self._fence_hook)

    def _fence_hook(self, *_: Any) -> None:
        handle = self._inflight
        if handle is None or handle.done():
            return
        start = time.perf_counter()
        handle._cpu_done.wait()
        if handle._gpu_event is not None:
            torch.cuda.current_stream().wait_event(handle._gpu_event)
        self.fence_wait_s += time.perf_counter() - start

    # -- protection -----------------------------------------------------------------------------

    def _wait_committed(self, step: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 30.0 if deadline is None else deadline - time.monotonic()
            slice_ms = int(max(0.0, min(remaining, 30.0)) * 1000)
            resp = self._channel.call(
                "wait_committed",
                timeout=slice_ms / 1000 + self.timeout,
                step=step,
                timeout_ms=slice_ms,
            )
            if resp.committed:
                return
            if deadline is not None and time.monotonic() >= deadline:
                now = resp.committed_step if resp.has_committed else None
                raise TimeoutError(
                    f"step {step} was not committed within {timeout}s (committed "
                    f"step: {now}); are all ranks saving step {step}?"
                )

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the in-flight save (if any) to be copied and handed to the SMP."""
        handle = self._inflight
        if handle is not None:
            handle.wait(timeout)
            if not handle._handed_over.wait(timeout):
                raise TimeoutError(f"the SMP did not accept step {handle.step} within {timeout}s")

    # -- restore --------------------------------------------------------------------------------

    def restore(self, app_state: MutableMapping[str, Any]) -> int | None:
        """Load the newest step every rank can restore into `app_state`; None if there is none."""
        self._check_open()
        self._finish_inflight()
        self._join()
        if self.layout.protected:
            self._rebuild_if_lost()
        steps, committed, error = [], None, ""
        try:
            listed = self._call("list_steps", rank=self.rank)
            steps = list(listed.complete_steps)
            committed = listed.committed_step if listed.has_committed else None
        except EcsnapError as exc:
            error = str(exc)
        everyone = self._all_gather((self.rank, steps, committed, error))
        failed = [f"rank {r}: {e}" for r, _, _, e in everyone if e]
        if failed:
            raise RestoreError("cannot restore: " + "; ".join(failed))
        common = set.intersection(*(set(s) for _, s, _, _ in everyone))
        if self.layout.protected:
            # Only a committed step is protected on every node; one SMP may have seen the
            # commit of a newer step before another, and any of them proves it.
            newest = max((c for _, _, c, _ in everyone if c is not None), default=None)
            common = {s for s in common if newest is not None and s <= newest}
        if not common:
            if any(s for _, s, _, _ in everyone):
                logger.warning(
                    "rank %d: no committed step is held by every rank (%s); starting fresh",
                    self.rank,
                    {r: s for r, s, _, _ in everyone},
                )
            return None
        problems = []
        for step in sorted(common, reverse=True):
            opened, error = None, ""
            try:
                opened = self._call(
                    "open_snapshot", rank=self.rank, step=step, skip_verify=not self.verify
                )
            except EcsnapError as exc:
                error = str(exc)
            outcome = self._all_gather((self.rank, error))
            bad = [f"rank {r}: {e}" for r, e in outcome if e]
            if bad or opened is None:
                problems.append(f"step {step}: " + "; ".join(bad))
                logger.warning("cannot restore step %d (%s); trying an older one", step, bad)
                continue
            self._load(opened, app_state)
            return int(step)
        raise RestoreError("no common step could be restored: " + " | ".join(problems))

    def _rebuild_if_lost(self) -> None:
        """Collective: an SMP that lost the job's committed step (a replacement node) rebuilds it
        from its group's peers; one rank per node asks, every rank learns the outcome."""
        error = ""
        if self.env.local_rank == 0:
            try:
                self.last_rebuild = self._call(
                    "rebuild", timeout=self.timeout * 10, timeout_ms=int(self.timeout * 10_000)
                )
            except EcsnapError as exc:
                error = str(exc)
        outcome = self._all_gather((self.env.node_rank, error, self.last_rebuild is not None))
        failed = [f"node {n}: {e}" for n, e, _ in outcome if e]
        if failed:
            raise RestoreError("cannot restore: " + "; ".join(sorted(set(failed))))
        r = self.last_rebuild
        if r is not None and r.rebuilt:
            logger.warning(
                "node %d: rebuilt step %d from its group's peers in %.2fs (%d bytes fetched)",
                self.env.node_rank,
                r.step,
                r.seconds,
                r.bytes_fetched,
            )

    def _load(self, opened: pb.OpenSnapshotResponse, app_state: MutableMapping[str, Any]) -> None:
        manifest = snapshot_pb2.Manifest()
        manifest.ParseFromString(opened.manifest)
        arena = MappedArena(opened.path, os.stat(opened.path).st_size)
        try:
            load_into(app_state, unflatten(manifest, arena_views(manifest, arena.tensor)))
        finally:
            arena.close()  # nothing loaded refers to the arena: load_into copies or clones

    def _all_gather(self, obj: Any) -> list[Any]:
        assert self._group is not None  # joined first
        return self._group.all_gather(obj)

    # -- lifecycle ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EcsnapError("this Snapshotter is closed")

    def close(self, timeout: float = 60.0) -> None:
        """Wait (up to `timeout`) for the in-flight save to reach the SMP; release everything."""
        if self._closed:
            return
        self._closed = True
        handle = self._inflight
        try:
            if handle is not None and not handle._handed_over.wait(timeout):
                raise TimeoutError(
                    f"close() waited {timeout}s for the save of step {handle.step} "
                    f"({handle.nbytes} bytes) to be {'committed' if handle.done() else 'copied'}"
                    f" to the SMP at {self.socket}; it was abandoned"
                )
        finally:
            self._executor.shutdown(wait=handle is None or handle._handed_over.is_set())
            for hook in list(self._hooks.values()):
                hook.remove()
            self._hooks.clear()
            self._channel.close()
            self._worker_channel.close()
            for arena in self._arenas.values():
                arena.close()
            self._arenas.clear()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _has_persistent_buffers(module: torch.nn.Module) -> bool:
    params = {id(p) for p in module.parameters()}
    return any(
        id(t) not in params
        for t in module.state_dict(keep_vars=True).values()
        if isinstance(t, torch.Tensor)
    )
