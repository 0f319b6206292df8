"""Loading one model version from the repository (``serving.contract.layout``) into a checked predictor.

Loading is a chain of checks, each refusing the model with a reason (``ModelRejected``):
1. ``model.json`` parses and is consistent (``serving.contract.manifest``);
2. the sha256 of ``model.onnx`` equals ``model.json``'s ``onnx_sha256`` — computed on the very bytes that are then
   handed to onnxruntime, so the file cannot change between the check and the load;
3. the session's input/output names and shapes match ``model.json``;
4. the golden self-check: ``golden.npz`` (read with ``allow_pickle=False``) inputs are re-run and every logit must
   stay within ``golden_atol`` of the stored reference.
Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.contract.layout import select
from serving.contract.manifest import ModelManifest
from serving.contract.preprocess import DEFAULT_MAX_PIXELS
from serving.errors import ModelRejected
from serving.runtime.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoldenResult:
    samples: int
    max_abs_diff: float
    atol: float


@dataclass
class LoadedModel:
    """A predictor that passed every load-time check, with what the checks measured."""

    predictor: Predictor
    golden: GoldenResult
    path: Path
    verification: dict[str, Any] = field(default_factory=dict)


def read_verified_onnx(version_dir: Path, manifest: ModelManifest) -> bytes:
    """The bytes of ``model.onnx``, after checking their sha256 against ``model.json``."""
    try:
        data = (version_dir / "model.onnx").read_bytes()
    except OSError as e:
        raise ModelRejected(f"cannot read model.onnx: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.onnx_sha256:
        raise ModelRejected(f"model.onnx sha256 is {digest}, model.json says {manifest.onnx_sha256}: file changed")
    return data


def read_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``golden.npz``'s ``inputs`` and ``logits``, read without unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            inputs, logits = npz["inputs"], npz["logits"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ModelRejected(f"cannot read {path.name}: {e}") from None
    if inputs.ndim != 4 or logits.ndim != 2 or len(inputs) != len(logits) or len(inputs) == 0:
        raise ModelRejected(f"{path.name}: inputs {inputs.shape} and logits {logits.shape} do not pair up")
    return inputs.astype(np.float32, copy=False), logits.astype(np.float32, copy=False)


def golden_check(predictor: Predictor, path: Path, atol: float) -> GoldenResult:
    """Re-run the stored inputs on every instance; ``ModelRejected`` unless every logit is within ``atol`` of the
    reference."""
    inputs, expected = read_golden(path)
    if expected.shape[1] != predictor.num_classes:
        raise ModelRejected(f"{path.name}: {expected.shape[1]} logits per sample, the model has "
                            f"{predictor.num_classes} classes")
    diffs = []
    for instance in range(predictor.instances):
        try:
            got = predictor.run(inputs, instance=instance)
        except Exception as e:  # a wrong shape in the file, or onnxruntime failing on this model
            raise ModelRejected(f"golden self-check could not run: {e}") from None
        diffs.append(np.max(np.abs(got.astype(np.float64) - expected)) if got.shape == expected.shape else np.inf)
    diff = float(np.max(diffs))  # NaN if any instance gave NaN
    if not diff <= atol:  # written this way round so that NaN fails too
        raise ModelRejected(f"golden self-check failed: max |logit - reference| = {diff:.3g} > golden_atol {atol:g} "
                            f"over {len(inputs)} samples")
    return GoldenResult(samples=len(inputs), max_abs_diff=diff, atol=atol)


def read_manifest(version_dir: Path) -> ModelManifest:
    return ModelManifest.load(version_dir / "model.json")


def read_verification(version_dir: Path) -> dict[str, Any]:
    """``verification.json`` if present (informational: the golden check is what gates serving)."""
    path = version_dir / "verification.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_model(version_dir: str | Path, *, device: str = "cpu", threads: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, manifest: ModelManifest | None = None,
               instances: int = 1) -> LoadedModel:
    """Run every load-time check on one ``NAME/VERSION`` folder and return the ready predictor."""
    version_dir = Path(version_dir)
    manifest = manifest or read_manifest(version_dir)
    data = read_verified_onnx(version_dir, manifest)
    try:
        predictor = Predictor(data, manifest, device=device, threads=threads, max_pixels=max_pixels,
                              instances=instances)
    except ModelRejected:
        raise
    except Exception as e:  # onnxruntime refusing the graph
        raise ModelRejected(f"onnxruntime cannot load model.onnx: {e}") from None
    golden = golden_check(predictor, version_dir / "golden.npz", manifest.golden_atol)
    verification = {**read_verification(version_dir), **manifest.verification}  # model.json's summary wins
    log.info("loaded %s version %d: golden max|diff| %.2e <= %g on %d samples, providers %s", manifest.name,
             manifest.version, golden.max_abs_diff, golden.atol, golden.samples, predictor.providers)
    return LoadedModel(predictor=predictor, golden=golden, path=version_dir, verification=verification)


def load(root: str | Path, name: str, version: int | None = None, **kwargs: Any) -> LoadedModel:
    """Load ``name`` (latest version unless given) from a repository; used by the batch CLI and tests."""
    chosen = select(root, [name if version is None else f"{name}:{version}"])
    return load_model(Path(root) / name / str(chosen[name][0]), **kwargs)
