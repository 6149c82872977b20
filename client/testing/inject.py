"""Run a training script unchanged, with a crash injected right after one of its saves.

    python -m ecsnap.testing.inject --crash-at-step 12 [--rank R] [--first-run-only] \
        -- train.py [script args]

The script runs as `__main__` (as `python train.py` would run it); `ecsnap.Snapshotter.save` is
wrapped so that, on the chosen rank (default: every rank), the process is SIGKILLed by
`ecsnap.testing.crash` as soon as the save of that step has returned, its copy possibly still in
flight. Scripts built on an integration (HF Trainer, Lightning) that save from a callback can
thus be killed at an exact step without a line of test code in them. With --first-run-only the
crash happens only in torchrun's first run of the workers (TORCHELASTIC_RESTART_COUNT 0), so
the restarted workers train to the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import runpy
import sys
from typing import Any

import ecsnap
from ecsnap.env import RankEnv
from ecsnap.testing.ranks import crash


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m ecsnap.testing.inject [options] -- SCRIPT [ARGS]")
    at = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m ecsnap.testing.inject")
    p.add_argument("--crash-at-step", type=int, required=True)
    p.add_argument("--rank", type=int, default=None, help="only this rank crashes (default: all)")
    p.add_argument("--first-run-only", action="store_true")
    args = p.parse_args(argv[:at])
    script = argv[at + 1 :]
    if not script:
        raise SystemExit("no script to run after --")
    return args, script


def install(crash_at: int, rank: int | None) -> None:
    """Wrap Snapshotter.save: SIGKILL this process right after saving `crash_at`."""
    save = ecsnap.Snapshotter.save

    @functools.wraps(save)
    def crashing_save(self: ecsnap.Snapshotter, step: int, *args: Any, **kw: Any) -> Any:
        handle = save(self, step, *args, **kw)
        if step == crash_at and (rank is None or self.rank == rank):
            crash(self.rank, step, save_in_flight=not handle.done())
        return handle

    ecsnap.Snapshotter.save = crashing_save  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    args, script = _parse(list(sys.argv[1:] if argv is None else argv))
    first_run = RankEnv.from_environ().restart_count == 0
    if first_run or not args.first_run_only:
        install(args.crash_at_step, args.rank)
    sys.argv = script
    sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))
    runpy.run_path(script[0], run_name="__main__")


if __name__ == "__main__":
    main()
