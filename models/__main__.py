"""``python -m models summary ARCH --input C,H,W [--classes K]``: argument parsing only (see models/summary.py)."""

from __future__ import annotations

import argparse
import sys


def _parse_chw(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(f"--input must be C,H,W (three integers), got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description="Inspect the project's architectures.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="per-layer table: shapes, kernel/stride/padding, receptive field, params, MACs")
    p.add_argument("arch", help="architecture name (see models.registry.ARCHS)")
    p.add_argument("--input", required=True, metavar="C,H,W", help="input channels, height, width, e.g. 3,224,224")
    p.add_argument("--classes", type=int, default=1000, metavar="K", help="number of classes (default 1000)")
    args = parser.parse_args(argv)

    from models.summary import format_summary, summarize

    try:
        print(format_summary(summarize(args.arch, _parse_chw(args.input), args.classes)))
    except (ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
