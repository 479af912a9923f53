"""Generate the Python gRPC code for proto/ into the client package.

grpcio-tools writes imports as `from awq.v1 import ...`, which would collide
with AutoAWQ's top-level `awq` package, so the generated modules live under
`awqd_client.v1` and their imports are rewritten to match.

    python tools/protogen.py          # regenerate
    python tools/protogen.py --check  # exit 1 if the committed code is stale
"""

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = "awq/v1"
TARGET = ROOT / "clients/python/src/awqd_client/v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    for path in (out_dir / PROTO_PACKAGE).iterdir():
        text = path.read_text().replace("from awq.v1 import", "from awqd_client.v1 import")
        path.write_text(text)


def generated_files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = pathlib.Path(tmp)
        generate(out_dir)
        fresh = out_dir / PROTO_PACKAGE
        names = generated_files(fresh)
        if args.check:
            committed = generated_files(TARGET) if TARGET.exists() else []
            stale = [n for n in names if n not in committed or not filecmp.cmp(fresh / n, TARGET / n, shallow=False)]
            stale += [n for n in committed if n not in names]
            if stale:
                print(f"generated code is stale: {', '.join(stale)}; run `make proto`", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in generated_files(TARGET):
            (TARGET / name).unlink()
        for name in names:
            shutil.copyfile(fresh / name, TARGET / name)
        (TARGET / "__init__.py").write_text('"""Generated from proto/awq/v1 by tools/protogen.py; do not edit."""\n')
        print(f"wrote {', '.join(names)} to {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
