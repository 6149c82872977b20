"""The benchmark's contenders, common part: their specs, a checkpoint's record, and the base
checkpointer (no fault tolerance). The disk contenders are in `disk`, ecsnap in `contenders`."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ecsnap.bench.train.workload import Workload

KINDS = ("none", "torch_save", "dcp_save", "dcp_async", "ecsnap")


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    interval: int  # checkpoint after every `interval` steps; 0 = never
    parity: bool = False
    label: str = ""
    persist: int = 0  # ecsnap: its durable tier persists every `persist` steps; 0 = none

    @property
    def disk(self) -> bool:
        return self.kind in ("torch_save", "dcp_save", "dcp_async")

    @property
    def ecsnap(self) -> bool:
        return self.kind == "ecsnap"


def specs(interval: int) -> dict[str, Spec]:
    """Every contender the benchmark knows, in report order."""
    n = interval
    return {
        s.name: s
        for s in (
            Spec("baseline", "none", 0, label="no fault tolerance"),
            Spec("torch_save", "torch_save", n, label=f"torch.save /{n}"),
            Spec("dcp_save", "dcp_save", n, label=f"DCP save /{n}"),
            Spec("dcp_async", "dcp_async", n, label=f"DCP async_save /{n}"),
            Spec("ecsnap", "ecsnap", 1, label="ecsnap /1"),
            Spec("ecsnap_n", "ecsnap", n, label=f"ecsnap /{n}"),
            Spec("ecsnap_parity", "ecsnap", 1, parity=True, label="ecsnap+parity /1"),
            Spec("ecsnap_parity_n", "ecsnap", n, parity=True, label=f"ecsnap+parity /{n}"),
            Spec("ecsnap_persist", "ecsnap", 1, persist=n, label=f"ecsnap /1 + disk /{n}"),
        )
    }


@dataclass
class Record:
    step: int
    blocked_s: float = 0.0
    safe_s: float | None = None
    copy_s: float | None = None
    skipped: bool = False  # ecsnap on_busy="skip": the previous step was not committed yet
    durable_s: float | None = None  # checkpoint start until on disk (ecsnap: its durable tier)
    started: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "blocked_s": self.blocked_s,
            "safe_s": self.safe_s,
            "copy_s": self.copy_s,
            "skipped": self.skipped,
            "durable_s": self.durable_s,
        }


class Checkpointer:
    """Base: no fault tolerance. Subclasses override save/restore/finish."""

    def __init__(self, spec: Spec, w: Workload, rank: int, world: int, ckpt_dir: Path) -> None:
        self.spec, self.w, self.rank, self.world = spec, w, rank, world
        self.dir = ckpt_dir
        self.records: list[Record] = []

    def save(self, step: int) -> Record | None:
        """Checkpoint `step` (called right after that step's optimizer step)."""
        return None

    def after_step(self) -> None:
        """Called after every training step (fences that delay the next step are charged here)."""

    def restore(self) -> int | None:
        return None

    def finish(self, timeout: float) -> None:
        """Wait until the last checkpoint is safe (not timed as training)."""

    def close(self) -> None:
        pass

    # -- shared helpers -------------------------------------------------------------------------

    def extras(self) -> bytes:
        """Per-rank small state: data position and RNG states (pickled, as most codebases do)."""
        from ecsnap.rng import RNGState

        return pickle.dumps({"data": self.w.data.state_dict(), "rng": RNGState().state_dict()})

    def load_extras(self, blob: bytes) -> None:
        from ecsnap.rng import RNGState

        obj = pickle.loads(blob)
        self.w.data.load_state_dict(obj["data"])
        RNGState().load_state_dict(obj["rng"])

    def newest_common(self, mine: list[int]) -> int | None:
        everyone: list[Any] = [mine]
        if dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        common = set.intersection(*(set(s) for s in everyone))
        return max(common) if common else None
