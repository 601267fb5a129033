"""Generates the gRPC stubs in tandem/api/v1 from proto/tandem/v1/*.proto.

`python -m tandem.api.codegen` rewrites the stubs; `--check` exits non-zero when the committed
stubs differ from what the .proto files generate (the drift test runs this).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
STUB_DIR = REPO_ROOT / "tandem" / "api" / "v1"
# protoc names modules after the proto path (tandem.v1); the stubs live in tandem.api.v1.
_IMPORT_FIX = re.compile(r"^from tandem\.v1 import", re.MULTILINE)


def generate(out_dir: pathlib.Path) -> dict[str, str]:
    """Runs protoc on every .proto file and returns {stub file name: source}."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    stubs = {}
    for path in sorted((out_dir / "tandem" / "v1").iterdir()):
        stubs[path.name] = _IMPORT_FIX.sub("from tandem.api.v1 import", path.read_text())
    return stubs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate, or check for drift with --check."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if stubs are out of date")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stubs = generate(pathlib.Path(tmp))
    stale = [name for name, text in stubs.items()
             if not (STUB_DIR / name).exists() or (STUB_DIR / name).read_text() != text]
    if args.check:
        if stale:
            print(f"stubs out of date: {stale}; run `make proto`", file=sys.stderr)
            return 1
        return 0
    for name, text in stubs.items():
        (STUB_DIR / name).write_text(text)
    print(f"wrote {len(stubs)} stub files to {STUB_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
