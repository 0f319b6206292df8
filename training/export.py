"""Export a training run to a verified ONNX model version in a model repository.

``export(RUN, DIR, NAME)`` writes ``DIR/NAME/VERSION/`` (the layout and files of ``serving.contract``):

1. load ``RUN/model.pth`` (eval mode) and ``RUN/spec.json``; fold every BatchNorm on a copy and check in PyTorch
   that the folded network computes the same logits;
2. export the folded copy with the dynamo exporter (opset 18, dynamic batch, one self-contained file), add the
   spec to the ONNX metadata, run ``onnx.checker`` (full check) and refuse any BatchNormalization node;
3. run the whole validation set (``RUN/data.json``, preprocessed by ``serving.contract.preprocess``) through
   the original PyTorch model, the folded one, onnxruntime and the NumPy reference, at batch 32 and a few samples
   at batch 1; any logit further than ``atol`` from PyTorch's or any different top-1 class fails the export;
   then the explain graph (``explain.onnx``, training.explain: the same folded network with each stage's feature
   map and the class activation maps as outputs) is exported and checked against PyTorch the same way;
4. optionally quantize to INT8 (its own version, judged by accuracy drop and top-1 agreement against FP32) and
   save an onnxruntime-optimized copy;
5. write golden.npz, verification.json, model.json and config.pbtxt, then publish the folder with one rename.

Everything is built in a hidden staging folder inside ``DIR/NAME`` and renamed into place only once every check
has passed, so a failed export leaves no version behind and a server scanning the repository never sees half a
version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models import registry, scratch
from serving.contract import layout, triton
from serving.contract.manifest import EXPLAIN_FILE, INPUT_NAME, OUTPUT_NAME, ExplainGraph, ModelManifest
from serving.contract.preprocess import PreprocessSpec
from serving.errors import InvalidInput
from training import explain, verify
from training.fold import FoldReport, fold_batchnorm
from training.learned import judge

__all__ = ["MAX_INT8_DROP", "OPSET", "ExportError", "Run", "VerificationFailed", "batchnorm_nodes", "export",
           "export_run", "load_run", "sha256"]

OPSET = 18
GOLDEN_SAMPLES = 8
# golden_atol = max(atol, GOLDEN_FACTOR × the largest PyTorch↔onnxruntime difference seen in verification): the
# server may run on another CPU, thread count or provider, whose float summation order differs from ours.
GOLDEN_FACTOR = 10.0
GOLDEN_FLOOR = 1e-6  # never 0: the server requires golden_atol > 0 (an --atol 0 export that matched exactly)
# INT8 golden logits are the INT8 model's own outputs. Another runtime may round a few activations differently: the
# gap between onnxruntime's fused integer kernels and the same QDQ graph run as plain float arithmetic (what an
# execution provider without integer kernels does) is measured here; allow INT8_GOLDEN_FACTOR × that gap and at
# least INT8_GOLDEN_FLOOR of the largest golden logit. Thread count does not change integer results.
INT8_GOLDEN_FACTOR = 3.0
INT8_GOLDEN_FLOOR = 0.02
# The INT8 model is refused when its validation accuracy falls more than this below the FP32 model's (0.01: one point).
MAX_INT8_DROP = 0.01
# The NumPy reference is the slowest runner (tens of ms per image at 224 px): it checks the first samples only.
NUMPY_MAX_SAMPLES = 2048
VARIANTS = (None, "int8")
OPTIMIZED_FILE = "model.ort-opt.onnx"

Log = Callable[[str], Any]


class ExportError(Exception):
    """The run or the arguments cannot be exported (missing files, unknown version, bad name …)."""


class VerificationFailed(ExportError):
    """The exported model does not reproduce the trained one; the message names the comparison and the gap."""


class NotLearned(VerificationFailed):
    """The model does not beat the majority class on the validation images (``training.learned``)."""


@dataclass(frozen=True)
class Run:
    """A training run directory, loaded and checked."""

    path: Path
    model: nn.Module
    arch: str
    checkpoint: Path | None
    classes: int
    spec: PreprocessSpec
    metrics: dict[str, Any]
    valid: verify.Dataset
    train: verify.Dataset


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from None


def load_run(run: Path) -> Run:
    """Read ``RUN/model.pth``, ``spec.json``, ``data.json`` (and ``metrics.json`` if present)."""
    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"run directory {run} does not exist")
    if not (run / "model.pth").is_file():
        raise ExportError(f"{run / 'model.pth'} is missing")
    try:
        model, header = registry.load_checkpoint(run / "model.pth")
    except Exception as e:  # a corrupt or foreign checkpoint is bad input, whatever torch raises
        raise ExportError(f"cannot load {run / 'model.pth'}: {type(e).__name__}: {e}") from None
    try:
        spec = PreprocessSpec.from_dict(_read_json(run / "spec.json"))
    except (TypeError, ValueError) as e:
        raise ExportError(f"{run / 'spec.json'} is not a valid preprocessing spec: {e}") from None
    classes, in_chans = int(header["kwargs"]["num_classes"]), int(header["kwargs"]["in_chans"])
    if len(spec.labels) != classes:
        raise ExportError(f"spec.json has {len(spec.labels)} labels but the model has {classes} outputs")
    if spec.channels != in_chans:
        raise ExportError(f"spec.json says {spec.channels} channels ({spec.color_mode}), the model takes {in_chans}")
    data = _read_json(run / "data.json")
    try:
        valid, train = (verify.Dataset(Path(data["root"]), tuple((str(p), int(y)) for p, y in data.get(split, [])))
                        for split in ("valid", "train"))
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{run / 'data.json'} is malformed: {e}") from None
    if len(valid) == 0:
        raise ExportError(f"{run / 'data.json'} lists no validation images: nothing to verify the export on")
    if bad := [y for _, y in valid.items + train.items if not 0 <= y < classes]:
        raise ExportError(f"data.json has label index {bad[0]} outside 0..{classes - 1}")
    metrics = _read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    return Run(run.resolve(), model, header["arch"], run.resolve() / "model.pth", classes, spec, metrics, valid,
               train)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def batchnorm_nodes(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes in the graph and in every subgraph and local function."""
    def count(graph: onnx.GraphProto) -> int:
        n = 0
        for node in graph.node:
            n += node.op_type == "BatchNormalization"
            for attr in node.attribute:
                n += sum(count(g) for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs))
        return n
    return count(model.graph) + sum(node.op_type == "BatchNormalization" for f in model.functions for node in f.node)


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path, output_names: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """Dynamo export at opset 18 with a dynamic batch dimension, weights inside the one file."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_shapes=({0: batch},), verbose=False,
        )
    except Exception as e:  # torch.export / onnxscript raise many types; the first line says what was unsupported
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(e).__name__}: {first}") from e
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def check_onnx(path: Path, spec: PreprocessSpec, classes: int) -> None:
    """``onnx.checker`` (full), no BatchNormalization, and the input/output the repository format promises."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejects {path.name}: {e}") from None
    model = onnx.load(str(path))
    if n := batchnorm_nodes(model):
        raise ExportError(f"{path.name} still holds {n} BatchNormalization node(s) after folding")
    (inp,), (out,) = model.graph.input, model.graph.output
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    if inp.name != INPUT_NAME or out.name != OUTPUT_NAME:
        raise ExportError(f"graph I/O is {inp.name!r} → {out.name!r}, expected {INPUT_NAME!r} → {OUTPUT_NAME!r}")
    if not isinstance(in_dims[0], str) or in_dims[1:] != list(spec.input_shape):
        raise ExportError(f"input shape {in_dims} is not [batch, {', '.join(map(str, spec.input_shape))}]")
    if out_dims[1:] != [classes]:
        raise ExportError(f"output shape {out_dims} is not [batch, {classes}]")


def _numpy_reference(run: Run) -> verify.Runner | str:
    """The from-scratch NumPy forward of the checkpoint (``models.scratch``), or the reason it cannot run."""
    if run.checkpoint is None:
        return "the model was given as a module, not as a checkpoint the NumPy reference can read"
    if run.arch not in scratch.SUPPORTED_ARCHS:
        return f"the NumPy reference does not implement {run.arch}"
    try:
        net = scratch.from_checkpoint(torch.load(run.checkpoint, map_location="cpu", weights_only=True))
    except (NotImplementedError, ValueError, KeyError, TypeError) as e:
        return f"the NumPy reference cannot load {run.arch}: {type(e).__name__}: {e}"
    return lambda x: np.asarray(net.forward(x), dtype=np.float32)


def _choose_version(model_dir: Path, version: int | None) -> int:
    if version is None:
        return max(layout.version_dirs(model_dir), default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or layout.parse_version(str(version)) is None:
        raise ExportError(f"version must be an integer >= 1 of at most 18 digits, got {version!r}")
    if (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} already exists; versions are never overwritten")
    return version


def _fold(run: Run, example: torch.Tensor, atol: float, log: Log) -> tuple[nn.Module, FoldReport]:
    folded, report = fold_batchnorm(run.model, example, log=log)
    with torch.no_grad():
        diff = float((run.model(example) - folded(example)).abs().max())
    log(f"fold: {report.summary()}; PyTorch folded vs unfused max |Δ| = {diff:.3g}")
    if not diff <= atol:
        raise VerificationFailed(f"PyTorch folded vs unfused: max_abs_diff {diff:.3g} > atol {atol:.3g}")
    return folded, report


def _metadata(run: Run, name: str, version: int, variant: str) -> dict[str, str]:
    return {"preprocess": json.dumps(run.spec.to_dict()), "labels": json.dumps(list(run.spec.labels)),
            "arch": run.arch, "name": name, "version": str(version), "variant": variant}


def _manifest(run: Run, name: str, version: int, variant: str, onnx_sha: str, golden_atol: float,
              summary: dict[str, Any], optimized: dict[str, Any] | None) -> ModelManifest:
    return ModelManifest(
        name=name, version=version, labels=run.spec.labels, spec=run.spec, onnx_sha256=onnx_sha,
        golden_atol=golden_atol, input_shape=run.spec.input_shape, num_classes=run.classes, arch=run.arch,
        variant=variant, opset=OPSET, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source={"run": str(run.path), "metrics": {k: v for k, v in run.metrics.items() if k != "history"}},
        verification=summary, optimized=optimized,
        producer={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    )


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def export(run: Path, repository: Path, name: str, version: int | None = None, quantize: str | None = None,
           atol: float = 1e-4, optimize: bool = False, max_int8_drop: float = MAX_INT8_DROP, log: Log = print, *,
           explain: bool = True, allow_unlearned: bool = False) -> Path:
    """Fold, export, verify and publish ``run`` as ``repository/name/version``; returns that folder. ``explain``:
    also the explain graph (``explain.onnx``, FP32 ResNets), which the server's explanations need.
    ``allow_unlearned``: publish a model that did not beat the majority class (``training.learned``) all the same."""
    return export_run(load_run(Path(run)), repository, name, version, quantize, atol, optimize, max_int8_drop, log,
                      explain=explain, allow_unlearned=allow_unlearned)


def export_run(run: Run, repository: Path, name: str, version: int | None = None, quantize: str | None = None,
               atol: float = 1e-4, optimize: bool = False, max_int8_drop: float = MAX_INT8_DROP, log: Log = print, *,
               explain: bool = True, allow_unlearned: bool = False) -> Path:
    """:func:`export` for a run already in memory (e.g. a model that the registry cannot rebuild)."""
    if not layout.is_model_name(name or ""):
        raise ExportError(f"model name {name!r} must match {layout.NAME_PATTERN}")
    if quantize not in VARIANTS:
        raise ExportError(f"quantize must be one of {VARIANTS}, got {quantize!r}")
    if not atol >= 0 or not max_int8_drop >= 0:
        raise ExportError(f"atol and max_int8_drop must be >= 0, got {atol}, {max_int8_drop}")
    model_dir = Path(repository) / name
    version = _choose_version(model_dir, version)
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read the version
    try:
        try:
            _build(run, staging, name, version, quantize, atol, optimize, max_int8_drop, log, explain,
                   allow_unlearned)
        except InvalidInput as e:  # an image listed in data.json is missing or unreadable
            raise ExportError(f"cannot read a dataset image: {e}") from None
        target = model_dir / str(version)
        if target.exists():  # another export took the number while we were verifying
            raise ExportError(f"{target} appeared during the export; versions are never overwritten")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    _update_model_config(model_dir, target)
    log(f"published {target}")
    return target


def _update_model_config(model_dir: Path, target: Path) -> None:
    """Triton reads ``NAME/config.pbtxt``: keep it equal to the newest version's copy."""
    newest = max(layout.version_dirs(model_dir))
    if int(target.name) == newest:
        tmp = model_dir / ".config.pbtxt.tmp"
        shutil.copyfile(target / "config.pbtxt", tmp)
        os.replace(tmp, model_dir / "config.pbtxt")


def _build(run: Run, out: Path, name: str, version: int, quantize: str | None, atol: float, optimize: bool,
           max_int8_drop: float, log: Log, explain_graph_too: bool = True, allow_unlearned: bool = False) -> None:
    started = time.perf_counter()
    golden_inputs = next(run.valid.batches(run.spec, GOLDEN_SAMPLES))[0]
    example = torch.from_numpy(golden_inputs)
    folded, report = _fold(run, example, atol, log)

    variant = quantize or "fp32"
    model_path = out / "model.onnx"
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out.parent) as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx" if quantize else model_path
        t = time.perf_counter()
        # Batch 2 as the example: the exporter specialises a dimension of size 1 even when told it is dynamic.
        to_onnx(folded, example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1), fp32_path)
        _set_metadata(fp32_path, _metadata(run, name, version, "fp32"))
        check_onnx(fp32_path, run.spec, run.classes)
        export_seconds = time.perf_counter() - t
        log(f"export: {fp32_path.stat().st_size / 1e6:.2f} MB ONNX, 0 BatchNormalization nodes, {export_seconds:.1f} s")

        fp32_doc, fp32_out = _verify_fp32(run, fp32_path, folded, atol, log)
        fp32_doc["fold"] = report.summary()
        fp32_doc["learned"] = _check_learned(fp32_doc, fp32_out.labels, run.classes, allow_unlearned, log)
        explain_graph = None if quantize or not explain_graph_too else \
            _explain(run, folded, example, golden_inputs, out, atol, fp32_doc, log)
        if quantize:
            doc, golden_logits, golden_atol = _quantize(run, fp32_path, model_path, fp32_out, max_int8_drop,
                                                        golden_inputs, log)
            _set_metadata(model_path, _metadata(run, name, version, variant))
            check_onnx(model_path, run.spec, run.classes)
            doc["fp32"] = fp32_doc
        else:
            doc = fp32_doc
            golden_logits = fp32_out.logits["pytorch"][:len(golden_inputs)]
            ort_diff = doc["comparisons"]["pytorch_vs_onnxruntime"]["max_abs_diff"]
            golden_atol = max(atol, GOLDEN_FACTOR * ort_diff, GOLDEN_FLOOR)

    optimized = _optimize(model_path, out / OPTIMIZED_FILE, golden_inputs, golden_logits, golden_atol, log) \
        if optimize else None
    doc["seconds"] = round(time.perf_counter() - started, 2)
    doc["export_seconds"] = round(export_seconds, 2)
    np.savez(out / "golden.npz", inputs=golden_inputs.astype(np.float32), logits=golden_logits.astype(np.float32))
    _write_json(out / "verification.json", doc)
    summary = {k: doc[k] for k in ("passed", "samples", "max_abs_diff", "top1_agreement")}
    learned = fp32_doc["learned"]
    summary |= {"learned": learned["learned"], "majority_rate": learned["majority_rate"]}
    if quantize:
        summary |= {"accuracy": doc["accuracy"]["int8"], "fp32_accuracy": doc["accuracy"]["fp32"],
                    "accuracy_drop": doc["accuracy_drop"], "max_int8_drop": doc["max_int8_drop"]}
    else:
        summary |= {"atol": atol, "accuracy": doc["accuracy"]["onnxruntime"],
                    "numpy": doc["comparisons"]["pytorch_vs_numpy"]["status"]}
    manifest = _manifest(run, name, version, variant, sha256(model_path), golden_atol, summary, optimized)
    manifest = dataclasses.replace(manifest, explain=explain_graph)
    manifest.save(out / "model.json")
    (out / "config.pbtxt").write_text(triton.config_pbtxt(manifest))


def _check_learned(doc: dict[str, Any], labels: np.ndarray, classes: int, allowed: bool, log: Log) -> dict[str, Any]:
    """The model must beat the majority class on the validation images (training.learned) to be published, unless
    ``allowed``; the verdict goes into verification.json and model.json either way."""
    verdict = judge(doc["accuracy"]["onnxruntime"], np.bincount(labels, minlength=classes).tolist())
    if not verdict.learned:
        if not allowed:
            raise NotLearned(f"the model has not learned: {verdict.why_not()}; not published (--allow-unlearned "
                             "publishes it all the same)")
        log(f"learned: NO ({verdict.why_not()}); published all the same (--allow-unlearned)")
    return {**verdict.to_dict(), "allowed_unlearned": allowed}


def _explain(run: Run, folded: nn.Module, example: torch.Tensor, samples: np.ndarray, out: Path, atol: float,
             doc: dict[str, Any], log: Log) -> ExplainGraph | None:
    """The explain graph (training.explain) beside model.onnx, verified against PyTorch; None for other archs."""
    if not explain.supports(folded, run.arch):
        doc["explain"] = {"skipped": f"{type(folded).__name__} has no named stages: explanations by occlusion only"}
        return None
    path = out / EXPLAIN_FILE
    graph, record = explain.export_explain(folded, run.model, example[:2] if len(example) >= 2 else
                                           example.repeat(2, 1, 1, 1), samples, path, atol, to_onnx, run.arch)
    doc["explain"] = record
    if not record["passed"]:
        raise VerificationFailed("explain graph: " + "; ".join(record["failures"]))
    log(f"explain: {path.name} with {len(graph.stages)} stage maps{' and CAM' if graph.cam else ''}, max |Δ| "
        f"{max(record['max_abs_diff'].values()):.3g} over {record['samples']} images")
    return dataclasses.replace(graph, sha256=sha256(path))


def _verify_fp32(run: Run, path: Path, folded: nn.Module, atol: float,
                 log: Log) -> tuple[dict[str, Any], verify.Outputs]:
    """PyTorch (unfolded) vs folded PyTorch, onnxruntime and the NumPy reference on the whole validation set."""
    runners: dict[str, verify.Runner] = {
        "pytorch": verify.torch_runner(run.model),
        "pytorch_folded": verify.torch_runner(folded),
        "onnxruntime": verify.ort_runner(verify.ort_session(path)),
    }
    numpy_ref = _numpy_reference(run)
    if not isinstance(numpy_ref, str):
        runners["numpy"] = numpy_ref
    out, _ = verify.collect(run.valid, run.spec, runners, limits={"numpy": NUMPY_MAX_SAMPLES})
    comparisons = [verify.judge(verify.compare(out, k, "pytorch"), atol) for k in runners if k != "pytorch"]
    if isinstance(numpy_ref, str):
        comparisons.append(verify.skipped("numpy", "pytorch", numpy_ref))
        log(f"verify: NumPy reference skipped: {numpy_ref}")
    for c in comparisons:
        if c.max_abs_diff is not None:
            log(f"verify: {c.candidate} vs pytorch on {c.samples} images: max |Δ| = {c.max_abs_diff:.3g}, "
                f"top-1 agreement {c.top1_agreement:.4f}, accuracy {c.accuracy:.4f} ({c.status})")
    if problems := verify.failures(comparisons):
        raise VerificationFailed("verification failed: " + "; ".join(problems))
    by_name = {f"{c.reference}_vs_{c.candidate}": c.to_dict() for c in comparisons}
    ort_cmp = by_name["pytorch_vs_onnxruntime"]
    doc = {
        "passed": True, "variant": "fp32", "atol": atol, "samples": len(out.labels),
        "batch_sizes": ort_cmp["batch_sizes"],
        "batchnorm_nodes": batchnorm_nodes(onnx.load(str(path), load_external_data=False)),
        "max_abs_diff": ort_cmp["max_abs_diff"], "top1_agreement": ort_cmp["top1_agreement"],
        "accuracy": {"pytorch": verify.accuracy(out.logits["pytorch"], out.labels),
                     **{c.candidate: c.accuracy for c in comparisons if c.accuracy is not None}},
        "comparisons": by_name,
        "runner_seconds": {k: round(v, 3) for k, v in out.seconds.items()},
        "onnxruntime": {"version": ort.__version__, "providers": ["CPUExecutionProvider"],
                        "graph_optimization_level": "ORT_ENABLE_ALL"},
    }
    return doc, out


def _quantize(run: Run, fp32_path: Path, int8_path: Path, fp32_out: verify.Outputs, max_drop: float,
              golden_inputs: np.ndarray, log: Log) -> tuple[dict[str, Any], np.ndarray, float]:
    """INT8 model of ``fp32_path``, judged against the FP32 onnxruntime model on the validation set."""
    from training.quantize import quantize_int8

    calibration = run.train if len(run.train) else run.valid
    if not len(run.train):
        log("quantize: data.json lists no training images; calibrating on the validation set")
    t = time.perf_counter()
    used = quantize_int8(fp32_path, int8_path, calibration, run.spec)
    log(f"quantize: INT8 QDQ model calibrated on {used} images in {time.perf_counter() - t:.1f} s")
    int8 = verify.ort_session(int8_path)
    reference = verify.ort_session(int8_path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    got, _ = verify.collect(run.valid, run.spec, {"int8": verify.ort_runner(int8)})
    out = verify.Outputs(got.labels, {"int8": got.logits["int8"], "fp32": fp32_out.logits["onnxruntime"]},
                         {"int8": got.single["int8"], "fp32": fp32_out.single["onnxruntime"]}, got.seconds)
    cmp = verify.compare(out, "int8", "fp32")
    drop = cmp.reference_accuracy - cmp.accuracy
    log(f"quantize: accuracy {cmp.accuracy:.4f} (FP32 {cmp.reference_accuracy:.4f}, drop {drop * 100:+.2f} points), "
        f"top-1 agreement {cmp.top1_agreement:.4f}")
    if not drop <= max_drop:
        raise VerificationFailed(f"int8 vs fp32: accuracy drop {drop * 100:.2f} points > max_int8_drop "
                                 f"{max_drop * 100:.2f} points (int8 {cmp.accuracy:.4f}, fp32 "
                                 f"{cmp.reference_accuracy:.4f}, top-1 agreement {cmp.top1_agreement:.4f})")
    golden_logits = verify.ort_runner(int8)(golden_inputs)
    # The same QDQ graph without onnxruntime's integer-kernel fusions: how far another runtime may land.
    kernel_gap = float(np.abs(verify.ort_runner(reference)(golden_inputs) - golden_logits).max())
    golden_atol = max(INT8_GOLDEN_FACTOR * kernel_gap, INT8_GOLDEN_FLOOR * float(np.abs(golden_logits).max()), 1e-4)
    cmp.status = "passed"
    doc = {
        "passed": True, "variant": "int8", "samples": cmp.samples, "batch_sizes": cmp.batch_sizes,
        "batchnorm_nodes": batchnorm_nodes(onnx.load(str(int8_path))),
        "accuracy": {"int8": cmp.accuracy, "fp32": cmp.reference_accuracy}, "accuracy_drop": drop,
        "top1_agreement": cmp.top1_agreement, "max_int8_drop": max_drop, "golden_atol": golden_atol,
        "max_abs_diff": cmp.max_abs_diff,  # informative only: INT8 logits are not expected to match FP32's
        "calibration_samples": used, "kernel_vs_reference_max_abs_diff": kernel_gap,
        "comparisons": {"fp32_vs_int8": cmp.to_dict()},
        "quantization": {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                         "calibration": "MinMax", "tool": f"onnxruntime {ort.__version__}"},
    }
    return doc, golden_logits, golden_atol


def _optimize(model_path: Path, target: Path, inputs: np.ndarray, expected: np.ndarray, golden_atol: float,
              log: Log) -> dict[str, Any]:
    """Save onnxruntime's optimized graph (EXTENDED: fusions, no hardware-specific layouts) and check it."""
    verify.ort_session(model_path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized_path=target)
    got = verify.ort_runner(verify.ort_session(target))(inputs)
    diff = float(np.abs(got - expected).max())
    if not diff <= golden_atol:
        raise VerificationFailed(f"{target.name} vs golden logits: max_abs_diff {diff:.3g} > {golden_atol:.3g}")
    log(f"optimize: {target.name} saved, max |Δ| on golden inputs = {diff:.3g}")
    return {"file": target.name, "sha256": sha256(target), "level": "ORT_ENABLE_EXTENDED",
            "onnxruntime": ort.__version__, "providers": ["CPUExecutionProvider"], "golden_max_abs_diff": diff}
