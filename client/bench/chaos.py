"""`ecsnap bench chaos`: a training job under random faults ends bit for bit like a clean run.

4 simulated nodes (an SMP process each), one rank per node (DDP over gloo, dropout, Adam, a
per-rank parameter), a snapshot every step, parity over a group of 4 with 1 parity node. While the
job trains, faults are drawn at random from:

  trainer_kill  every rank SIGKILLed (whatever it was doing, a save included); relaunched
  smp_restart   a node's SMP SIGKILLed and restarted on its store (as systemd does)
  node_loss     a node's ranks and SMP killed, its memory wiped, a fresh SMP in its place
  corruption    a byte flipped in a node's copy of the committed step, then every rank killed
  freeze        a node's SMP stopped (SIGSTOP) for a few seconds, then continued

at most one node-level loss (node_loss, corruption) per group between commits: what one parity
node covers. Whenever the job dies, it is relaunched (what torchrun's --max-restarts does) and
restores from the SMPs. At the end its parameters, optimizer state and every loss must equal an
uninterrupted run's, bit for bit. Printed: the faults by kind, the recoveries, the steps redone.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from ecsnap.testing import LocalCluster, RankRun, compare_runs, launch_ranks, short_tmpdir
from smp import report

NODES = 4
KINDS = ("trainer_kill", "smp_restart", "node_loss", "corruption", "freeze")
NODE_LEVEL = ("node_loss", "corruption")
JOB = "chaos"


@dataclass
class Tally:
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    recoveries: int = 0
    rebuilds: int = 0
    restored: list[int | None] = field(default_factory=list)
    steps_lost: list[int] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)


class Chaos:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.env = {"ECSNAP_GROUP_SIZE": str(NODES), "ECSNAP_PARITY": "1"}
        self.train = ["--steps", str(args.steps), "--shard-size", str(args.shard_size)]
        self.out = work / "chaos"
        self.tally = Tally()
        self.cluster = LocalCluster(work / "nodes", NODES, memory_limit="512M")
        self.run: RankRun | None = None

    def log(self, text: str) -> None:
        print(f"[chaos {time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    # -- the job --------------------------------------------------------------------------------

    def launch(self) -> None:
        self.run = launch_ranks(self.out, JOB, self.cluster.sockets, 1, self.train, self.env)
        self.launched = time.monotonic()

    def losses_done(self) -> int:
        """The newest step rank 0 finished (-1 before any)."""
        path = self.out / "rank0.losses.jsonl"
        if not path.exists():
            return -1
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        return max((int(json.loads(ln)["step"]) for ln in lines), default=-1)

    def committed(self) -> int:
        """The job's committed step, as the lowest of the SMPs reports it (-1: none yet)."""
        steps = []
        for sock in self.cluster.sockets:
            status = report.served(sock, 2.0)
            job = next((j for j in status.jobs if j.job_id == JOB), None) if status else None
            steps.append(job.committed_step if job is not None and job.has_committed else -1)
        return min(steps)

    def finished(self) -> bool:
        assert self.run is not None
        return all(p.poll() == 0 for p in self.run.procs)

    def died(self) -> bool:
        assert self.run is not None
        return any(p.poll() not in (None, 0) for p in self.run.procs)

    def kill(self) -> None:
        if self.run is not None:
            self.run.kill()

    def recover(self) -> None:
        """The job died: relaunch it; wait until it restored (or finished)."""
        done = self.losses_done()
        self.kill()
        started = time.monotonic()
        self.launch()
        self.tally.recoveries += 1
        deadline = time.monotonic() + self.args.timeout
        restore = self.out / "rank0.restore.json"
        before = restore.stat().st_mtime if restore.exists() else 0.0
        while not (restore.exists() and restore.stat().st_mtime > before):
            if self.died():
                raise RuntimeError(f"the relaunched job died before restoring:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no restore within {self.args.timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        info = json.loads(restore.read_text())
        step = info["step"]
        rebuilt = [
            json.loads((self.out / f"rank{r}.restore.json").read_text()).get("rebuilt", False)
            for r in range(NODES)
            if (self.out / f"rank{r}.restore.json").exists()
        ]
        self.tally.rebuilds += sum(bool(x) for x in rebuilt)
        self.tally.restored.append(step)
        self.tally.steps_lost.append(done - (step if step is not None else -1))
        self.tally.recovery_s.append(time.monotonic() - started)
        self.log(f"    relaunched: restored step {step} (had done {done}), rebuilt {rebuilt}")

    def tail(self) -> str:
        return self.run.output()[-3000:] if self.run is not None else ""

    # -- faults ---------------------------------------------------------------------------------

    def inject(self, kind: str, node: int) -> None:
        c = self.cluster
        self.tally.faults[kind] += 1
        if kind == "trainer_kill":
            self.kill()
        elif kind == "smp_restart":
            c.restart(node)
        elif kind == "node_loss":
            self.kill()
            c.lose(node)
        elif kind == "corruption":
            self.kill()
            self.corrupt(node)
        elif kind == "freeze":
            c.freeze(node)
            time.sleep(self.rng.uniform(1.0, 3.0))
            c.thaw(node)

    def corrupt(self, node: int) -> None:
        """Flip one byte of this node's copy of the committed step (a rank's slot)."""
        smp = self.cluster.smps[node]
        status = report.fetch_status(smp.socket)
        job = next((j for j in status.jobs if j.job_id == JOB), None)
        if job is None or not job.has_committed:
            return
        for rank in job.ranks:
            for slot in rank.slots:
                if slot.step == job.committed_step and slot.state == 4 and slot.nbytes:
                    path = Path(smp.store_dir, JOB, f"r{rank.rank}.s{slot.slot}.arena")
                    at = self.rng.randrange(slot.nbytes)
                    with path.open("r+b") as f:
                        f.seek(at)
                        byte = f.read(1)
                        f.seek(at)
                        f.write(bytes([byte[0] ^ 0x40]))
                    self.log(f"    flipped byte {at} of rank {rank.rank}'s step {slot.step}")
                    return

    # -- the run --------------------------------------------------------------------------------

    def plan(self) -> list[str]:
        """The faults in order: every kind about as often, shuffled."""
        count = int(self.args.faults)
        kinds = list(KINDS) * (-(-count // len(KINDS)))
        self.rng.shuffle(kinds)
        return kinds[:count]

    def main(self) -> int:
        a = self.args
        self.t0 = time.monotonic()
        self.log(f"reference run: {NODES} nodes x 1 rank, {a.steps} steps, uninterrupted")
        ref = launch_ranks(
            self.work / "ref", "chaos-ref", self.cluster.sockets, 1, self.train, self.env
        )
        if ref.wait(a.timeout * 4) != [0] * NODES:
            print(ref.output())
            return 1
        self.log(f"chaos run: {a.faults} faults, seed {a.seed}")
        self.launch()
        last_node_level = -2  # committed step when the last node-level fault hit
        for i, kind in enumerate(self.plan()):
            # Let it train a little (and, for a node-level fault, commit a step after the last).
            target = self.losses_done() + self.rng.randint(1, a.gap)
            deadline = time.monotonic() + a.timeout
            while self.losses_done() < target or (
                kind in NODE_LEVEL and self.committed() <= last_node_level
            ):
                if self.finished():
                    break
                if self.died():
                    self.recover()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no progress within {a.timeout}s:\n{self.tail()}")
                time.sleep(0.05)
            if self.finished():
                self.log(f"the job finished before fault {i + 1}; stopping there")
                break
            node = self.rng.randrange(NODES)
            if kind in NODE_LEVEL:
                last_node_level = self.committed()
            self.log(f"fault {i + 1}/{a.faults}: {kind} on node {node} (step {self.losses_done()})")
            self.inject(kind, node)
            time.sleep(0.3)
            if self.died() or kind in ("trainer_kill", "node_loss", "corruption"):
                self.recover()
        deadline = time.monotonic() + a.timeout * 4
        while not self.finished():
            if self.died():
                self.recover()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job did not finish:\n{self.tail()}")
            time.sleep(0.1)
        problems = compare_runs(self.work / "ref", self.out, NODES)
        self.report(problems)
        return 0 if not problems else 1

    def report(self, problems: list[str]) -> None:
        t = self.tally
        lost = t.steps_lost
        print()
        print(f"faults ({sum(t.faults.values())}):")
        for kind, count in t.faults.items():
            print(f"  {kind:<13} {count}")
        print(f"recoveries (relaunches): {t.recoveries}; node rebuilds from parity: {t.rebuilds}")
        if lost:
            print(
                f"steps redone per recovery: mean {statistics.mean(lost):.1f}, max {max(lost)}, "
                f"total {sum(lost)} of {self.args.steps}"
            )
            print(f"relaunch to restored: median {statistics.median(t.recovery_s):.1f}s")
        fresh = sum(1 for s in t.restored if s is None)
        print(f"restores from nothing (fresh starts): {fresh}")
        if problems:
            print("RESULT: the final state differs from the uninterrupted run's:")
            for p in problems:
                print(f"  {p}")
        else:
            print(
                "RESULT: final parameters, optimizer state and every loss of every rank equal "
                "the uninterrupted run's, bit for bit"
            )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--faults", type=int, default=100, help="faults to inject (default 100)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default 8 per fault)")
    p.add_argument("--gap", type=int, default=3, help="at most this many steps between faults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1 << 16, help="per-rank parameter size")
    p.add_argument("--timeout", type=float, default=180.0, help="limit for each wait (s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")


def run(args: argparse.Namespace) -> int:
    if args.faults < 1:
        raise SystemExit("--faults must be >= 1")
    args.steps = args.steps or 8 * args.faults + 10
    work = short_tmpdir("ecsnap-chaos-")
    chaos = Chaos(args, work)

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds: the finally cleans up

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return chaos.main()
    finally:
        chaos.kill()
        chaos.cluster.close()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
