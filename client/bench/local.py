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
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ecsnap
from ecsnap.testing import LocalSMP, short_tmpdir
from smp.config import format_size

TENSOR_BYTES = 64 << 20


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


def run_local(
    nbytes: int, repeats: int, directory: str | None, json_path: str | None, device: str = "cpu"
) -> int:
    work = short_tmpdir("ecsnap-bench-")
    disk = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ecsnap-bench-"))
    node = LocalSMP(work / "node", memory_limit=str(3 * nbytes + (256 << 20)))
    model = _model(nbytes, device, torch.randn)
    app, src = _app_state(model), model.state_dict()
    restarted = _model(nbytes, device, torch.zeros)  # a restarted trainer's model
    live, live_app = restarted.state_dict(), _app_state(restarted)
    # The copy ceiling: into pre-faulted host memory (pinned when the state is on a GPU).
    prefaulted = {k: torch.zeros(v.shape, pin_memory=device == "cuda") for k, v in src.items()}
    total = sum(t.numel() * 4 for t in src.values())
    raw: dict[str, list[float]] = {
        k: []
        for k in (
            "torch_save",
            "torch_load",
            "copy_prefaulted",
            "ecsnap_blocked",
            "ecsnap_copy",
            "ecsnap_protected",
            "ecsnap_restore",
        )
    }
    print(
        f"state: {format_size(total)} in {len(src)} float32 parameters (+ SGD) on {device}; "
        f"torch threads {torch.get_num_threads()}; torch.save to {disk}"
    )
    try:
        node.start()
        with ecsnap.Snapshotter(job_id="bench", socket=node.socket) as snap:
            first = _timed(lambda: snap.save(0, app).wait_protected(timeout=600))
            snap.save(1, app).wait_protected(timeout=600)  # both slots allocated
            path = disk / "state.pt"
            for rep in range(repeats):
                raw["torch_save"].append(_timed(lambda: torch.save(src, path)))

                def load() -> None:
                    loaded = torch.load(path, weights_only=True)
                    for key, t in live.items():
                        t.copy_(loaded[key])
                    _sync(device)

                raw["torch_load"].append(_timed(load))
                path.unlink()

                def copy() -> None:
                    for key, value in src.items():
                        prefaulted[key].copy_(value, non_blocking=True)
                    _sync(device)

                raw["copy_prefaulted"].append(_timed(copy))
                start = time.perf_counter()
                handle = snap.save(2 + rep, app)
                handle.wait()
                copied = time.perf_counter() - start
                handle.wait_protected(timeout=600)
                raw["ecsnap_blocked"].append(handle.blocked_s)
                raw["ecsnap_copy"].append(copied)
                raw["ecsnap_protected"].append(time.perf_counter() - start)
        with ecsnap.Snapshotter(job_id="bench", socket=node.socket) as again:
            for _ in range(repeats):
                raw["ecsnap_restore"].append(_timed(lambda: again.restore(live_app)))  # syncs

        if not all(torch.equal(live[k], src[k]) for k in src):
            print("ERROR: restored state differs from the saved one")
            return 1
    finally:
        node.close()
        shutil.rmtree(work, ignore_errors=True)
        if not directory:
            shutil.rmtree(disk, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in raw.items()}
    gbs = total / 1e9

    def row(name: str, key: str) -> str:
        spread = f"{min(raw[key]) * 1e3:8.1f} .. {max(raw[key]) * 1e3:8.1f}"
        return f"  {name:<34} {med[key] * 1e3:10.1f} ms  [{spread}]  {gbs / med[key]:7.2f} GB/s"

    print(f"\nmedian of {repeats} interleaved repeats (ms, [min .. max], throughput):")
    print(row("torch.save to local file", "torch_save"))
    print(row("torch.load + copy into model", "torch_load"))
    print(row("torch copy_ into pre-faulted memory", "copy_prefaulted"))
    print(row("ecsnap save: blocked in save()", "ecsnap_blocked"))
    print(row("ecsnap save: copy into arena done", "ecsnap_copy"))
    print(row("ecsnap save: protected (checksummed)", "ecsnap_protected"))
    print(row("ecsnap restore (verify + copy)", "ecsnap_restore"))
    print(f"  first save (allocates and pre-faults the arena): {first * 1e3:.1f} ms")
    blocked = med["ecsnap_blocked"] / med["torch_save"]
    speedup = med["torch_load"] / med["ecsnap_restore"]
    copy_ratio = med["copy_prefaulted"] / med["ecsnap_copy"]
    print("\ntargets:")
    print(f"  blocked in save / torch.save       = {blocked * 100:6.2f} %  (target <= 5 %)")
    print(f"  restore speed-up over torch.load   = {speedup:6.2f} x  (target >= 2 x)")
    print(f"  arena copy / torch copy_ speed     = {copy_ratio:6.2f} x  (target >= 0.7 x)")
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
                    "ratios": {
                        "blocked_over_torch_save": blocked,
                        "restore_speedup": speedup,
                        "copy_over_prefaulted_copy": copy_ratio,
                    },
                },
                indent=2,
            )
        )
    return 0
