"""`python -m ecsnap.demo`: a local cluster shows recovery of a killed trainer from memory.

1. starts an SMP; 2. trains a reference job uninterrupted; 3. trains the same job again and
SIGKILLs both ranks mid-run, right after a save was launched; 4. relaunches it: the ranks restore
from the SMP's memory and finish; 5. checks that parameters, optimizer state and every loss equal
the reference run's bit for bit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from ecsnap.demo.cluster import LocalSMP, compare_runs, launch_ranks, read_restore, short_tmpdir
from smp import report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecsnap.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ranks", type=int, default=2, help="trainer ranks (processes)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--kill-at", type=int, default=25, help="step after which the ranks die")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if not 0 <= args.kill_at < args.steps - 1:
        p.error("--kill-at must be within 0 .. steps-2")

    work = short_tmpdir("ecsnap-demo-")
    smp = LocalSMP(work / "node0")
    train = ["--steps", str(args.steps)]
    try:
        print(f"[demo] starting an SMP (work dir {work})")
        smp.start()
        print(f"[demo] 1/3 reference run: {args.ranks} ranks x {args.steps} steps, uninterrupted")
        ref = launch_ranks(work / "reference", "demo-reference", [smp.socket], args.ranks, train)
        if any(ref.wait(300)):
            print(ref.output(), file=sys.stderr)
            return 1

        print(f"[demo] 2/3 same job, every rank SIGKILLed right after saving step {args.kill_at}")
        out = work / "recovered"
        crash = launch_ranks(
            out,
            "demo-crash",
            [smp.socket],
            args.ranks,
            [*train, "--die-at-step", str(args.kill_at)],
        )
        codes = crash.wait(300)
        print(f"[demo]     ranks exited with {codes} (-9 = SIGKILL)")
        print(
            "\n".join(
                "[demo]     " + line
                for line in report.render(report.fetch_status(smp.socket)).splitlines()
            )
        )

        print("[demo] 3/3 relaunch: restore from the SMP's memory and train to the end")
        start = time.perf_counter()
        again = launch_ranks(out, "demo-crash", [smp.socket], args.ranks, train)
        if any(again.wait(300)):
            print(again.output(), file=sys.stderr)
            return 1
        total = time.perf_counter() - start
        restores = [read_restore(out, r) for r in range(args.ranks)]
        problems = compare_runs(work / "reference", out, args.ranks)
        step = restores[0]["step"]
        slowest = max(r["seconds"] for r in restores)
        print(
            f"[demo] restored step {step} on every rank (killed after saving step "
            f"{args.kill_at}); restore took {slowest * 1000:.1f} ms, relaunch to finish "
            f"{total:.1f} s"
        )
        if problems:
            print("[demo] MISMATCH: " + "; ".join(problems))
            return 1
        print(
            f"[demo] final parameters, optimizer state and all {args.steps} losses of every "
            "rank equal the uninterrupted run's, bit for bit"
        )
        return 0
    finally:
        smp.close()
        if args.keep:
            print(f"[demo] kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
