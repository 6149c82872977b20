"""One rank of one contender's training job (started by the runner with torchrun's environment).

--phase train: warm-up steps (each checkpointed: first saves allocate and warm up), then the
measured steps with the contender's checkpoint policy; wait until the last checkpoint is safe; one
probe step (its loss checks the restore later); write rank<R>.train.json; SIGKILL itself (a
trainer crash).
--phase resume: restore from the contender's checkpoint, do one training step, write
rank<R>.resume.json. Recovery time = from the launcher's relaunch to that first step done.

Timestamps are time.time() (comparable across processes); the first is taken before torch is
imported, so interpreter start and imports count, as they do in a real restart.
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402 - timing the imports is the point
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ecsnap.bench.train import contenders  # noqa: E402
from ecsnap.bench.train.base import Checkpointer, Spec  # noqa: E402
from ecsnap.bench.train.workload import ModelConfig, Workload, build  # noqa: E402

T_IMPORTED = time.time()
FAIL_ENV = "ECSNAP_BENCH_FAIL"  # set by the runner's hidden --inject-failure option


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--phase", choices=["train", "resume"], required=True)
    p.add_argument("--contender", required=True)
    p.add_argument("--interval", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--model", required=True, help="ModelConfig as JSON")
    return p.parse_args(argv)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class _Rank:
    """This rank of the job: its contender, place in the world, device, workload, checkpointer."""

    spec: Spec
    world: int
    rank: int
    device: torch.device
    w: Workload
    ckpt: Checkpointer
    out: Path


def _start(args: argparse.Namespace) -> _Rank:
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    spec = contenders.specs(args.interval)[args.contender]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(args.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("gloo")
    cfg = ModelConfig(**json.loads(args.model))
    w = build(cfg, rank, device, distributed=world > 1)
    ckpt = contenders.make(spec, w, rank, world, Path(args.ckpt_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return _Rank(spec, world, rank, device, w, ckpt, out)


def _resume(job: _Rank, result: dict[str, Any]) -> NoReturn:
    start = time.perf_counter()
    restored = job.ckpt.restore()
    result["load_s"] = time.perf_counter() - start
    result["restored_step"] = restored
    _sync(job.device)
    result["loss"] = float(job.w.step()).hex()
    _sync(job.device)
    result["t_first_step"] = time.time()
    job.ckpt.close()
    (job.out / f"rank{job.rank}.resume.json").write_text(json.dumps(result))
    # Measured; now leave without tearing down gloo (destroy_process_group can hang when a
    # peer has already exited) or running interpreter finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warmup(
    args: argparse.Namespace, job: _Rank, losses: list[str], result: dict[str, Any]
) -> list[dict[str, Any]]:
    """The warm-up steps; returns their checkpoints' records."""
    for step in range(args.warmup):
        losses.append(float(job.w.step()).hex())
        if step == 0:
            result["t_first_step"] = time.time()
        job.ckpt.after_step()
        job.ckpt.save(step)  # warm-up: every step checkpointed (allocates, warms caches)
    job.ckpt.finish(args.timeout)
    warm = [r.as_dict() for r in job.ckpt.records]
    job.ckpt.records.clear()
    return warm


def _measured_steps(
    args: argparse.Namespace, job: _Rank, losses: list[str]
) -> tuple[float, list[float]]:
    """The measured steps with the contender's checkpoint policy: (loop time, time per step)."""
    step_s: list[float] = []
    if job.world > 1:
        dist.barrier()
    _sync(job.device)
    loop_start = time.perf_counter()
    for i in range(args.steps):
        step = args.warmup + i
        t = time.perf_counter()
        losses.append(float(job.w.step()).hex())
        job.ckpt.after_step()
        if job.spec.interval and (i + 1) % job.spec.interval == 0:
            job.ckpt.save(step)
        _sync(job.device)
        step_s.append(time.perf_counter() - t)
    return time.perf_counter() - loop_start, step_s


def _train(args: argparse.Namespace, job: _Rank, result: dict[str, Any]) -> None:
    losses: list[str] = []
    warm = _warmup(args, job, losses, result)
    loop_s, step_s = _measured_steps(args, job, losses)
    t = time.perf_counter()
    job.ckpt.finish(args.timeout)
    result["finish_s"] = time.perf_counter() - t
    # The probe step: not checkpointed; its loss lets the resume check what it restored.
    losses.append(float(job.w.step()).hex())
    job.ckpt.after_step()
    result.update(
        loop_s=loop_s,
        steps=args.steps,
        step_s=step_s,
        losses=losses,
        warmup_checkpoints=warm,
        checkpoints=[r.as_dict() for r in job.ckpt.records],
        max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
    )
    if job.device.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(job.device)
    if job.world > 1:
        dist.barrier()  # every rank is done before any dies
    (job.out / f"rank{job.rank}.train.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the trainer crash (no close(), no cleanup)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.environ.get(FAIL_ENV):
        raise RuntimeError(f"injected failure ({FAIL_ENV}={os.environ[FAIL_ENV]})")
    job = _start(args)
    result: dict[str, Any] = {
        "rank": job.rank,
        "pid": os.getpid(),
        "t0": T0,
        "t_imported": T_IMPORTED,
        "t_built": time.time(),
    }
    if args.phase == "resume":
        _resume(job, result)
    _train(args, job, result)
    return 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
