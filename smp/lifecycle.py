"""A job's life as `smp launch` sees it: running (or new), or finished.

A training script that restores its newest snapshot and trains up to its last step does nothing
when it is started again after it finished: it restores the last step and "completes" in zero
steps. So a job that ended says so (`Snapshotter.close(finished=True)` marks it on its SMPs),
and `smp launch` refuses to start a finished job again, unless told `--fresh`: then the job's
snapshots on this node's SMP are forgotten first and it trains from the start.
"""

from __future__ import annotations

from smp import report
from smp._proto import control_pb2 as pb


class FinishedJob(Exception):
    """The job finished; running its command again would train nothing."""


def finished_step(status: pb.StatusResponse, job: str) -> int | None:
    """The step `job` finished at, as this SMP's status says (None: not finished, or unknown)."""
    for js in status.jobs:
        if js.job_id == job and js.finished:
            return int(js.finished_step)
    return None


def check(status: pb.StatusResponse, job: str, socket: str, fresh: bool) -> str:
    """Before torchrun starts: raise FinishedJob for a finished job (no --fresh); with --fresh,
    forget the job on this node's SMP. Returns what was done, for the launch line ("" if
    nothing)."""
    step = finished_step(status, job)
    if not fresh:
        if step is None:
            return ""
        raise FinishedJob(
            f"job {job} already finished at step {step} (its ranks closed with "
            "finished=True): running it again would restore that step and train nothing. "
            "To train it again from step 0, add --fresh (it forgets the job's snapshots on this "
            "node's SMP first; give it on every node); to keep them, start the new run under "
            "another --job"
        )
    freed = report.forget(socket, job)
    how = f"finished at step {step}" if step is not None else "not finished"
    return f"--fresh: forgot job {job} ({how}, {freed} bytes freed) before starting"
