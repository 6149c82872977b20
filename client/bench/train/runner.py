"""`ecsnap bench train`: orchestration. Every contender trains the same workload on the same
simulated cluster (nodes x ranks per node, one SMP per node for ecsnap); repeats are interleaved,
so ratios come from runs that shared the machine's conditions. What one repeat of one contender
does (train, crash, relaunch, check what was restored): see ecsnap.bench.train.trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecsnap.bench.train import plot, report
from ecsnap.bench.train.contenders import Spec, specs
from ecsnap.bench.train.launcher import Launcher, machine_info
from ecsnap.bench.train.trial import RunFailed as RunFailed  # re-exported
from ecsnap.bench.train.trial import drop_page_cache as drop_page_cache  # re-exported
from ecsnap.bench.train.trial import run_one
from ecsnap.bench.train.workload import ModelConfig, describe
from ecsnap.testing import short_tmpdir
from smp.config import parse_size

DEFAULT_CONTENDERS = list(specs(4))
FSDP_CONTENDERS = [n for n in DEFAULT_CONTENDERS if n != "torch_save"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what runs")
    g.add_argument(
        "--contenders",
        default="",
        help="comma-separated subset of: "
        + ", ".join(DEFAULT_CONTENDERS)
        + " (default: all; with --sharding fsdp all but torch_save)",
    )
    g.add_argument("--nodes", type=int, default=2, help="simulated nodes, one SMP each (2)")
    g.add_argument("--ranks-per-node", type=int, default=1, help="trainer ranks per node")
    g.add_argument("--steps", type=int, default=12, help="measured steps per run (default 12)")
    g.add_argument("--warmup", type=int, default=2, help="warm-up steps, each checkpointed")
    g.add_argument("--interval", type=int, default=4, help="N of the 'every N steps' contenders")
    g.add_argument("--repeats", type=int, default=3, help="interleaved runs per contender")
    g.add_argument("--parity", type=int, default=1, help="parity nodes per group (parity on)")
    g.add_argument("--group-size", type=int, default=4, help="nodes per parity group (capped)")
    m = p.add_argument_group("workload")
    m.add_argument("--d-model", type=int, default=256)
    m.add_argument("--layers", type=int, default=4)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--vocab", type=int, default=8192)
    m.add_argument("--seq", type=int, default=128)
    m.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    m.add_argument(
        "--state-size",
        default="0",
        help="training state per rank, e.g. 256M: a per-rank parameter pads the model's "
        "state up to it (default 0: the model and AdamW only)",
    )
    m.add_argument(
        "--sharding",
        choices=["ddp", "fsdp"],
        default="ddp",
        help="ddp: replicated model (default); fsdp: FSDP2, every parameter and moment sharded",
    )
    m.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    m.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: cores/ranks)")
    o = p.add_argument_group("where")
    o.add_argument("--ckpt-dir", default=None, help="local disk for checkpoint files (a tmp dir)")
    o.add_argument("--json", default="bench-train.json", help="raw measurements (JSON)")
    o.add_argument("--plot", default="bench-train.png", help="PNG plot ('' for none)")
    o.add_argument("--timeout", type=float, default=300.0, help="limit for each launch (s)")
    o.add_argument("--keep", action="store_true", help="keep the work dir (logs) and say where")
    o.add_argument("--inject-failure", default="", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None, prog: str = "ecsnap bench train") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="End-to-end benchmark: training overhead and recovery time of ecsnap against "
        "no fault tolerance, torch.save and torch.distributed.checkpoint, on one workload.",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)


def _contender_names(args: argparse.Namespace, known: Mapping[str, Spec]) -> list[str] | None:
    """The contenders to run, or None (said on stderr) when the arguments do not make sense."""
    chosen = args.contenders or ",".join(
        FSDP_CONTENDERS if args.sharding == "fsdp" else DEFAULT_CONTENDERS
    )
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        print(f"unknown contenders {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return None
    if args.interval < 1 or args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        print("--interval, --steps, --warmup and --repeats must be >= 1", file=sys.stderr)
        return None
    if args.sharding == "fsdp" and "torch_save" in names:
        print(
            "torch_save is not a contender for --sharding fsdp (DTensors are saved with DCP); "
            "pick others with --contenders",
            file=sys.stderr,
        )
        return None
    return names


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab=args.vocab,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        seq=args.seq,
        batch=args.batch,
        state_bytes=parse_size(args.state_size),
        sharding=args.sharding,
        world=args.nodes * args.ranks_per_node,
    )


def _config(
    args: argparse.Namespace, cfg: ModelConfig, launcher: Launcher, names: list[str]
) -> dict[str, Any]:
    """The run's configuration, as the JSON records it."""
    return {
        "argv": sys.argv,
        "nodes": args.nodes,
        "ranks_per_node": args.ranks_per_node,
        "world": launcher.world,
        "threads_per_rank": launcher.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "interval": args.interval,
        "repeats": args.repeats,
        "parity": args.parity,
        "group_size": min(args.group_size, args.nodes),
        "model": asdict(cfg),
        "params": cfg.param_count(),
        "state_bytes_per_rank": cfg.total_state_bytes(),
        "contenders": names,
    }


def _print_setup(
    args: argparse.Namespace,
    cfg: ModelConfig,
    launcher: Launcher,
    device: str,
    disk: Path,
    machine: Mapping[str, Any],
    names: list[str],
) -> None:
    print(f"workload: {describe(cfg)}")
    print(
        f"cluster: {args.nodes} node(s) x {args.ranks_per_node} rank(s), {launcher.threads} "
        f"torch thread(s) per rank, {device}; checkpoints to {disk} ({machine['ckpt_dir_fs']})"
    )
    if machine["ckpt_dir_fs"] in ("tmpfs", "ramfs"):
        print("WARNING: the checkpoint directory is in memory (tmpfs): disk figures are optimistic")
    print(
        f"{args.repeats} interleaved repeat(s) of {len(names)} contender(s): {args.warmup} "
        f"warm-up + {args.steps} measured steps, interval {args.interval}"
    )


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds: every finally cleans up


@dataclass
class _Repeats:
    """Every contender's repeats, interleaved: the raw runs and the errors of failed ones."""

    args: argparse.Namespace
    known: Mapping[str, Spec]
    names: list[str]
    launcher: Launcher
    work: Path
    disk: Path
    runs: dict[str, list[dict[str, Any]]] = field(init=False)
    errors: dict[str, list[dict[str, Any]]] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = {n: [] for n in self.names}
        self.errors = {n: [] for n in self.names}

    def run_all(self) -> None:
        names = self.names
        for rep in range(self.args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                if self.errors[name]:
                    continue  # failed once: reported as failed, not run again
                self._run(name, rep)

    def _run(self, name: str, rep: int) -> None:
        t = time.monotonic()

        def log(msg: str) -> None:
            print(f"  [{rep + 1}/{self.args.repeats}] {name:<16} {msg}", flush=True)

        log("training")
        try:
            run = run_one(
                self.known[name], rep, self.args, self.launcher, self.work, self.disk, log
            )
            self.runs[name].append(run)
            log(f"done in {time.monotonic() - t:.1f}s")
        except Exception as exc:  # noqa: BLE001 - a failed contender is reported
            self.errors[name].append({"repeat": rep, "error": f"{type(exc).__name__}: {exc}"})
            log(f"FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def run(args: argparse.Namespace) -> int:
    known = specs(args.interval)
    names = _contender_names(args, known)
    if names is None:
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = _model_config(args)
    launcher = Launcher(args, cfg, device)
    work = short_tmpdir("ecsnap-bt-")
    disk = Path(tempfile.mkdtemp(prefix="ecsnap-bt-ckpt-", dir=args.ckpt_dir))
    machine = machine_info(disk, device)
    config = _config(args, cfg, launcher, names)
    _print_setup(args, cfg, launcher, device, disk, machine, names)
    signal.signal(signal.SIGTERM, _interrupted)
    repeats = _Repeats(args, known, names, launcher, work, disk)
    started = time.monotonic()
    try:
        repeats.run_all()
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    data = report.build(config, machine, known, names, repeats.runs, repeats.errors)
    data["wall_s"] = time.monotonic() - started
    print()
    print(report.render(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"\nraw measurements: {args.json}")
    if args.plot:
        print(plot.plot(data, args.plot))
    return 1 if any(repeats.errors.values()) else 0
