"""Generate (or check) the Python code for the schemas in this folder.

The generated modules are committed under smp/_proto with package-qualified imports
(`from smp._proto import snapshot_pb2`). `python proto/generate.py --check` regenerates into a
temporary directory and fails if the committed files differ; CI runs it.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("snapshot.proto", "control.proto", "peer.proto")
TARGET = "smp/_proto"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev-only dependency (pinned in pyproject)

    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{TARGET}={ROOT / 'proto'}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{TARGET}/{name}" for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return sorted((out_root / TARGET).glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        target = ROOT / TARGET
        stale = [
            p.name
            for p in produced
            if not (target / p.name).exists() or not filecmp.cmp(p, target / p.name, shallow=False)
        ]
        if args.check:
            if stale:
                print(
                    f"stale generated code in {TARGET}: {', '.join(stale)}; "
                    "run `python proto/generate.py`",
                    file=sys.stderr,
                )
                return 1
            print(f"{TARGET} is up to date ({len(produced)} files)")
            return 0
        for p in produced:
            shutil.copyfile(p, target / p.name)
        print(f"wrote {len(produced)} files to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
