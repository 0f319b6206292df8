"""``model.json``: the one description of a model version, written by the exporter and read by the server.

Both sides go through :class:`ModelManifest`, so the file cannot say something one side writes and the other does not
read. Only JSON is read here (never pickle). A missing or mistyped field is a ``ModelRejected`` naming the field, so a
broken folder is refused with a reason instead of failing later inside a request; :meth:`ModelManifest.save` runs
the same checks, so the exporter cannot publish a manifest the server would refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.contract.preprocess import PreprocessSpec
from serving.errors import ModelRejected

FILE = "model.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPLAIN_FILE = "explain.onnx"
CAM_OUTPUT = "cam"
STAGE_PREFIX = "stage."  # explain.onnx names its feature-map outputs stage.<module name>


@dataclass(frozen=True)
class ExplainGraph:
    """The second graph an exported version may carry (``explain.onnx``): the same folded network with more
    outputs — ``logits``, each stage's feature map (``stages``, in order), and, when the head is global-average-pool
    + one linear layer, ``cam``: the class activation maps (N, classes, h, w) of the last feature map. The served
    ``model.onnx`` is untouched; this one runs only when somebody asks for an explanation."""

    sha256: str
    stages: tuple[str, ...]
    cam: bool
    file: str = EXPLAIN_FILE

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplainGraph:
        return cls(sha256=str(d["sha256"]).lower(), stages=tuple(str(s) for s in d["stages"]), cam=bool(d["cam"]),
                   file=str(d.get("file", EXPLAIN_FILE)))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "stages": list(self.stages), "cam": self.cam}


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: int
    labels: tuple[str, ...]
    spec: PreprocessSpec
    onnx_sha256: str
    golden_atol: float
    input_shape: tuple[int, int, int]          # (C, H, W)
    num_classes: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_dtype: str = "float32"
    input_layout: str = "NCHW"
    arch: str = ""
    variant: str = "fp32"
    opset: int = 0
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)        # the training run and its metrics
    verification: dict[str, Any] = field(default_factory=dict)  # summary of verification.json
    producer: dict[str, Any] = field(default_factory=dict)      # library versions that built the file
    optimized: dict[str, Any] | None = None                     # the onnxruntime-optimized copy, if saved
    explain: ExplainGraph | None = None                         # the graph behind explanations, if exported

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelManifest:
        try:
            inp, out = d["input"], d["output"]
            labels = tuple(str(label) for label in d["labels"])
            manifest = cls(
                name=str(d["name"]), version=int(d["version"]), labels=labels,
                spec=PreprocessSpec.from_dict({**d["preprocess"], "labels": labels}),
                onnx_sha256=str(d["onnx_sha256"]).lower(), golden_atol=float(d["golden_atol"]),
                input_shape=(int(inp["channels"]), int(inp["height"]), int(inp["width"])),
                num_classes=int(out["classes"]), input_name=str(inp["name"]), output_name=str(out["name"]),
                input_dtype=str(inp.get("dtype", "float32")), input_layout=str(inp.get("layout", "NCHW")),
                arch=str(d.get("arch", "")), variant=str(d.get("variant", "fp32")), opset=int(d.get("opset", 0)),
                created=str(d.get("created", "")), source=dict(d.get("source") or {}),
                verification=dict(d.get("verification") or {}), producer=dict(d.get("producer") or {}),
                optimized=dict(d["optimized"]) if d.get("optimized") else None,
                explain=ExplainGraph.from_dict(d["explain"]) if d.get("explain") else None,
            )
        except KeyError as e:
            raise ModelRejected(f"{FILE}: missing field {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelRejected(f"{FILE}: {e}") from None
        manifest.check()
        return manifest

    def to_dict(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        doc = {
            "name": self.name, "version": self.version, "arch": self.arch, "labels": list(self.labels),
            "input": {"name": self.input_name, "layout": self.input_layout, "dtype": self.input_dtype,
                      "channels": c, "height": h, "width": w},
            "output": {"name": self.output_name, "dtype": "float32", "classes": self.num_classes},
            "preprocess": self.spec.to_dict(), "onnx_sha256": self.onnx_sha256, "opset": self.opset,
            "variant": self.variant, "golden_atol": self.golden_atol, "source": self.source,
            "verification": self.verification, "created": self.created, "producer": self.producer,
        }
        if self.optimized is not None:
            doc["optimized"] = self.optimized
        if self.explain is not None:
            doc["explain"] = self.explain.to_dict()
        return doc

    def check(self) -> None:
        """``ModelRejected`` unless the fields agree with each other and with what the server can run."""
        if (self.input_dtype, self.input_layout) != ("float32", "NCHW"):
            raise ModelRejected(f"{FILE}: input must be float32 NCHW, got {self.input_dtype} {self.input_layout}")
        if self.spec.input_shape != self.input_shape:
            raise ModelRejected(f"{FILE}: preprocess gives {self.spec.input_shape}, input is {self.input_shape}")
        if len(self.labels) != self.num_classes:
            raise ModelRejected(f"{FILE}: {len(self.labels)} labels for {self.num_classes} classes")
        if not self.golden_atol > 0:
            raise ModelRejected(f"{FILE}: golden_atol must be > 0, got {self.golden_atol}")
        if self.explain is not None and Path(self.explain.file).name != self.explain.file:
            raise ModelRejected(f"{FILE}: explain.file must be a file name in the version folder, got "
                                f"{self.explain.file!r}")

    @classmethod
    def load(cls, path: str | Path) -> ModelManifest:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ModelRejected(f"cannot read {Path(path).name}: {e}") from None
        if not isinstance(d, dict):
            raise ModelRejected(f"{Path(path).name} must hold a JSON object")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        self.check()
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
