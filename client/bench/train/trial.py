"""One repeat of one contender of `ecsnap bench train` (the runner interleaves them):
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecsnap.bench.train.contenders import Spec
from ecsnap.bench.train.launcher import Launcher
from ecsnap.bench.train.worker import FAIL_ENV
from ecsnap.testing import LocalSMP, RankRun


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
        vm = s.memory()
        entry = {
            "vm_hwm_bytes": vm.get("VmHWM", 0),
            "vm_rss_bytes": vm.get("VmRSS", 0),
            "arena_bytes": 0,
        }
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


def _launch_timings(
    t_launch: float, ranks: list[dict[str, Any]], restored_step: int | None, load_s: float
) -> dict[str, Any]:
    return {
        "restored_step": restored_step,
        "recovery_s": max(r["t_first_step"] for r in ranks) - t_launch,
        "load_s": load_s,
        "startup_s": max(r["t_built"] for r in ranks) - t_launch,
        "import_s": max(r["t_imported"] for r in ranks) - t_launch,
    }


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
        **_launch_timings(t_launch, ranks, expect_step, max(r["load_s"] for r in ranks)),
        "first_step_s": max(r["t_first_step"] - r["t_built"] - r["load_s"] for r in ranks),
        "ranks": ranks,
    }


@dataclass
class _Trial:
    """Where one repeat of one contender runs: its directories, job id, nodes and their SMPs."""

    spec: Spec
    args: argparse.Namespace
    launcher: Launcher
    run_dir: Path
    ckpt_dir: Path
    job: str
    nodes: int
    rpn: int
    mem_limit: str
    env: dict[str, str] = field(default_factory=dict)
    smps: list[LocalSMP] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        spec: Spec,
        rep: int,
        args: argparse.Namespace,
        launcher: Launcher,
        work: Path,
        disk: Path,
    ) -> _Trial:
        nodes, rpn = args.nodes, args.ranks_per_node
        if spec.ecsnap and not spec.parity:
            # ecsnap protects across nodes whenever a job spans several: parity off = every rank of
            # the same world on one node (one SMP), protected against trainer crashes only.
            nodes, rpn = 1, launcher.world
        per_node = rpn * launcher.cfg.total_state_bytes()
        mem_limit = str(4 * per_node + (512 << 20))  # two slots, parity, rebuild room
        trial = cls(
            spec=spec,
            args=args,
            launcher=launcher,
            run_dir=work / f"{spec.name}.{rep}",
            ckpt_dir=disk / f"{spec.name}.{rep}",
            job=f"bt-{spec.name}-{rep}-{os.getpid()}",
            nodes=nodes,
            rpn=rpn,
            mem_limit=mem_limit,
        )
        if args.inject_failure == spec.name:
            trial.env[FAIL_ENV] = "1"
        return trial

    def start_smps(self) -> None:
        if not self.spec.ecsnap:
            return
        if self.spec.parity:
            if self.nodes < 2:
                raise RunFailed("parity needs --nodes >= 2")
            self.env["ECSNAP_PARITY"] = str(self.args.parity)
            self.env["ECSNAP_GROUP_SIZE"] = str(min(self.args.group_size, self.nodes))
        for n in range(self.nodes):
            self.smps.append(self._smp(f"node{n}"))

    def _smp(self, name: str) -> LocalSMP:
        return LocalSMP(self.run_dir / name, memory_limit=self.mem_limit).start()

    def lose_node(self, lost: int) -> None:
        self.smps[lost].close()  # the node's SMP and its memory are gone
        self.smps[lost] = self._smp(f"node{lost}b")

    def launch(self, phase: str, tag: str) -> tuple[float, RankRun]:
        sockets = [s.socket for s in self.smps] or [""] * self.nodes
        return self.launcher.launch(
            self.spec,
            phase,
            self.run_dir / tag,
            self.ckpt_dir,
            self.job,
            sockets,
            self.env,
            self.rpn,
        )

    def train(self) -> tuple[float, list[dict[str, Any]]]:
        t_launch, run = self.launch("train", "train")
        _wait(run, -9, self.args.timeout, "training run")
        return t_launch, _results(self.run_dir / "train", self.launcher.world, "train")

    def recover(self, tag: str, last: int, losses: list[list[str]]) -> dict[str, Any]:
        t, rerun = self.launch("resume", tag)
        _wait(rerun, 0, self.args.timeout, f"{tag} relaunch")
        ranks = _results(self.run_dir / tag, self.launcher.world, "resume")
        return _recovery(t, ranks, last, losses)

    def close(self) -> None:
        for s in self.smps:
            s.close()
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)


def _recoveries(
    trial: _Trial, ranks: list[dict[str, Any]], result: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Crash, relaunch, check what was restored: after a trainer kill, then cold or a node loss."""
    spec = trial.spec
    losses = [r["losses"] for r in ranks]
    ckpts = [c["step"] for c in ranks[0]["checkpoints"] if not c["skipped"]] or [
        c["step"] for c in ranks[0]["warmup_checkpoints"] if not c["skipped"]
    ]
    last = max(ckpts)
    log("trainer kill -> relaunch")
    result["kill"] = trial.recover("kill", last, losses)
    if spec.disk:
        result["evicted_bytes"] = drop_page_cache(trial.ckpt_dir)
        log("page cache dropped -> relaunch")
        result["cold"] = trial.recover("cold", last, losses)
    if spec.ecsnap and spec.parity:
        lost = trial.nodes - 1
        trial.lose_node(lost)
        log(f"node {lost} lost (SMP killed, memory wiped, fresh SMP) -> relaunch")
        result["node_loss"] = trial.recover("node_loss", last, losses)


def run_one(
    spec: Spec,
    rep: int,
    args: argparse.Namespace,
    launcher: Launcher,
    work: Path,
    disk: Path,
    log: Any,
) -> dict[str, Any]:
    trial = _Trial.plan(spec, rep, args, launcher, work, disk)
    result: dict[str, Any] = {"repeat": rep, "nodes": trial.nodes, "ranks_per_node": trial.rpn}
    try:
        trial.start_smps()
        t_launch, ranks = trial.train()
        result["train"] = {"t_launch": t_launch, "ranks": ranks}
        result["smp_memory"] = _smp_memory(trial.smps)
        if spec.kind == "none":
            # Nothing to restore: a restart begins at step 0; its cost is a fresh start.
            result["kill"] = _launch_timings(t_launch, ranks, None, 0.0)
            return result
        _recoveries(trial, ranks, result, log)
        return result
    finally:
        trial.close()
