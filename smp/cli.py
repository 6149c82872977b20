"""Command line of the SMP: `smp serve`, `status`, `launch`, `stop`, `forget`, `bench codec`.

It never imports torch or the trainer library: the benchmarks that train live in `ecsnap bench`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence

from smp import __version__
from smp.config import ENV_SMP_TLS, SETTING, SETTINGS, ServeConfig, format_size
from smp.defaults import socket_from
from smp.errors import ConfigError, SmpError
from smp.tls import PeerTls

logger = logging.getLogger("smp")


def _settings_arguments(
    parser: argparse.ArgumentParser, names: Iterable[str] | None = None
) -> None:
    """Flags of the daemon's settings (all of them, or those named), from the one schema."""
    for setting in SETTINGS:
        if names is not None and setting.name not in names:
            continue
        if setting.kind == "bool":
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const="true",
                help=f"{setting.help} (env {setting.env}=1)",
            )
            continue
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            type=int if setting.kind == "int" else str,
            choices=setting.choices,
            help=f"{setting.help} (env {setting.env})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smp", description="ecsnap snapshot management process")
    parser.add_argument("--version", action="version", version=f"smp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (one per node)")
    _settings_arguments(serve)

    status = sub.add_parser("status", help="show what a running SMP holds")
    status.add_argument("--socket", default=None, help="control socket of the SMP")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    _settings_arguments(status, {*ENV_SMP_TLS, "admin_token_file"})

    # `smp launch` parses its own arguments (the rest is torchrun's command line): see main().
    sub.add_parser(
        "launch",
        help="start this node's SMP if needed, then torchrun (smp launch --help)",
        add_help=False,
    )
    stop = sub.add_parser("stop", help="stop the SMP serving a socket (orderly, waits)")
    stop.add_argument("--socket", default=None, help="control socket of the SMP")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to exit")

    forget = sub.add_parser(
        "forget", help="delete a job's snapshots and parity from an SMP and free the memory"
    )
    forget.add_argument("job", help="the job id (`smp status` lists them)")
    forget.add_argument("--socket", default=None, help="control socket of the SMP")
    forget.add_argument("--timeout", type=float, default=30.0)
    _settings_arguments(forget, {"admin_token_file"})

    bench = sub.add_parser("bench", help="benchmarks of the daemon (the others: `ecsnap bench`)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from smp.codec import bench as codec_bench

    codec_bench.add_arguments(bench_sub.add_parser("codec", help="erasure codec throughput"))
    fuzz = bench_sub.add_parser(
        "fuzz",
        help="fuzz a live SMP's control socket and peer port beside a real job (needs hypothesis)",
    )
    fuzz.add_argument("--cases", type=int, default=10_000, help="cases (half control, half peer)")
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--json", default=None, help="also write the report to this file")
    return parser


def _bench_fuzz(args: argparse.Namespace) -> int:
    try:
        from smp import fuzzrun
    except ImportError as exc:
        print(
            f"smp bench fuzz needs hypothesis ({exc}): pip install 'ecsnap[dev]'", file=sys.stderr
        )
        return 2
    return fuzzrun.run(args)


def _serve(args: argparse.Namespace) -> int:
    from smp import logs
    from smp.daemon import Daemon

    config = ServeConfig.from_sources({s.name: getattr(args, s.name) for s in SETTINGS})
    logs.configure(config.log_level, config.log_format)
    daemon = Daemon(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()  # only set the event: shutdown runs in the main thread

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        daemon.wait(stop)
    finally:
        daemon.stop()
    return 0


def _token_file(args: argparse.Namespace) -> str | None:
    """--admin-token-file, else $SMP_ADMIN_TOKEN_FILE, else None (the default beside the socket)."""
    return args.admin_token_file or os.environ.get(SETTING["admin_token_file"].env) or None


def _status(args: argparse.Namespace) -> int:
    from smp import report

    path = socket_from(args.socket)
    try:
        status = report.fetch_status(path, args.timeout, _token_file(args))
    except report.NotAnswering as exc:
        print(f"smp status: {exc}", file=sys.stderr)
        return 2
    # Liveness also needs the peer port: the standard gRPC health service must say SERVING.
    try:
        tls = PeerTls.load(
            *(getattr(args, k) or os.environ.get(v, "") for k, v in ENV_SMP_TLS.items())
        )
    except ConfigError as exc:
        print(f"smp status: {exc}", file=sys.stderr)
        return 2
    health = report.check_health(status.grpc_address, args.timeout, tls)
    print(report.to_json(status, health) if args.json else report.render(status, health))
    if health != report.SERVING:
        print(
            f"smp status: the SMP answers on its socket but its gRPC health is {health}",
            file=sys.stderr,
        )
        return 1
    return 0


def _forget(args: argparse.Namespace) -> int:
    from smp import report

    path = socket_from(args.socket)
    try:
        freed = report.forget(path, args.job, args.timeout, _token_file(args))
    except report.NotAnswering as exc:
        print(f"smp forget: {exc}", file=sys.stderr)
        return 2
    print(f"smp forget: job {args.job!r} forgotten, {format_size(freed)} freed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:
        from smp import launch

        try:
            return launch.launch(argv[1:])
        except (ConfigError, launch.LaunchError) as exc:
            print(f"smp launch: {exc}", file=sys.stderr)
            return 2
    if argv[:1] == ["bench"] and argv[1:2] in (["train"], ["cluster"], ["local"], ["chaos"]):
        print(
            f"smp bench {argv[1]} moved to the trainer library: `ecsnap bench {argv[1]} ...` "
            "(the daemon's command line needs no torch)",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "status":
            return _status(args)
        if args.command == "stop":
            from smp import launch

            return launch.stop(socket_from(args.socket), args.timeout)
        if args.command == "forget":
            return _forget(args)
        if args.bench == "fuzz":
            return _bench_fuzz(args)
        from smp.codec import bench as codec_bench

        return int(codec_bench.run(args))
    except (ConfigError, SmpError) as exc:
        print(f"smp {args.command}: {exc}", file=sys.stderr)
        return 2
