"""Generate the Python stubs in ``serving/_generated/`` from ``protos/*.proto``: ``python -m serving.gen_protos``.

Runs grpcio-tools' protoc (messages, ``.pyi`` type stubs, gRPC service stubs), then post-processes the output:

- imports between generated modules become relative (``from . import model_config_pb2``), so the stubs live inside
  the ``serving`` package instead of needing ``protos/`` on ``sys.path``;
- the descriptors go into a private descriptor pool (``serving._generated._pool.POOL``) instead of protobuf's
  default one. Our ``inference.*`` messages have the same full names as the ones ``tritonclient`` registers, and
  the default pool refuses a second definition of a name ("duplicate symbol"): with a private pool, a process can
  import both (tests and benchmarks do).

``--check`` regenerates into a temporary folder and exits 1 when the checked-in stubs differ (CI runs it).
grpcio-tools is a development dependency: this module is not imported by the server.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "serving" / "_generated"
GRPC_TOOLS_VERSION = "1.80.0"  # pinned: newer grpcio-tools require protobuf 7, which tritonclient refuses

HEADER = "# Post-processed by serving/gen_protos.py (relative imports, private descriptor pool). DO NOT EDIT.\n"
INIT = '''"""Generated protobuf/gRPC stubs; regenerate with ``python -m serving.gen_protos``. DO NOT EDIT."""
'''
POOL = '''"""The descriptor pool every generated module in this package registers into. DO NOT EDIT.

Private rather than protobuf's default pool, so that these ``inference.*`` messages can coexist in one process with
tritonclient's definitions of the same names. Health and reflection descriptors are added for server reflection.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_INSERTION = "# @@protoc_insertion_point(imports)\n"


def _postprocess(name: str, text: str) -> str:
    text = _IMPORT.sub(r"from . import \1 as \2", text)
    if name.endswith("_pb2.py"):
        if _DEFAULT_POOL not in text or _INSERTION not in text:
            raise RuntimeError(f"{name}: protoc output changed shape; update serving/gen_protos.py")
        text = text.replace(_INSERTION, _INSERTION + "from ._pool import POOL as _POOL\n", 1)
        text = text.replace(_DEFAULT_POOL, "_POOL.AddSerializedFile(")
    return HEADER + text


def generate(out_dir: Path) -> list[Path]:
    """Write every stub into ``out_dir`` (created); returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if version != GRPC_TOOLS_VERSION:
        raise RuntimeError(f"stubs are generated with grpcio-tools=={GRPC_TOOLS_VERSION}, found {version}")
    protos = sorted(PROTO_DIR.glob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={raw}", f"--pyi_out={raw}",
                f"--grpc_python_out={raw}", *map(str, protos)]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        written = []
        for src in sorted(Path(raw).iterdir()):
            if src.name.endswith("_pb2_grpc.py") and "\nclass " not in src.read_text():
                continue  # a proto without services (model_config.proto): the plugin's file would hold no code
            dst = out_dir / src.name
            dst.write_text(_postprocess(src.name, src.read_text()))
            written.append(dst)
    for name, text in (("__init__.py", INIT), ("_pool.py", POOL)):
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    return written


def diff(expected_dir: Path, actual_dir: Path) -> list[str]:
    """Unified diff lines between two stub folders (empty when identical)."""
    names = sorted({p.name for p in expected_dir.glob("*.py*")} | {p.name for p in actual_dir.glob("*.py*")})
    lines: list[str] = []
    for name in names:
        a, b = expected_dir / name, actual_dir / name
        old = a.read_text().splitlines(keepends=True) if a.exists() else []
        new = b.read_text().splitlines(keepends=True) if b.exists() else []
        lines += difflib.unified_diff(old, new, f"generated/{name}", f"serving/_generated/{name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gen_protos", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if serving/_generated is out of date")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(OUT_DIR):
            print(path.relative_to(ROOT))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        lines = diff(Path(tmp), OUT_DIR)
    if lines:
        sys.stdout.writelines(lines[:200])
        print("\nserving/_generated is stale: run `python -m serving.gen_protos` (make protos)", file=sys.stderr)
        return 1
    print("serving/_generated is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
