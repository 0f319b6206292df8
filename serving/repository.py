"""The model repository: ``ROOT/NAME/VERSION/`` folders written by ``python -m training export``.

Loading one version is a chain of checks, each refusing the model with a reason (``ModelRejected``):
1. ``model.json`` parses and is consistent (``serving.manifest``);
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

from serving.errors import ModelNotFound, ModelRejected
from serving.manifest import ModelManifest
from serving.predictor import Predictor
from serving.preprocess import DEFAULT_MAX_PIXELS

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


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit()`` also accepts '²' or '١', which ``int()`` refuses or reads differently."""
    return text.isascii() and text.isdigit()


def discover(root: str | Path) -> dict[str, list[int]]:
    """Model name → its versions, ascending: integer folders holding a ``model.json``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted(int(v.name) for v in model_dir.iterdir()
                          if v.is_dir() and _is_number(v.name) and (v / "model.json").is_file())
        if versions:
            found[model_dir.name] = versions
    return found


def fingerprint(version_dir: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of each file in a version folder: a refused version is retried only once it changed."""
    try:
        entries = sorted(Path(version_dir).iterdir())
    except OSError:
        return ()
    found = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:  # removed while we looked
            continue
        found.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(found)


def parse_selector(selector: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` (a pinned version)."""
    name, sep, version = selector.partition(":")
    if not name or (sep and not _is_number(version)):
        raise ValueError(f"model selector must be NAME or NAME:VERSION, got {selector!r}")
    return name, int(version) if sep else None


def select(root: str | Path, selectors: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[int, list[int]]]:
    """Which version of which model to serve: name → (chosen version, all versions). Latest unless pinned."""
    available = discover(root)
    if not selectors:
        return {name: (versions[-1], versions) for name, versions in available.items()}
    chosen: dict[str, tuple[int, list[int]]] = {}
    for selector in selectors:
        name, version = parse_selector(selector)
        if name not in available:
            raise ModelNotFound(f"model {name!r} is not in {root} (found: {', '.join(available) or 'nothing'})")
        versions = available[name]
        if version is not None and version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version} in {root} (found: {versions})")
        chosen[name] = (version if version is not None else versions[-1], versions)
    return chosen


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
    """Re-run the stored inputs; ``ModelRejected`` unless every logit is within ``atol`` of the reference."""
    inputs, expected = read_golden(path)
    if expected.shape[1] != predictor.num_classes:
        raise ModelRejected(f"{path.name}: {expected.shape[1]} logits per sample, the model has "
                            f"{predictor.num_classes} classes")
    try:
        got = predictor.run(inputs)
    except Exception as e:  # a wrong shape in the file, or onnxruntime failing on this model
        raise ModelRejected(f"golden self-check could not run: {e}") from None
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape else float("inf")
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
               max_pixels: int = DEFAULT_MAX_PIXELS, manifest: ModelManifest | None = None) -> LoadedModel:
    """Run every load-time check on one ``NAME/VERSION`` folder and return the ready predictor."""
    version_dir = Path(version_dir)
    manifest = manifest or read_manifest(version_dir)
    data = read_verified_onnx(version_dir, manifest)
    try:
        predictor = Predictor(data, manifest, device=device, threads=threads, max_pixels=max_pixels)
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
