"""Command line of the SMP: `smp serve`, `smp status`, `smp launch`, `smp stop`, `smp bench ...`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from smp import __version__, defaults
from smp.config import ENV_SMP_CONFIG, ENV_SMP_TLS, ServeConfig, parse_size
from smp.errors import ConfigError, SmpError
from smp.tls import PeerTls

logger = logging.getLogger("smp")


def _socket_default() -> str:
    import os

    return (
        os.environ.get(defaults.ENV_SMP_SOCKET)
        or os.environ.get(defaults.ENV_SOCKET)
        or defaults.default_socket()
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smp", description="ecsnap snapshot management process")
    parser.add_argument("--version", action="version", version=f"smp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (one per node)")
    serve.add_argument(
        "--socket",
        help=f"control socket path (env {defaults.ENV_SMP_SOCKET}; "
        f"default {defaults.default_socket()})",
    )
    serve.add_argument(
        "--store-dir",
        help=f"arena directory, ideally tmpfs (env "
        f"{defaults.ENV_SMP_STORE_DIR}; default "
        f"{defaults.default_store_dir()})",
    )
    serve.add_argument("--host", help="gRPC bind address (env SMP_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port, 0 = any free (env SMP_PORT)")
    serve.add_argument(
        "--memory-limit",
        help="max arena bytes, e.g. 64G (env SMP_MEMORY_LIMIT; default: the store's free space)",
    )
    serve.add_argument(
        "--codec",
        choices=["auto", "isal", "numpy"],
        help="erasure-coding engine (env SMP_CODEC; default auto)",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING (env SMP_LOG_LEVEL)")
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="json: one object per line with job, rank, step fields (env SMP_LOG_FORMAT)",
    )
    serve.add_argument(
        "--config",
        help=f"settings file, TOML (*.toml) or YAML (*.yaml) with the flags' names as keys "
        f"(env {ENV_SMP_CONFIG}); precedence: defaults < file < environment < flags",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port, 0 = any free (env SMP_METRICS_PORT; "
        "default: no metrics endpoint)",
    )
    serve.add_argument(
        "--metrics-host",
        help="metrics bind address (env SMP_METRICS_HOST; default: the --host address)",
    )

    status = sub.add_parser("status", help="show what a running SMP holds")
    status.add_argument("--socket", default=None, help="control socket of the SMP")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    for sub_parser in (serve, status):
        _tls_arguments(sub_parser)

    # `smp launch` parses its own arguments (the rest is torchrun's command line): see main().
    sub.add_parser(
        "launch",
        help="start this node's SMP if needed, then torchrun (smp launch --help)",
        add_help=False,
    )
    stop = sub.add_parser("stop", help="stop the SMP serving a socket (orderly, waits)")
    stop.add_argument("--socket", default=None, help="control socket of the SMP")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to exit")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from smp.codec import bench as codec_bench

    codec_bench.add_arguments(bench_sub.add_parser("codec", help="erasure codec throughput"))
    # `smp bench train` parses its own arguments (they live with the benchmark): see main().
    bench_sub.add_parser(
        "train",
        help="end-to-end: training overhead and recovery vs torch.save and DCP (torch; "
        "smp bench train --help)",
        add_help=False,
    )
    cluster = bench_sub.add_parser(
        "cluster",
        help="parity exchange and node rebuild across 4 local SMPs vs raw TCP and plain gRPC",
    )
    cluster.add_argument("--size", default="256M", help="state per node (default 256M)")
    cluster.add_argument("--repeats", type=int, default=3)
    cluster.add_argument("--parity", default="1,2", help="parity settings to run (default 1,2)")
    cluster.add_argument("--json", default=None, help="write raw results here")
    local = bench_sub.add_parser("local", help="save/restore vs torch.save/torch.load (torch)")
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
    return parser


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    what = {"tls_cert": "certificate", "tls_key": "private key", "tls_ca": "CA's certificate"}
    for key, env in ENV_SMP_TLS.items():
        parser.add_argument(
            "--" + key.replace("_", "-"),
            help=f"mutual TLS on the peer port: this SMP's {what[key]}, PEM (env {env}; "
            "all three of --tls-cert, --tls-key, --tls-ca, or none)",
        )


def _serve(args: argparse.Namespace) -> int:
    from smp import logs
    from smp.daemon import Daemon

    flags = {
        k: getattr(args, k)
        for k in (
            "socket",
            "store_dir",
            "host",
            "port",
            "memory_limit",
            "codec",
            "log_level",
            "log_format",
            "config",
            "metrics_port",
            "metrics_host",
            "tls_cert",
            "tls_key",
            "tls_ca",
        )
    }
    config = ServeConfig.from_sources(flags)
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


def _status(args: argparse.Namespace) -> int:
    from smp import report

    path = args.socket or _socket_default()
    try:
        status = report.fetch_status(path, args.timeout)
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


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "codec":
        from smp.codec import bench as codec_bench

        return int(codec_bench.run(args))
    try:  # the trainer library: needs torch
        from ecsnap import bench as local_bench
        from ecsnap import benchcluster
    except ImportError as exc:
        print(
            f"smp bench {args.bench} needs the trainer library and torch ({exc}): "
            "pip install 'ecsnap[torch]'",
            file=sys.stderr,
        )
        return 2
    if args.bench == "cluster":
        parities = [int(x) for x in args.parity.split(",")]
        return benchcluster.run_cluster(parse_size(args.size), args.repeats, parities, args.json)
    return int(
        local_bench.run_local(parse_size(args.size), args.repeats, args.dir, args.json, args.device)
    )


def _bench_train(argv: list[str]) -> int:
    try:
        from ecsnap.benchtrain import runner  # the trainer library: needs torch
    except ImportError as exc:
        print(
            f"smp bench train needs the trainer library and torch ({exc}): "
            "pip install 'ecsnap[torch,bench]'",
            file=sys.stderr,
        )
        return 2
    return runner.main(argv)


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
    if argv[:2] == ["bench", "train"]:
        return _bench_train(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "status":
            return _status(args)
        if args.command == "stop":
            from smp import launch

            return launch.stop(args.socket or _socket_default(), args.timeout)
        return _bench(args)
    except (ConfigError, SmpError) as exc:
        print(f"smp {args.command}: {exc}", file=sys.stderr)
        return 2
