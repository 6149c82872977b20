"""`smp bench codec` (also `python -m smp.codec.bench`): erasure codec throughput vs memcpy.

For each layout k+m and each implementation (our engines; pyeclib and zfec as baselines when
installed) it times encode, the rebuild of one lost data shard and the rebuild of m lost data
shards, on the same k random shards. Throughput is k x shard size / time ("MB/s of data"), and
each figure is also given as a ratio to np.copyto of those same k shards, timed in the same
repeat loop (interleaved), so the ratio is robust to the machine's speed of the moment.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smp.codec import Codec, CodecError, available_engines, describe_engine
from smp.codec.buffers import Bytes

OPS = ("encode", "rebuild1", "rebuildm")
OP_TITLES = {"encode": "encode", "rebuild1": "rebuild 1 data", "rebuildm": "rebuild m data"}
BASELINES = ("pyeclib", "zfec")
Op = Callable[[], object]
Setup = Callable[[int, int, list[Bytes]], dict[str, Op]]  # (k, m, data shards) -> timed ops
Row = dict[str, Any]


def parse_size(text: str) -> int:
    """'16M', '16MiB', '4096', '1.5G' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)(?:i?[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; expected e.g. 16M, 512K, 4096")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """'4+1,4+2' -> [(4, 1), (4, 2)]."""
    layouts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\+(\d+)\s*", part)
        if not match:
            raise argparse.ArgumentTypeError(f"bad layout {part!r}; expected k+m, e.g. 4+2")
        layouts.append((int(match.group(1)), int(match.group(2))))
    return layouts


def _names(text: str) -> list[str]:
    return [] if text.strip() in ("", "none") else [n.strip() for n in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `smp bench codec`."""
    parser.add_argument("--size", type=parse_size, default=16 << 20, help="shard size (16M)")
    parser.add_argument(
        "--layouts", type=parse_layouts, default=[(4, 1), (4, 2), (8, 2)], help="4+1,4+2,8+2"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; best wins")
    parser.add_argument("--engines", default="isal,numpy", help="ours to time (isal,numpy)")
    parser.add_argument(
        "--baselines", default="pyeclib,zfec", help="others to time if installed, or none"
    )
    parser.add_argument("--threads", type=int, default=None, help="codec threads (cores, <= 4)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write raw results here")


def _ours(codec: Codec, data: list[Bytes], m: int) -> dict[str, Op]:
    k, size = codec.k, data[0].size
    parity = [np.zeros(size, np.uint8) for _ in range(m)]
    codec.encode(data, parity)
    shards = [*data, *parity]
    one = np.zeros(size, np.uint8)
    many = [np.zeros(size, np.uint8) for _ in range(m)]
    survivors1 = {i: shards[i] for i in range(1, k + m)}
    survivors_m = {i: shards[i] for i in range(m, k + m)}
    ops: dict[str, Op] = {
        "encode": lambda: codec.encode(data, parity),
        "rebuild1": lambda: codec.decode(survivors1, [0], [one]),
        "rebuildm": lambda: codec.decode(survivors_m, list(range(m)), many),
    }
    for op in ops.values():  # never report the speed of wrong bytes
        op()
    if not (np.array_equal(one, data[0]) and all(map(np.array_equal, many, data[:m]))):
        raise RuntimeError(f"{codec.engine} engine rebuilt wrong bytes")
    return ops


def _pyeclib(k: int, m: int, data: list[Bytes]) -> dict[str, Op]:
    from pyeclib.ec_iface import ECDriver

    driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_vand")  # pyeclib's ISA-L backend
    whole = np.concatenate(data).tobytes()  # its API takes the stripe as one object
    fragments = driver.encode(whole)  # k + m fragments, each a header + shard
    return {
        "encode": lambda: driver.encode(whole),
        "rebuild1": lambda: driver.reconstruct(fragments[1:], [0]),
        "rebuildm": lambda: driver.reconstruct(fragments[m:], list(range(m))),
    }


def _zfec(k: int, m: int, data: list[Bytes]) -> dict[str, Op]:
    import zfec

    encoder, decoder = zfec.Encoder(k, k + m), zfec.Decoder(k, k + m)
    inputs = tuple(data)
    blocks = inputs + tuple(encoder.encode(inputs, tuple(range(k, k + m))))
    one_nums = tuple(range(1, k + 1))
    m_nums = tuple(range(m, m + k))
    return {
        "encode": lambda: encoder.encode(inputs, tuple(range(k, k + m))),
        "rebuild1": lambda: decoder.decode(tuple(blocks[i] for i in one_nums), one_nums),
        "rebuildm": lambda: decoder.decode(tuple(blocks[i] for i in m_nums), m_nums),
    }


def _time(op: Op) -> float:
    start = time.perf_counter()
    op()
    return time.perf_counter() - start


def bench_layout(k: int, m: int, size: int, repeats: int, impls: dict[str, Setup]) -> list[Row]:
    """Raw timings of every (impl, op) and of memcpy, interleaved repeat by repeat."""
    rng = np.random.default_rng(k * 100 + m)
    data = [np.frombuffer(rng.bytes(size), np.uint8) for _ in range(k)]
    copies = [np.empty(size, np.uint8) for _ in range(k)]

    def memcpy() -> None:
        for src, dst in zip(data, copies, strict=True):
            np.copyto(dst, src)

    table: dict[tuple[str, str], Op] = {("memcpy", "copy"): memcpy}
    for impl, setup in impls.items():
        for op, fn in setup(k, m, data).items():
            table[(impl, op)] = fn
    for fn in table.values():  # warm up: page faults, table caches, thread pools
        fn()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in table}
    for _ in range(repeats):
        for key, fn in table.items():
            samples[key].append(_time(fn))
    copy_best = min(samples[("memcpy", "copy")])
    stripe_mb = k * size / 1e6
    return [
        {
            "layout": f"{k}+{m}",
            "impl": impl,
            "op": op,
            "shard_bytes": size,
            "seconds": times,
            "mb_per_s": stripe_mb / min(times),
            "x_memcpy": copy_best / min(times),
        }
        for (impl, op), times in samples.items()
    ]


def _fmt(row: Row | None) -> str:
    if row is None:
        return "-"
    return f"{row['mb_per_s']:8.0f} {row['x_memcpy']:6.2f}x"


def render(rows: Sequence[Row], size: int, repeats: int) -> str:
    """The human table: one line per layout and implementation."""
    by_key = {(r["layout"], r["impl"], r["op"]): r for r in rows}
    lines = [
        f"codec throughput: {size / (1 << 20):g} MiB shards, best of {repeats}; "
        "MB/s = k x shard size / time; x = ratio to np.copyto of the same k shards (same run)",
        f"{'layout':<7}{'impl':<9}" + "".join(f"{OP_TITLES[op]:>18}" for op in OPS),
    ]
    for layout in dict.fromkeys(r["layout"] for r in rows):
        copy = by_key[(layout, "memcpy", "copy")]
        lines.append(f"{layout:<7}{'memcpy':<9}{_fmt(copy):>18}")
        for impl in dict.fromkeys(r["impl"] for r in rows if r["layout"] == layout):
            if impl != "memcpy":
                cells = "".join(f"{_fmt(by_key.get((layout, impl, op))):>18}" for op in OPS)
                lines.append(f"{layout:<7}{impl:<9}{cells}")
    return "\n".join(lines)


def targets(rows: Sequence[Row]) -> list[str]:
    """The project's throughput targets, each marked met or missed."""
    by_key = {(r["layout"], r["impl"], r["op"]): r for r in rows}
    checks: list[tuple[str, float | None, float]] = []

    def x(layout: str, impl: str, op: str) -> float | None:
        row = by_key.get((layout, impl, op))
        return None if row is None else float(row["x_memcpy"])

    checks.append(("isal encode 4+2 vs memcpy", x("4+2", "isal", "encode"), 1.0))
    for op in ("rebuild1", "rebuildm"):
        checks.append((f"isal {OP_TITLES[op]} 4+2 vs memcpy", x("4+2", "isal", op), 0.8))
    checks.append(("isal encode 4+1 vs memcpy", x("4+1", "isal", "encode"), 1.0))
    for layout in dict.fromkeys(r["layout"] for r in rows):
        worst = min(
            (r["x_memcpy"] for r in rows if r["impl"] == "numpy" and r["layout"] == layout),
            default=None,
        )
        checks.append((f"numpy slowest op {layout} vs memcpy", worst, 0.05))
        for base in BASELINES:
            for op in OPS:
                ours, theirs = x(layout, "isal", op), x(layout, base, op)
                if ours is not None and theirs is not None:
                    checks.append((f"isal / {base} {OP_TITLES[op]} {layout}", ours / theirs, 10.0))
    return [
        f"  {'n/a ' if got is None else ('ok  ' if got >= want else 'MISS')} {name}: "
        + ("not measured" if got is None else f"{got:.2f}x (target >= {want:g}x)")
        for name, got, want in checks
    ]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by `args` (see add_arguments); print the table."""
    engines = _names(args.engines)
    loadable = available_engines()
    for engine in engines:
        if engine not in ("isal", "numpy"):
            print(f"smp bench codec: unknown engine {engine!r} (isal, numpy)", file=sys.stderr)
            return 2
        if engine not in loadable:
            print(f"smp bench codec: {describe_engine(engine)}", file=sys.stderr)
            return 2
    impls: dict[str, Setup] = {}
    for engine in engines:
        impls[engine] = _engine_setup(engine, args.threads)
    skipped = []
    for base in _names(args.baselines):
        if base not in BASELINES:
            print(f"smp bench codec: unknown baseline {base!r} (pyeclib, zfec)", file=sys.stderr)
            return 2
        try:
            __import__("pyeclib.ec_iface" if base == "pyeclib" else base)
        except ImportError as exc:
            skipped.append(f"{base} ({exc})")
            continue
        impls[base] = _pyeclib if base == "pyeclib" else _zfec
    rows: list[Row] = []
    try:
        threads = Codec(1, 1, engine="numpy", threads=args.threads).threads
        print(f"engine: {describe_engine('auto')}; {threads} threads per call")
        if skipped:
            print("baselines not installed: " + ", ".join(skipped))
        for k, m in args.layouts:
            rows.extend(bench_layout(k, m, args.size, max(1, args.repeats), impls))
    except CodecError as exc:
        print(f"smp bench codec: {exc}", file=sys.stderr)
        return 2
    print(render(rows, args.size, max(1, args.repeats)))
    print("targets:")
    print("\n".join(targets(rows)))
    if args.json:
        with open(args.json, "w") as f:
            config = {
                "shard_bytes": args.size,
                "layouts": [f"{k}+{m}" for k, m in args.layouts],
                "repeats": args.repeats,
                "threads": threads,
                "engine": describe_engine("auto"),
            }
            json.dump({"config": config, "results": rows}, f, indent=1)
        print(f"raw results: {args.json}")
    return 0


def _engine_setup(engine: str, threads: int | None) -> Setup:
    def setup(k: int, m: int, data: list[Bytes]) -> dict[str, Op]:
        return _ours(Codec(k, m, engine=engine, threads=threads), data, m)

    return setup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smp.codec.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
