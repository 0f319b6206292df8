"""Transfer learning: fine-tuning from a run on related data vs training from scratch on a small new task, with
fastai's fine_tune recipe and the variations of it that the first report named as untried.

Claim under test (fastai's course, "transfer learning"): a body trained on one task gives a better start on a related
task than random weights, most of all when the new task has few images. Two target tasks come from the same data
(by default the bundled digits), each with its own source run:

- ``new-classes``: new classes of a familiar domain. The source is the first half of the classes (digits 0–4) with
  every training image; the target the other half (digits 5–9) with only ``PER_CLASS`` training images per class,
  judged on all of their validation images.
- ``odd-even``: a new question about an altered domain (issue 29's small folder). ``ODD_EVEN_IMAGES`` images
  (seeded draw from the whole data set), inverted (white background), labelled by the parity of their class index
  (for digits, odd or even), split ``ODD_EVEN_VALID`` for validation and the rest for training. The source is every
  other image, all classes, not inverted — the body has seen none of the target's images.

The source runs (the linear head, seed 0) are trained once and kept with the folders under ``data/transfer/``
(``RESNET_DATA_HOME``). Every target run has the same epoch budget: from scratch, ``epochs`` of one-cycle;
fine-tuned, ``fine_tune`` with F frozen epochs then ``epochs − F``, the body loaded from the source run and a new
head, with one of ``RECIPES`` (frozen epochs, lr_mult). The learning rate is fixed (no lr_find): this compares
recipes, not learning-rate choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.experiments import figures
from training.experiments.report import Report, Table
from training.experiments.runner import ExperimentError, RunResult, RunSpec, Settings, by_variant, seed_list
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "transfer"
TITLE = "Transfer learning: fine_tune's recipes vs training from scratch on two small tasks"
DEFAULTS = {"seeds": 5, "epochs": 10, "lr": 1e-2}
PER_CLASS = 20
ODD_EVEN_IMAGES = 400  # 320 training / 80 validation, as the folder of issue 29
ODD_EVEN_VALID = 80
SOURCE_EPOCHS = 5
TARGET_BS = 16  # at most: 100 target images in batches of 64 would be one step per epoch
SCRATCH = "scratch"
DEFAULT_RECIPE = "fine_tune"
# variant: (frozen epochs, lr_mult) of fine_tune; fastai's defaults first, then the first report's untried ones.
RECIPES: dict[str, tuple[int, float]] = {
    DEFAULT_RECIPE: (1, 100.0),
    "lr_mult 10": (1, 10.0),
    "lr_mult 1": (1, 1.0),
    "frozen 3": (3, 100.0),
}
VARIANTS = (SCRATCH, *RECIPES)
TASKS = ("new-classes", "odd-even")
TASK_TITLES = {"new-classes": "New classes (second half of the labels, few images each)",
               "odd-even": "Odd/even of inverted images"}


def _home() -> Path:
    from training.data import default_data_home

    return default_data_home() / "transfer"


def _tag(data: str) -> str:
    """A folder name per data set: "digits", or the folder's name and a hash of its absolute path."""
    import hashlib

    if data == "digits":
        return data
    return f"{Path(data).name}-{hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:8]}"


def _scan(data: str):
    from training.data import guess_color_mode, scan

    return scan(data, guess_color_mode(data), log=lambda _m: None)


def split_classes(labels: list[str]) -> tuple[list[str], list[str]]:
    """Source classes (the first half, rounded up) and target classes (the rest)."""
    if len(labels) < 4:
        raise ExperimentError(f"transfer needs at least 4 classes (2 per task), the data has {len(labels)}")
    half = (len(labels) + 1) // 2
    return labels[:half], labels[half:]


def subset_folder(data: str, name: str, labels: list[str], per_class: int | None) -> Path:
    """``data/transfer/<data>-<name>/{train,valid}/<label>/*``: the classes ``labels``, with the first ``per_class``
    training images of each (all when None) and every validation image; copied once."""
    import shutil

    dest = _home() / f"{_tag(data)}-{name}"
    if (dest / ".complete").exists():
        return dest
    ds = _scan(data)
    kept: dict[int, int] = {}
    for split, items in (("train", ds.train), ("valid", ds.valid)):
        for path, y in items:
            if ds.labels[y] not in labels:
                continue
            if split == "train":
                kept[y] = kept.get(y, 0) + 1
                if per_class is not None and kept[y] > per_class:
                    continue
            folder = dest / split / ds.labels[y]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
    (dest / ".complete").write_text("1\n")
    return dest


def folders(data: str, per_class: int = PER_CLASS) -> tuple[Path, Path]:
    """The new-classes task: (source folder, target folder)."""
    source, target = split_classes(_scan(data).labels)
    return (subset_folder(data, f"source-{len(source)}", source, None),
            subset_folder(data, f"target-{len(target)}-k{per_class}", target, per_class))


def odd_even_draw(n_images: int) -> tuple[int, int]:
    """(target images, of which validation): ``ODD_EVEN_IMAGES`` / ``ODD_EVEN_VALID``, or for a data set of fewer
    than twice as many images, half of it in the same proportion (the source keeps the other half)."""
    n = min(ODD_EVEN_IMAGES, n_images // 2)
    return n, max(1, round(n * ODD_EVEN_VALID / ODD_EVEN_IMAGES))


def odd_even_folders(data: str) -> tuple[Path, Path]:
    """The odd-even task: (source folder, target folder), written once.

    Target: ``odd_even_draw`` images drawn (seed 0) from every image of ``data``, colours inverted, labelled
    ``even``/``odd`` by their class index (sorted labels: for digits, the digit), the first ones of the draw for
    validation. Source: every other image, not inverted, under its own label and in its own split."""
    from PIL import Image, ImageOps

    from training.data import guess_color_mode

    ds = _scan(data)
    items = sorted([(p, y, "train") for p, y in ds.train] + [(p, y, "valid") for p, y in ds.valid])
    n, n_valid = odd_even_draw(len(items))
    drawn = np.random.default_rng(0).permutation(len(items))[:n]
    source = _home() / f"{_tag(data)}-oddeven-source"
    target = _home() / f"{_tag(data)}-oddeven-target-{n}"
    if (source / ".complete").exists() and (target / ".complete").exists():
        return source, target
    import shutil

    mode = guess_color_mode(data)
    held = set(drawn.tolist())
    for i, (path, y, split) in enumerate(items):
        if i in held:
            continue
        folder = source / split / ds.labels[y]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
    for rank, i in enumerate(drawn.tolist()):
        path, y, _ = items[i]
        folder = target / ("valid" if rank < n_valid else "train") / ("odd" if y % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            # The draw's index first: two classes may hold files of the same name.
            ImageOps.invert(img.convert(mode)).save(folder / f"{i:05d}-{path.stem}.png")
    for dest in (source, target):
        (dest / ".complete").write_text("1\n")
    return source, target


def source_run(s: Settings, folder: Path) -> Path:
    """The run on a source folder whose body every fine-tuned run of its task starts from (trained once, then
    reused)."""
    from training.fit import fit
    from training.settings import FitConfig

    out = _home() / f"{folder.name}-run-{s.arch}-e{SOURCE_EPOCHS}-lr{s.lr:g}-bs{s.bs}-size{s.size}"
    if not (out / "model.pth").exists():
        fit(FitConfig(data=str(folder), arch=s.arch, epochs=SOURCE_EPOCHS, out=out, lr=s.lr, bs=s.bs, size=s.size,
                      seed=0, plots=False, head="linear", label_smoothing=0.0), log=lambda _m: None)
    return out


def plan(s: Settings) -> list[RunSpec]:
    most_frozen = max(frozen for frozen, _ in RECIPES.values())
    if s.epochs <= most_frozen:
        raise ExperimentError(f"transfer needs --epochs >= {most_frozen + 1} (up to {most_frozen} frozen epochs, "
                              f"then the rest), got {s.epochs}")
    pairs = {"new-classes": folders(s.data), "odd-even": odd_even_folders(s.data)}
    tasks = {task: (str(target), str(source_run(s, source) / "model.pth")) for task, (source, target) in pairs.items()}
    specs = []
    for seed in range(s.seeds):
        for task, (data, source) in tasks.items():
            specs.append(RunSpec(SCRATCH, s.arch, seed, s.lr, s.epochs, data=data, bs=min(s.bs, TARGET_BS),
                                 group=task))
            # The same budget: fine_tune's frozen epochs count.
            specs += [RunSpec(variant, s.arch, seed, s.lr, s.epochs - frozen, data=data, pretrained=source,
                              bs=min(s.bs, TARGET_BS), group=task, freeze_epochs=frozen, lr_mult=lr_mult)
                      for variant, (frozen, lr_mult) in RECIPES.items()]
    return specs


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    tables, comparisons, findings, plots, summary, setup, readings = [], [], [], [], {"tasks": {}}, [], []
    beats: dict[str, list[str]] = {}
    verdicts: dict[str, dict[str, tuple[str, float | None]]] = {}
    gaps: dict[str, dict[str, float]] = {}
    for task in TASKS:
        runs = by_variant(results, group=task)
        first = runs[SCRATCH][0]
        acc = {v: [r.valid_accuracy for r in runs[v]] for v in VARIANTS}
        loss = {v: [r.valid_loss for r in runs[v]] for v in VARIANTS}
        secs = {v: [r.train_seconds for r in runs[v]] for v in VARIANTS}
        wins = {v: sum(f > b for f, b in zip(acc[v], acc[SCRATCH], strict=True)) for v in RECIPES}
        majority = first.majority_rate
        rows = [[_recipe(v), fmt_values(acc[v]), fmt_values(loss[v]), fmt_values(secs[v], 2),
                 "—" if v == SCRATCH else f"{wins[v]} of {s.seeds}"] for v in VARIANTS]
        caption = (f"{TASK_TITLES[task]}: after {s.epochs} epochs in all, mean ± std over {s.seeds} seeds"
                   + (f" (majority class: {majority:.4f} of the validation images)" if majority is not None else ""))
        tables.append(Table(caption, ["start", "valid accuracy", "valid loss", "training seconds",
                                      "seeds ahead of scratch"], rows))
        vs_scratch = {v: compare(f"{task} valid accuracy", v, acc[v], SCRATCH, acc[SCRATCH]) for v in RECIPES}
        vs_default = {v: compare(f"{task} valid accuracy", v, acc[v], DEFAULT_RECIPE, acc[DEFAULT_RECIPE])
                      for v in RECIPES if v != DEFAULT_RECIPE}
        comparisons += [*vs_scratch.values(), *vs_default.values()]
        beats[task] = [v for v, c in vs_scratch.items() if c.verdict == "shows" and c.diff > 0]
        verdicts[task] = {v: (c.verdict, c.diff) for v, c in vs_default.items()}
        gaps[task] = {v: float(np.mean(acc[v]) - np.mean(acc[SCRATCH])) for v in RECIPES}
        findings += _findings(task, acc, vs_scratch, vs_default)
        readings.append(_per_epoch(task, runs))
        figures.validation_curves(out / f"curves-{task}.png", {_recipe(v): runs[v] for v in VARIANTS},
                                  title=f"{TASK_TITLES[task]}: per epoch, mean ± std over seeds")
        plots.append((f"{TASK_TITLES[task]}: validation accuracy and loss per epoch", f"curves-{task}.png"))
        setup.append(_task_setup(task, s, first, majority))
        summary["tasks"][task] = {
            "majority_rate": majority, "n_train": first.n_train, "n_valid": first.n_valid,
            "variants": {v: {"valid_accuracy": mean_std(acc[v]), "valid_loss": mean_std(loss[v])} for v in VARIANTS},
            "paired_wins": wins,
            "mean_gap": {v: float(np.mean(acc[v]) - np.mean(acc[SCRATCH])) for v in RECIPES}}
    setup += [f"Source runs: {s.arch}, linear head, {SOURCE_EPOCHS} epochs of one-cycle, peak lr {s.lr:g}, batch "
              f"{s.bs}, seed 0; the fine-tuned runs load the body and get a new head.",
              f"From scratch: {s.epochs} epochs of fastai one-cycle, peak lr {s.lr:g}. Fine-tuned: fastai "
              f"fine_tune(epochs={s.epochs} − F, base_lr={s.lr:g}, freeze_epochs=F, lr_mult=M) — {s.epochs} epochs "
              f"in all: F epochs training the head (body frozen, BatchNorm trains), then one cycle on everything at "
              f"peak lr {s.lr / 2:g} for the head and {s.lr:g}/2/M for the body. Recipes (F, M): "
              + "; ".join(f"{v} ({f}, {m:g})" for v, (f, m) in RECIPES.items())
              + f" — fastai's defaults are (1, 100). Batch {min(s.bs, TARGET_BS)}, Adam, weight decay 0.01, plain "
              f"cross-entropy, {seed_list(s.seeds)}."]
    return Report(
        name=NAME, title=TITLE,
        question=("Does a body trained on digits help on a related task with few images, and does the answer depend "
                  "on fine_tune's recipe? The same network "
                  f"({s.arch}) learns two small tasks from random weights or fine-tuned from a source run, with "
                  "fastai's fine_tune defaults (1 frozen epoch, body at 1/100 of the head's lr) and with the "
                  "variations the first run of this experiment left untried: lr_mult 10 and 1, and 3 frozen epochs."),
        setup=setup, tables=tables, comparisons=comparisons, findings=findings, plots=plots,
        sections=[("What this does and does not say", [*readings, *_reading(beats, verdicts, gaps, s)])],
        notes=["Source and target share the writers and the scanner: this is transfer within handwritten digits "
               "(new classes; an inverted, relabelled version), not to unrelated photos.",
               "lr_mult is applied by the experiment's runner (a callback that spreads the groups' learning rates "
               "as fine_tune(lr_mult=M) does once the body is unfrozen; a test compares the two), since "
               "`python -m training fit` passes fine_tune fastai's default.",
               "Each source run is trained once and kept under data/transfer/ (RESNET_DATA_HOME), not in "
               "results.json: another cached source body changes every fine-tuned number, none of the runs from "
               "scratch.",
               "Seconds are wall-clock on a machine shared with other jobs: compare them within this report only."],
        summary=summary,
    )


def _recipe(variant: str) -> str:
    if variant == SCRATCH:
        return SCRATCH
    frozen, lr_mult = RECIPES[variant]
    return f"{variant} (F={frozen}, M={lr_mult:g})"


def _task_setup(task: str, s: Settings, first: RunResult, majority: float | None) -> str:
    size = f"{first.size}×{first.size} px"
    if task == "new-classes":
        source, target = split_classes(_scan(s.data).labels) if _data_exists(s.data) else ([], [])
        classes = f"classes {', '.join(target)}" if target else "the second half of the classes"
        return (f"Task new-classes: {classes} — {first.n_train} training images (at most {PER_CLASS} per class), "
                f"{first.n_valid} validation images, {size}. Its source run: "
                + (f"classes {', '.join(source)}" if source else "the first half of the classes")
                + " with every training image.")
    share = f"; majority class {majority:.4f}" if majority is not None else ""
    return (f"Task odd-even: {first.n_train + first.n_valid} images drawn from the whole data set (seed 0), "
            f"inverted, labelled even/odd by class index (the digit) — {first.n_train} training / {first.n_valid} "
            f"validation images, {size}{share}. Its source run: every other image (all classes, not inverted, "
            "their own split), so that the body has seen none of the target's images.")


def _data_exists(data: str) -> bool:
    return data == "digits" or Path(data).is_dir()


def _findings(task: str, acc: dict[str, list[float]], vs_scratch: dict[str, Comparison],
              vs_default: dict[str, Comparison]) -> list[str]:
    """Per task: which start wins, and whether the recipe changed fastai's defaults' result."""
    means = {v: float(np.mean(acc[v])) for v in VARIANTS}
    best = max(RECIPES, key=means.get)
    better = [v for v, c in vs_scratch.items() if c.verdict == "shows" and c.diff > 0]
    worse = [v for v, c in vs_scratch.items() if c.verdict == "shows" and c.diff < 0]
    lines = [f"{task}: from scratch {means[SCRATCH]:.4f}; the best fine_tune recipe, {best}, {means[best]:.4f}."]
    if better:
        lines.append(f"{task}: fine-tuning beats training from scratch with {', '.join(better)} (95 % CI of the "
                     "difference excludes 0).")
    if worse:
        lines.append(f"{task}: training from scratch beats fine-tuning with {', '.join(worse)}.")
    same = [v for v, c in vs_scratch.items() if c.verdict == "does not show"]
    if same:
        lines.append(f"{task}: no difference from scratch shows with {', '.join(same)}.")
    unclear = [v for v, c in vs_scratch.items() if c.verdict == "cannot tell"]
    if unclear:
        lines.append(f"{task}: cannot tell {', '.join(unclear)} from scratch (see the comparisons).")
    against = {"shows": [f"{v} ({c.diff:+.4f})" for v, c in vs_default.items() if c.verdict == "shows"],
               "does not show": [v for v, c in vs_default.items() if c.verdict == "does not show"],
               "cannot tell": [v for v, c in vs_default.items() if c.verdict == "cannot tell"]}
    words = {"shows": "the accuracy changed with", "does not show": "no difference shows with",
             "cannot tell": "cannot tell"}
    lines += [f"{task}: against fastai's defaults, {words[verdict]} {', '.join(names)}."
              for verdict, names in against.items() if names]
    return lines


def _per_epoch(task: str, runs: dict[str, list[RunResult]]) -> str:
    """Where the default recipe's curve and the scratch curve cross, and the best recipe's first epoch."""
    mean = {v: np.mean([[h["accuracy"] for h in r.history] for r in runs[v]], axis=0) for v in VARIANTS}
    ahead = [i + 1 for i, (f, b) in enumerate(zip(mean[DEFAULT_RECIPE], mean[SCRATCH], strict=True)) if f > b]
    first = ", ".join(f"{v} {mean[v][0]:.3f}" for v in VARIANTS)
    if not ahead:
        return (f"{task}, per epoch (mean over seeds): fastai's default recipe was never ahead of training from "
                f"scratch. Accuracy after the first epoch: {first}.")
    return (f"{task}, per epoch (mean validation accuracy over seeds): fastai's default recipe was ahead of "
            f"training from scratch at epochs {', '.join(map(str, ahead))}. Accuracy after the first epoch: "
            f"{first}.")


def _reading(beats: dict[str, list[str]], verdicts: dict[str, dict[str, tuple[str, float | None]]],
             gaps: dict[str, dict[str, float]], s: Settings) -> list[str]:
    """How far the result goes, in words (the causes named are hypotheses unless a run above tested them).
    Per task: ``beats`` the recipes that beat training from scratch, ``verdicts`` each other recipe against fastai's
    defaults (verdict, difference), ``gaps`` each recipe's mean accuracy minus scratch's."""
    paragraphs = []
    if any(beats.values()):
        where = "; ".join(f"{task}: {', '.join(v) or 'none'}" for task, v in beats.items())
        paragraphs.append(f"Fine-tuning beat training from scratch with the same epoch budget with these recipes — "
                          f"{where}. The claim shows where a recipe is listed, on these small tasks, for this network "
                          f"and learning rate ({s.arch}, peak lr {s.lr:g}).")
    else:
        paragraphs.append(f"No fine_tune recipe tried here (fastai's defaults, lr_mult 10 and 1, 3 frozen epochs; "
                          f"base lr {s.lr:g}) beat training from scratch on either task: the claim does not show "
                          "with these recipes on this data.")
    gap_lines = []
    for task, by_recipe in gaps.items():
        best = max(by_recipe, key=by_recipe.get)
        gap_lines.append(f"{task} {100 * by_recipe[DEFAULT_RECIPE]:+.1f} points with fastai's defaults, "
                         f"{100 * by_recipe[best]:+.1f} with {best}")
    paragraphs.append("Against training from scratch (mean accuracy): " + "; ".join(gap_lines) + ".")
    helped = {task: [v for v, (verdict, diff) in vs.items() if verdict == "shows" and (diff or 0) > 0]
              for task, vs in verdicts.items()}
    idle = {task: [v for v, (verdict, _) in vs.items() if verdict == "does not show"] for task, vs in verdicts.items()}
    measured = []
    if any(helped.values()):
        measured.append("better than fastai's defaults: " + "; ".join(
            f"{task}: {', '.join(v)}" for task, v in helped.items() if v))
    if any(idle.values()):
        measured.append("no different from them: " + "; ".join(f"{task}: {', '.join(v)}" for task, v in idle.items()
                                                               if v))
    if measured:
        paragraphs.append("Measured here, recipe against recipe — " + "; ".join(measured) + ". With fine_tune's "
                          "lr_mult 100 the body, once unfrozen, trains at 1/100 of the head's rate; where a smaller "
                          "lr_mult did better, the body had to change more than that rate allows for these tasks, "
                          "and where more frozen epochs made no difference, a better-trained head alone did not "
                          "make up for it.")
    paragraphs.append("Not tested here, so only possible reasons for what remains: the source bodies are small "
                      f"({s.arch}) and trained for {SOURCE_EPOCHS} epochs, while a {s.arch} from scratch learns these "
                      "small images of digits within a few dozen steps; fine_tune's defaults suit bodies trained on "
                      "large, varied data (ImageNet).")
    return paragraphs
