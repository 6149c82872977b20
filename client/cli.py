"""Command line of the trainer library: `ecsnap export` (and `python -m ecsnap ...`).

`ecsnap export` writes a job's newest committed snapshot (or --step) from its SMPs' memory as a
standard torch.distributed.checkpoint. It needs no training script, so a job that died can still
be exported: run it with the job's world size, one process per rank the SMPs hold, e.g.
`torchrun --nnodes 4 --nproc-per-node 8 ... -m ecsnap export --job run42 /ckpt/step`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ecsnap.errors import EcsnapError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecsnap", description="ecsnap trainer-side tools")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export",
        help="write a committed snapshot from the SMPs' memory as a DCP checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("path", help="DCP checkpoint_id: a directory (or an fsspec URL)")
    export.add_argument("--job", default=None, help="job id (default $ECSNAP_JOB, else torchrun's)")
    export.add_argument("--socket", default=None, help="the node's SMP (default $ECSNAP_SOCKET)")
    export.add_argument("--step", type=int, default=None, help="default: newest committed")
    export.add_argument("--timeout", type=float, default=120.0)
    return parser


def _export(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ecsnap.snapshotter import Snapshotter

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        with Snapshotter(args.job, args.socket, timeout=args.timeout) as snap:
            step = snap.export_dcp(args.path, args.step, wait=True)
            if snap.rank == 0:
                print(f"exported step {step} of job {snap.job_id!r} to {args.path}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("ECSNAP_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    try:
        return _export(args)
    except EcsnapError as exc:
        print(f"ecsnap {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
