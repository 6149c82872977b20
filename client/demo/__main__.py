"""`python -m ecsnap.demo`: a local cluster recovers a killed trainer, a lost node, a lost job.

The cluster: --nodes simulated nodes on this machine, each with its own SMP process (socket, gRPC
port, store directory) and --ranks-per-node trainer ranks (gloo, DDP, dropout, Adam, a per-rank
parameter), a snapshot every step, parity g=nodes, m=1 across the SMPs.

1. a reference run trains uninterrupted;
2. trainer crash: the same job is SIGKILLed right after a save was launched, relaunched, restores
   from the SMPs' memory and finishes;
3. node loss: another run is killed, and one node disappears with its memory (its SMP killed,
   its store wiped); a fresh SMP takes its place; the relaunched job rebuilds that node's state
   from its peers' data and parity over gRPC and finishes;
4. the whole job lost: a run with a durable tier (a DCP checkpoint every 5 steps, written in the
   background, set by the environment alone) is killed and every node disappears with its
   memory; the relaunch on fresh SMPs resumes from the newest persisted step and finishes;
each recovered run's parameters, optimizer state and losses must equal the reference, bit for bit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ecsnap.durable.store import Store
from ecsnap.testing import LocalCluster, compare_runs, launch_ranks, read_restore, short_tmpdir
from smp import report


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.cluster: LocalCluster | None = None
        self.world = args.nodes * args.ranks_per_node
        self.env = {"ECSNAP_GROUP_SIZE": str(args.nodes), "ECSNAP_PARITY": "1"}
        self.train = ["--steps", str(args.steps)]

    def run(
        self, out: Path, job: str, extra: list[str], expect: int, env: dict[str, str] | None = None
    ) -> bool:
        assert self.cluster is not None
        sockets = self.cluster.sockets
        ranks = launch_ranks(
            out, job, sockets, self.args.ranks_per_node, [*self.train, *extra], env or self.env
        )
        codes = ranks.wait(600)
        if codes != [expect] * self.world:
            print(ranks.output(), file=sys.stderr)
            say(f"ranks exited with {codes}, expected {expect}")
            return False
        return True

    def crash(self, out: Path, job: str, env: dict[str, str] | None = None) -> bool:
        # A little compute per step, so the durable tier's background writes keep up.
        extra = ["--die-at-step", str(self.args.kill_at), "--step-time", "0.02"]
        ok = self.run(out, job, extra, -9, env)
        if ok:
            step = self.args.kill_at
            say(f"    every rank SIGKILLed right after launching its save of step {step}")
        return ok

    def recover(self, out: Path, job: str, what: str, env: dict[str, str] | None = None) -> bool:
        start = time.perf_counter()
        if not self.run(out, job, [], 0, env):
            return False
        total = time.perf_counter() - start
        restores = [read_restore(out, r) for r in range(self.world)]
        steps = {r["step"] for r in restores}
        slowest = max(r["seconds"] for r in restores)
        rebuilt = sorted(
            {r // self.args.ranks_per_node for r, x in enumerate(restores) if x["rebuilt"]}
        )
        how = f"node(s) {rebuilt} rebuilt from peers, " if rebuilt else ""
        if {r.get("source") for r in restores} == {"durable"}:
            how = "from the durable tier, "
        say(
            f"    {what}: restored step {', '.join(map(str, sorted(steps)))} on every rank "
            f"({how}restore took "
            f"{slowest * 1000:.0f} ms); relaunch to the end of training {total:.1f} s"
        )
        problems = compare_runs(self.work / "reference", out, self.world)
        if problems:
            say("    MISMATCH: " + "; ".join(problems))
            return False
        say(
            f"    final parameters, optimizer state and all {self.args.steps} losses of every "
            "rank equal the uninterrupted run's, bit for bit"
        )
        return True

    def lose_node(self, node: int) -> None:
        assert self.cluster is not None
        self.cluster.lose(node)
        say(
            f"    node {node} is gone: SMP killed, its memory wiped; a fresh, empty SMP replaces it"
        )

    def status(self, node: int) -> None:
        assert self.cluster is not None
        rendered = report.render(report.fetch_status(self.cluster.sockets[node]))
        for line in rendered.splitlines():
            print("[demo]     | " + line)

    def main(self) -> int:
        a = self.args
        say(f"starting {a.nodes} SMPs, one per simulated node (work dir {self.work})")
        self.cluster = LocalCluster(self.work, a.nodes, memory_limit="2G")
        say(
            f"1/4 reference run: {a.nodes} nodes x {a.ranks_per_node} rank(s), {a.steps} steps, "
            "uninterrupted"
        )
        if not self.run(self.work / "reference", "demo-reference", [], 0):
            return 1
        say("2/4 trainer crash")
        out = self.work / "crash"
        if not self.crash(out, "demo-crash"):
            return 1
        self.status(0)
        if not self.recover(out, "demo-crash", "relaunched from the SMPs' memory"):
            return 1
        say("3/4 node loss")
        out = self.work / "node-loss"
        if not self.crash(out, "demo-node-loss"):
            return 1
        self.lose_node(a.lose)
        if not self.recover(out, "demo-node-loss", "relaunched on the replacement node"):
            return 1
        self.status(a.lose)
        return self.whole_job()

    def whole_job(self) -> int:
        assert self.cluster is not None
        say("4/4 the whole job lost")
        durable = self.work / "durable"
        env = {**self.env, "ECSNAP_PERSIST_TO": str(durable), "ECSNAP_PERSIST_EVERY": "5"}
        out = self.work / "whole-job"
        if not self.crash(out, "demo-whole-job", env):
            return 1
        steps = Store(str(durable)).complete()
        self.cluster.lose(*range(self.args.nodes))
        say(
            "    every node is gone with its memory; fresh SMPs everywhere; the durable tier "
            f"holds steps {sorted(steps)} (DCP checkpoints, written in the background)"
        )
        if not self.recover(out, "demo-whole-job", "relaunched on fresh SMPs", env):
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecsnap.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes (an SMP each)")
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--kill-at", type=int, default=20, help="step after which the ranks die")
    p.add_argument("--lose", type=int, default=2, help="the node that disappears")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if not 0 <= args.kill_at < args.steps - 1:
        p.error("--kill-at must be within 0 .. steps-2")
    if args.nodes < 2 or not 0 <= args.lose < args.nodes:
        p.error("node loss needs --nodes >= 2 and --lose within 0 .. nodes-1")
    work = short_tmpdir("ecsnap-demo-")
    demo = Demo(args, work)
    try:
        return demo.main()
    finally:
        if demo.cluster is not None:
            demo.cluster.close()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
