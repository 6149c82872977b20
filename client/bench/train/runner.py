"""`ecsnap bench train`: orchestration. Every contender trains the same workload on the same
simulated cluster (nodes x ranks per node, one SMP per node for ecsnap); repeats are interleaved,
so ratios come from runs that shared the machine's conditions.

Per contender and repeat:
1. train: warm-up, measured steps with the contender's checkpoints, last checkpoint made safe, a
   probe step, then every rank SIGKILLs itself (a trainer crash);
2. trainer-kill recovery: relaunch every rank; each restores and does one step (page cache warm);
3. disk contenders: the same again after the checkpoint files were fsynced and evicted from the
   page cache (what a replacement node or a cold cache sees); ecsnap with parity: a node loss (its
   SMP stopped, its memory wiped, a fresh SMP started) and a relaunch that rebuilds from peers.
A relaunch must restore the last safe checkpoint, and its first loss must equal the uninterrupted
run's loss at that step, bit for bit; otherwise the run counts as failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ecsnap.bench.train import plot, report
from ecsnap.bench.train.contenders import Spec, specs
from ecsnap.bench.train.launcher import Launcher, machine_info
from ecsnap.bench.train.worker import FAIL_ENV
from ecsnap.bench.train.workload import ModelConfig, describe
from ecsnap.testing import LocalSMP, RankRun, short_tmpdir
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


class RunFailed(RuntimeError):
    pass


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _wait(run: RankRun, expect: int, timeout: float, what: str) -> None:
    codes = run.wait(timeout)
    if codes != [expect] * len(codes):
        errors = [
            line.strip()
            for line in run.output().splitlines()
            if "Error" in line or "error" in line or "Exception" in line
        ]
        first = errors[-1] if errors else f"exit codes {codes}"
        raise RunFailed(f"{what}: ranks exited with {codes}: {first}\n{_tail(run.output())}")


def _results(out: Path, world: int, phase: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.{phase}.json").read_text()) for r in range(world)]


def _smp_memory(smps: list[LocalSMP]) -> list[dict[str, int]]:
    mem = []
    for s in smps:
        entry = {"vm_hwm_bytes": 0, "vm_rss_bytes": 0, "arena_bytes": 0}
        if s.proc is not None:
            try:
                for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        entry[f"{key[:2].lower()}_{key[2:].lower()}_bytes"] = (
                            int(value.split()[0]) * 1024
                        )
            except OSError:
                pass
        for root, _, files in os.walk(s.store_dir):
            for name in files:
                with contextlib.suppress(OSError):
                    entry["arena_bytes"] += os.stat(os.path.join(root, name)).st_blocks * 512
        mem.append(entry)
    return mem


def drop_page_cache(root: Path) -> int:
    """fsync and evict every file under root from the page cache; returns bytes evicted."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def _recovery(
    t_launch: float, ranks: list[dict[str, Any]], expect_step: int, train_losses: list[list[str]]
) -> dict[str, Any]:
    restored = {r["restored_step"] for r in ranks}
    if restored != {expect_step}:
        raise RunFailed(f"restored step {sorted(restored, key=str)}, expected {expect_step}")
    for r in ranks:
        want = train_losses[r["rank"]][expect_step + 1]
        if r["loss"] != want:
            raise RunFailed(
                f"rank {r['rank']}: first loss after restoring step {expect_step} is "
                f"{float.fromhex(r['loss'])!r}, the uninterrupted run had {float.fromhex(want)!r}"
            )
    return {
        "restored_step": expect_step,
        "recovery_s": max(r["t_first_step"] for r in ranks) - t_launch,
        "load_s": max(r["load_s"] for r in ranks),
        "startup_s": max(r["t_built"] for r in ranks) - t_launch,
        "import_s": max(r["t_imported"] for r in ranks) - t_launch,
        "first_step_s": max(r["t_first_step"] - r["t_built"] - r["load_s"] for r in ranks),
        "ranks": ranks,
    }


def run_one(
    spec: Spec,
    rep: int,
    args: argparse.Namespace,
    launcher: Launcher,
    work: Path,
    disk: Path,
    log: Any,
) -> dict[str, Any]:
    nodes, world = args.nodes, launcher.world
    run_dir = work / f"{spec.name}.{rep}"
    ckpt_dir = disk / f"{spec.name}.{rep}"
    job = f"bt-{spec.name}-{rep}-{os.getpid()}"
    env: dict[str, str] = {}
    if args.inject_failure == spec.name:
        env[FAIL_ENV] = "1"
    smps: list[LocalSMP] = []
    rpn = args.ranks_per_node
    if spec.ecsnap and not spec.parity:
        # ecsnap protects across nodes whenever a job spans several: parity off = every rank of
        # the same world on one node (one SMP), protected against trainer crashes only.
        nodes, rpn = 1, world
    per_node = rpn * launcher.cfg.total_state_bytes()
    mem_limit = str(4 * per_node + (512 << 20))  # two slots, parity, rebuild room
    result: dict[str, Any] = {"repeat": rep, "nodes": nodes, "ranks_per_node": rpn}
    try:
        if spec.ecsnap:
            if spec.parity:
                if nodes < 2:
                    raise RunFailed("parity needs --nodes >= 2")
                env["ECSNAP_PARITY"] = str(args.parity)
                env["ECSNAP_GROUP_SIZE"] = str(min(args.group_size, nodes))
            for n in range(nodes):
                smps.append(LocalSMP(run_dir / f"node{n}", memory_limit=mem_limit).start())

        def launch(phase: str, tag: str) -> tuple[float, RankRun]:
            sockets = [s.socket for s in smps] or [""] * nodes
            return launcher.launch(spec, phase, run_dir / tag, ckpt_dir, job, sockets, env, rpn)

        t_launch, run = launch("train", "train")
        _wait(run, -9, args.timeout, "training run")
        ranks = _results(run_dir / "train", world, "train")
        result["train"] = {"t_launch": t_launch, "ranks": ranks}
        result["smp_memory"] = _smp_memory(smps)
        losses = [r["losses"] for r in ranks]
        ckpts = [c["step"] for c in ranks[0]["checkpoints"] if not c["skipped"]] or [
            c["step"] for c in ranks[0]["warmup_checkpoints"] if not c["skipped"]
        ]
        if spec.kind == "none":
            # Nothing to restore: a restart begins at step 0; its cost is a fresh start.
            result["kill"] = {
                "restored_step": None,
                "recovery_s": max(r["t_first_step"] for r in ranks) - t_launch,
                "load_s": 0.0,
                "startup_s": max(r["t_built"] for r in ranks) - t_launch,
                "import_s": max(r["t_imported"] for r in ranks) - t_launch,
            }
            return result
        last = max(ckpts)

        def recover(tag: str) -> dict[str, Any]:
            t, rerun = launch("resume", tag)
            _wait(rerun, 0, args.timeout, f"{tag} relaunch")
            return _recovery(t, _results(run_dir / tag, world, "resume"), last, losses)

        log("trainer kill -> relaunch")
        result["kill"] = recover("kill")
        if spec.disk:
            result["evicted_bytes"] = drop_page_cache(ckpt_dir)
            log("page cache dropped -> relaunch")
            result["cold"] = recover("cold")
        if spec.ecsnap and spec.parity:
            lost = nodes - 1
            smps[lost].close()  # the node's SMP and its memory are gone
            smps[lost] = LocalSMP(run_dir / f"node{lost}b", memory_limit=mem_limit).start()
            log(f"node {lost} lost (SMP killed, memory wiped, fresh SMP) -> relaunch")
            result["node_loss"] = recover("node_loss")
        return result
    finally:
        for s in smps:
            s.close()
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def main(argv: list[str] | None = None, prog: str = "ecsnap bench train") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="End-to-end benchmark: training overhead and recovery time of ecsnap against "
        "no fault tolerance, torch.save and torch.distributed.checkpoint, on one workload.",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    known = specs(args.interval)
    chosen = args.contenders or ",".join(
        FSDP_CONTENDERS if args.sharding == "fsdp" else DEFAULT_CONTENDERS
    )
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        print(f"unknown contenders {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    if args.interval < 1 or args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        print("--interval, --steps, --warmup and --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.sharding == "fsdp" and "torch_save" in names:
        print(
            "torch_save is not a contender for --sharding fsdp (DTensors are saved with DCP); "
            "pick others with --contenders",
            file=sys.stderr,
        )
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = ModelConfig(
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
    launcher = Launcher(args, cfg, device)
    work = short_tmpdir("ecsnap-bt-")
    disk = Path(tempfile.mkdtemp(prefix="ecsnap-bt-ckpt-", dir=args.ckpt_dir))
    machine = machine_info(disk, device)
    config = {
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

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds: every finally cleans up

    signal.signal(signal.SIGTERM, interrupted)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    errors: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    started = time.monotonic()
    try:
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                spec = known[name]
                if errors[name]:
                    continue  # failed once: reported as failed, not run again
                t = time.monotonic()

                def log(msg: str, name: str = name, rep: int = rep) -> None:
                    print(f"  [{rep + 1}/{args.repeats}] {name:<16} {msg}", flush=True)

                log("training")
                try:
                    runs[name].append(run_one(spec, rep, args, launcher, work, disk, log))
                    log(f"done in {time.monotonic() - t:.1f}s")
                except Exception as exc:  # noqa: BLE001 - a failed contender is reported
                    errors[name].append({"repeat": rep, "error": f"{type(exc).__name__}: {exc}"})
                    log(f"FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    data = report.build(config, machine, known, names, runs, errors)
    data["wall_s"] = time.monotonic() - started
    print()
    print(report.render(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"\nraw measurements: {args.json}")
    if args.plot:
        print(plot.plot(data, args.plot))
    return 1 if any(errors.values()) else 0
