"""Command line of the trainer library: `ecsnap export`, `ecsnap bench ...` (also
`python -m ecsnap ...`).

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

    bench = sub.add_parser("bench", help="benchmarks (the daemon's codec: `smp bench codec`)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    local = bench_sub.add_parser("local", help="save/restore vs torch.save/torch.load")
    local.add_argument("--size", default="1G", help="state size (default 1G of float32)")
    local.add_argument("--repeats", type=int, default=3)
    local.add_argument("--dir", default=None, help="where torch.save writes (default: a tmp dir)")
    local.add_argument("--json", default=None, help="write raw results here")
    local.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the state lives (cuda: device-to-host copies)",
    )
    cluster = bench_sub.add_parser(
        "cluster",
        help="parity exchange and node-loss restore across local SMPs vs raw TCP and plain gRPC",
    )
    cluster.add_argument("--size", default="256M", help="state per node (default 256M)")
    cluster.add_argument("--repeats", type=int, default=3)
    cluster.add_argument("--nodes", default="2,4", help="node counts to run (default 2,4)")
    cluster.add_argument("--group", type=int, default=4, help="group size (default 4, or N)")
    cluster.add_argument("--parity", default="1,2", help="parity settings to run (default 1,2)")
    cluster.add_argument(
        "--tls", action="store_true", help="run every setting again with mutual TLS"
    )
    cluster.add_argument(
        "--scaling", action="store_true", help="also 2, 4, 8 nodes in groups of 4 (1 parity)"
    )
    cluster.add_argument(
        "--parity-bandwidth",
        default=None,
        help="also a 4-node run with this cap on every SMP (e.g. 200M), checked against it",
    )
    cluster.add_argument("--json", default=None, help="write raw results here")
    from ecsnap.bench import chaos

    chaos.add_arguments(
        bench_sub.add_parser(
            "chaos",
            help="a 4-node job under random faults ends bit for bit like a clean run",
            description=chaos.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    # `ecsnap bench train` parses its own arguments (they live with the benchmark): see main().
    bench_sub.add_parser(
        "train",
        help="end-to-end: training overhead and recovery vs torch.save and DCP "
        "(ecsnap bench train --help)",
        add_help=False,
    )
    return parser


def _bench(args: argparse.Namespace) -> int:
    from smp.config import parse_size

    if args.bench == "chaos":
        from ecsnap.bench import chaos

        return chaos.run(args)
    if args.bench == "cluster":
        from ecsnap.bench import cluster
        from smp.pacing import parse_rate

        return cluster.run_cluster(
            parse_size(args.size),
            args.repeats,
            [int(x) for x in args.nodes.split(",")],
            args.group,
            [int(x) for x in args.parity.split(",")],
            args.json,
            tls=args.tls,
            scaling=args.scaling,
            bandwidth=parse_rate(args.parity_bandwidth) if args.parity_bandwidth else None,
        )
    from ecsnap.bench import local

    return int(
        local.run_local(parse_size(args.size), args.repeats, args.dir, args.json, args.device)
    )


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "train"]:
        from ecsnap.bench.train import runner

        return runner.main(argv[2:], prog="ecsnap bench train")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        return _export(args)
    except EcsnapError as exc:
        print(f"ecsnap {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
