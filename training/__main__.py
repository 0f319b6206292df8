"""`python -m training fit|export|experiment …`: parse arguments, call the library, turn failures into one line and
an exit code."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # before torch and fastai are imported: metrics.json's command_seconds


def _fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="train a ResNet with fastai's one-cycle policy")
    p.add_argument("--data", required=True, help="'digits' (bundled) or a folder of images")
    p.add_argument("--arch", default="resnet20", help="resnet18/34/50, resnet20/32/56, plain*, xresnet*, tv_resnet*")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="max learning rate; chosen by lr_find when omitted")
    p.add_argument("--bs", type=int, default=None,
                   help="batch size (default 32, or fewer for at least 8 mini-batches an epoch; per process under "
                        "torchrun)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (digits: 16; else 32 or 224)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--valid-pct", type=float, default=0.2, help="validation share when the folder has no split")
    p.add_argument("--wd", type=float, default=None, help="weight decay (default 0.01)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="ε of the label-smoothed loss (0: plain CE)")
    p.add_argument("--color-mode", choices=["L", "RGB"], default=None, help="default: guessed from the images")
    p.add_argument("--head", choices=["fastai", "linear"], default=None,
                   help="fastai: create_head (concat pool, BN, dropout, 2 linear layers; default); linear: global "
                        "average pool + one linear layer")
    p.add_argument("--pretrained", default=None, metavar="PATH|NAME",
                   help="start the body from a run's model.pth or a torchvision-format state_dict, or from "
                        "torchvision's ImageNet weights by name ('imagenet', for resnet18/34/50 and tv_resnet*: "
                        "torch's hub cache, downloaded when missing); trains with fine_tune")
    p.add_argument("--freeze-epochs", type=int, default=1, help="fine_tune's epochs with the body frozen (default 1)")
    p.add_argument("--lr-mult", type=float, default=100.0,
                   help="fine_tune's lr_mult: once unfrozen, the body trains at the head's rate / lr_mult "
                        "(default 100)")
    p.add_argument("--aug", action=argparse.BooleanOptionalAction, default=None,
                   help="fastai's aug_transforms on training batches (default: on for RGB folders, off otherwise)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="fold BatchNorm, export to ONNX, verify, publish into a model repository")
    p.add_argument("run", type=Path, help="run directory written by `fit`")
    p.add_argument("--repository", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, default=None, help="default: the next free integer")
    p.add_argument("--quantize", choices=["int8"], default=None)
    p.add_argument("--atol", type=float, default=1e-4, help="max |logit difference| allowed in verification")
    p.add_argument("--optimize", action="store_true", help="also save an onnxruntime-optimized CPU model")
    p.add_argument("--max-int8-drop", type=float, default=0.01, help="max accuracy drop (0–1) for --quantize int8")
    p.add_argument("--no-explain", dest="explain", action="store_false",
                   help="skip the explain graph (explain.onnx: CAM and feature maps for the server's explanations)")
    p.add_argument("--allow-unlearned", action="store_true",
                   help="publish a model whose validation accuracy does not beat the majority class by 5 points and "
                        "two standard errors (refused by default)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _experiment_parser(sub) -> None:
    p = sub.add_parser("experiment", help="rerun a small experiment (batchnorm, skip, one-cycle, pooling, transfer) "
                                          "and write a report with plots")
    p.add_argument("name", choices=["batchnorm", "skip", "one-cycle", "pooling", "transfer"])
    p.add_argument("--data", default="digits", help="'digits' (bundled, default) or a folder of images")
    p.add_argument("--seeds", type=int, default=None,
                   help="runs per variant, seeds 0..K-1 (default: 3 for batchnorm and skip, 5 for the others)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 5)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the main runs (default: batchnorm 1e-3, others 3e-3)")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--size", type=int, default=None, help="input side in pixels (digits: 16; else 32)")
    p.add_argument("--arch", default="resnet20", help="network for batchnorm/one-cycle/pooling (project ResNets)")
    p.add_argument("--target", type=float, default=None, help="accuracy for 'time to target' (default 0.95)")
    p.add_argument("--depths", type=_ints, default=None, help="skip: depths, from 20,32,56 (default all three)")
    p.add_argument("--lrs", type=_floats, default=None,
                   help="batchnorm: swept peak learning rates (default 0.001,0.003,0.01,0.03,0.1,0.3,1)")
    p.add_argument("--sweep-epochs", type=int, default=2, help="batchnorm: epochs per sweep run (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these networks are small)")
    p.add_argument("--keep-runs", action="store_true", help="keep every run directory under OUT/runs/")
    p.add_argument("--verbose", action="store_true", help="also print fit's own lines for each run")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, results.json and the plots")


def _experiment(args, argv: list[str]) -> int:
    from training.experiments import ExperimentError, Settings, run_experiment

    lists = {k: v for k, v in (("depths", args.depths), ("lrs", args.lrs)) if v is not None}
    settings = Settings(out=args.out, data=args.data, seeds=args.seeds, epochs=args.epochs, lr=args.lr, bs=args.bs,
                        size=args.size, arch=args.arch, target=args.target, sweep_epochs=args.sweep_epochs,
                        threads=args.threads, keep_runs=args.keep_runs, verbose=args.verbose,
                        command=" ".join(["python -m training", *map(shlex.quote, argv)]), **lists)
    try:
        run_experiment(args.name, settings)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _export_parser(sub)
    _experiment_parser(sub)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    if args.command == "experiment":
        return _experiment(args, argv)

    if args.command == "fit":
        from training.fit import fit
        from training.settings import FitConfig, FitError

        cfg = FitConfig(data=args.data, arch=args.arch, epochs=args.epochs, out=args.out, lr=args.lr, bs=args.bs,
                        size=args.size, seed=args.seed, valid_pct=args.valid_pct, wd=args.wd,
                        color_mode=args.color_mode, device=args.device, plots=not args.no_plots,
                        label_smoothing=args.label_smoothing, head=args.head, pretrained=args.pretrained,
                        freeze_epochs=args.freeze_epochs, lr_mult=args.lr_mult, aug=args.aug, started=STARTED)
        try:
            fit(cfg)
        except FitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    from training.export import ExportError, VerificationFailed, export

    try:
        path = export(args.run, args.repository, args.name, version=args.version, quantize=args.quantize,
                      atol=args.atol, optimize=args.optimize, max_int8_drop=args.max_int8_drop, explain=args.explain,
                      allow_unlearned=args.allow_unlearned)
    except VerificationFailed as e:
        print(f"verification failed: {e}", file=sys.stderr)
        return 1
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
