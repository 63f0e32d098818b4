"""Regenerate the checked-in protobuf/gRPC modules from pdpair.proto.

`python proto/generate.py [OUT_DIR]` writes pdpair_pb2.py, pdpair_pb2.pyi and
pdpair_pb2_grpc.py into OUT_DIR (default: this folder). The proto is compiled
as `pdpair/proto/pdpair.proto` so the generated gRPC module imports
`pdpair.proto.pdpair_pb2`, matching the installed package name.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("pdpair_pb2.py", "pdpair_pb2.pyi", "pdpair_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "pdpair" / "proto"
        pkg.mkdir(parents=True)
        shutil.copy(HERE / "pdpair.proto", pkg / "pdpair.proto")
        args = [
            "protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(pkg / "pdpair.proto"),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on pdpair.proto")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            shutil.copy(pkg / name, out_dir / name)
            written.append(out_dir / name)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(target):
        print(path)
