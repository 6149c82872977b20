"""`ecsnap bench local`: ecsnap save/restore against torch.save/torch.load, side by side in one run.

For a state of a given size (the float32 parameters of a model, with the SGD optimizer that steps
them, as a training script holds it: so the copy runs in the background, fenced), each repeat
interleaves: torch.save to a local file,
torch.load and copy into the live tensors, an ecsnap save (time blocked in save(), time until the
copy is done, time until protected) and an ecsnap restore; plus torch `copy_` into pre-faulted
memory as the ceiling for the arena copy. Medians are reported, with ratios to the baselines.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ecsnap
from ecsnap.testing import LocalSMP, short_tmpdir
from smp.config import format_size

TENSOR_BYTES = 64 << 20

# (row label, key in the JSON's raw_seconds / median_seconds), in the order they are printed.
_ROWS = (
    ("torch.save to local file", "torch_save"),
    ("torch.load + copy into model", "torch_load"),
    ("torch copy_ into pre-faulted memory", "copy_prefaulted"),
    ("ecsnap save: blocked in save()", "ecsnap_blocked"),
    ("ecsnap save: copy into arena done", "ecsnap_copy"),
    ("ecsnap save: protected (checksummed)", "ecsnap_protected"),
    ("ecsnap restore (verify + copy)", "ecsnap_restore"),
)


def _model(nbytes: int, device: str, fill: Callable[..., torch.Tensor]) -> nn.ParameterDict:
    count = max(1, nbytes // TENSOR_BYTES)
    numel = nbytes // count // 4
    return nn.ParameterDict(
        {f"t{i}": nn.Parameter(fill(numel, device=device)) for i in range(count)}
    )


def _app_state(model: nn.ParameterDict) -> dict[str, Any]:
    return {"model": model, "optim": torch.optim.SGD(model.parameters(), lr=0.1)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class _States:
    """The trainer's state that is saved, a restarted trainer's that it is restored into, and
    the pre-faulted buffers of the copy ceiling."""

    device: str
    app: dict[str, Any]
    src: dict[str, torch.Tensor]
    live: dict[str, torch.Tensor]
    live_app: dict[str, Any]
    prefaulted: dict[str, torch.Tensor]

    @classmethod
    def build(cls, nbytes: int, device: str) -> _States:
        model = _model(nbytes, device, torch.randn)
        app, src = _app_state(model), model.state_dict()
        restarted = _model(nbytes, device, torch.zeros)  # a restarted trainer's model
        live, live_app = restarted.state_dict(), _app_state(restarted)
        # The copy ceiling: into pre-faulted host memory (pinned when the state is on a GPU).
        prefaulted = {k: torch.zeros(v.shape, pin_memory=device == "cuda") for k, v in src.items()}
        return cls(device, app, src, live, live_app, prefaulted)

    @property
    def total(self) -> int:
        return sum(t.numel() * 4 for t in self.src.values())

    def restored_matches(self) -> bool:
        return all(torch.equal(self.live[k], self.src[k]) for k in self.src)


def _time_torch_baselines(st: _States, path: Path, raw: dict[str, list[float]]) -> None:
    """One repeat of torch.save, torch.load + copy into the live tensors, and copy_ (ceiling)."""
    raw["torch_save"].append(_timed(lambda: torch.save(st.src, path)))

    def load() -> None:
        loaded = torch.load(path, weights_only=True)
        for key, t in st.live.items():
            t.copy_(loaded[key])
        _sync(st.device)

    raw["torch_load"].append(_timed(load))
    path.unlink()

    def copy() -> None:
        for key, value in st.src.items():
            st.prefaulted[key].copy_(value, non_blocking=True)
        _sync(st.device)

    raw["copy_prefaulted"].append(_timed(copy))


def _time_ecsnap_save(
    snap: ecsnap.Snapshotter, step: int, app: dict[str, Any], raw: dict[str, list[float]]
) -> None:
    start = time.perf_counter()
    handle = snap.save(step, app)
    handle.wait()
    copied = time.perf_counter() - start
    handle.wait_protected(timeout=600)
    raw["ecsnap_blocked"].append(handle.blocked_s)
    raw["ecsnap_copy"].append(copied)
    raw["ecsnap_protected"].append(time.perf_counter() - start)


def _measure(
    node: LocalSMP, st: _States, disk: Path, repeats: int
) -> tuple[dict[str, list[float]], float]:
    """The raw timings of every repeat, interleaved, and the first save's time."""
    raw: dict[str, list[float]] = {key: [] for _, key in _ROWS}
    with ecsnap.Snapshotter(job_id="bench", socket=node.socket) as snap:
        first = _timed(lambda: snap.save(0, st.app).wait_protected(timeout=600))
        snap.save(1, st.app).wait_protected(timeout=600)  # both slots allocated
        path = disk / "state.pt"
        for rep in range(repeats):
            _time_torch_baselines(st, path, raw)
            _time_ecsnap_save(snap, 2 + rep, st.app, raw)
    with ecsnap.Snapshotter(job_id="bench", socket=node.socket) as again:
        for _ in range(repeats):
            raw["ecsnap_restore"].append(_timed(lambda: again.restore(st.live_app)))  # syncs
    return raw, first


def _print_table(
    raw: dict[str, list[float]], med: dict[str, float], total: int, repeats: int, first: float
) -> None:
    gbs = total / 1e9
    print(f"\nmedian of {repeats} interleaved repeats (ms, [min .. max], throughput):")
    for name, key in _ROWS:
        spread = f"{min(raw[key]) * 1e3:8.1f} .. {max(raw[key]) * 1e3:8.1f}"
        print(f"  {name:<34} {med[key] * 1e3:10.1f} ms  [{spread}]  {gbs / med[key]:7.2f} GB/s")
    print(f"  first save (allocates and pre-faults the arena): {first * 1e3:.1f} ms")


def _print_targets(med: dict[str, float]) -> dict[str, float]:
    """Print the ratios against their targets; returns them as the JSON's "ratios"."""
    blocked = med["ecsnap_blocked"] / med["torch_save"]
    speedup = med["torch_load"] / med["ecsnap_restore"]
    copy_ratio = med["copy_prefaulted"] / med["ecsnap_copy"]
    restore_ratio = med["copy_prefaulted"] / med["ecsnap_restore"]
    print("\ntargets:")
    print(f"  blocked in save / torch.save       = {blocked * 100:6.2f} %  (target <= 5 %)")
    print(f"  restore speed-up over torch.load   = {speedup:6.2f} x  (target >= 2 x)")
    print(f"  arena copy / torch copy_ speed     = {copy_ratio:6.2f} x  (target >= 0.7 x)")
    print(f"  restore / torch copy_ speed        = {restore_ratio:6.2f} x  (target >= 0.8 x)")
    return {
        "blocked_over_torch_save": blocked,
        "restore_speedup": speedup,
        "copy_over_prefaulted_copy": copy_ratio,
        "restore_over_prefaulted_copy": restore_ratio,
    }


def run_local(
    nbytes: int, repeats: int, directory: str | None, json_path: str | None, device: str = "cpu"
) -> int:
    work = short_tmpdir("ecsnap-bench-")
    disk = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ecsnap-bench-"))
    node = LocalSMP(work / "node", memory_limit=str(3 * nbytes + (256 << 20)))
    st = _States.build(nbytes, device)
    total = st.total
    print(
        f"state: {format_size(total)} in {len(st.src)} float32 parameters (+ SGD) on {device}; "
        f"torch threads {torch.get_num_threads()}; torch.save to {disk}"
    )
    try:
        node.start()
        raw, first = _measure(node, st, disk, repeats)
        if not st.restored_matches():
            print("ERROR: restored state differs from the saved one")
            return 1
    finally:
        node.close()
        shutil.rmtree(work, ignore_errors=True)
        if not directory:
            shutil.rmtree(disk, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in raw.items()}
    _print_table(raw, med, total, repeats, first)
    ratios = _print_targets(med)
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "bytes": total,
                    "repeats": repeats,
                    "raw_seconds": raw,
                    "median_seconds": med,
                    "first_save_seconds": first,
                    "cpu_count": os.cpu_count(),
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    return 0
