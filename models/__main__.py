"""``python -m models summary|classic|filters …``: argument parsing only (see models/summary.py, models/classic.py,
models/filters.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parse_chw(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(f"--input must be C,H,W (three integers), got {text!r}")
    return parts  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    from models.classic import HEADS

    parser = argparse.ArgumentParser(prog="python -m models", description="Inspect the project's architectures.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="per-layer table: shapes, kernel/stride/padding, receptive field, params, MACs")
    p.add_argument("arch", help="a project arch (models.registry.ARCHS) or a classic one (models.classic.CLASSICS)")
    p.add_argument("--input", required=True, metavar="C,H,W", help="input channels, height, width, e.g. 3,224,224")
    p.add_argument("--classes", type=int, default=None, metavar="K",
                   help="number of classes (default 1000; the paper's for a classic arch: LeNet-5 has 10)")
    p.add_argument("--head", choices=HEADS, default=None,
                   help="replace the classifier: linear (global average pool → fc) or fastai (create_head); "
                        "default: the architecture's own")
    p = sub.add_parser("classic", help="the classic architectures' totals as a markdown table")
    p.add_argument("--input", default=None, metavar="C,H,W", help="one input for all (default: each paper's)")
    p.add_argument("--classes", type=int, default=None, metavar="K", help="number of classes (default: the paper's)")
    p = sub.add_parser("filters", help="a run's learned kernels and feature maps, and hand-built kernels, as PNGs")
    p.add_argument("run", type=Path, help="run directory written by `python -m training fit`")
    p.add_argument("--image", type=Path, default=None,
                   help="image for the feature maps and the hand-built kernels (default: the run's first validation "
                        "image for the feature maps, scikit-learn's sample photo for the kernels)")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.command == "summary":
        from models.summary import format_summary, summarize

        return format_summary(summarize(args.arch, _parse_chw(args.input), args.classes, args.head))
    if args.command == "classic":
        from models.classic import comparison, comparison_markdown

        chw = None if args.input is None else _parse_chw(args.input)
        return comparison_markdown(comparison(chw, args.classes))
    from models.filters import FiltersError, render

    try:
        return "\n".join(render(args.run, args.out, args.image).lines())
    except FiltersError as exc:
        raise ValueError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(_run(args))
    except (ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
