"""``model.json``: what the exporter wrote about a model version, read and checked once at load.

Only JSON is read here (never pickle). A missing or mistyped field is a ``ModelRejected`` naming the field, so a
broken folder is refused with a reason instead of failing later inside a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ModelRejected
from serving.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: int
    labels: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, int, int]          # (C, H, W)
    output_name: str
    num_classes: int
    spec: PreprocessSpec
    onnx_sha256: str
    golden_atol: float
    arch: str = ""
    variant: str = "fp32"
    created: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelManifest:
        try:
            inp, out = d["input"], d["output"]
            labels = tuple(str(label) for label in d["labels"])
            spec = PreprocessSpec.from_dict({**d["preprocess"], "labels": labels})
            manifest = cls(
                name=str(d["name"]), version=int(d["version"]), labels=labels,
                input_name=str(inp["name"]),
                input_shape=(int(inp["channels"]), int(inp["height"]), int(inp["width"])),
                output_name=str(out["name"]), num_classes=int(out["classes"]), spec=spec,
                onnx_sha256=str(d["onnx_sha256"]).lower(), golden_atol=float(d["golden_atol"]),
                arch=str(d.get("arch", "")), variant=str(d.get("variant", "fp32")), created=str(d.get("created", "")),
                verification=dict(d.get("verification") or {}), raw=d,
            )
        except KeyError as e:
            raise ModelRejected(f"model.json: missing field {e}") from None
        except (TypeError, ValueError) as e:
            raise ModelRejected(f"model.json: {e}") from None
        manifest._check()
        return manifest

    def _check(self) -> None:
        inp = self.raw.get("input") or {}
        dtype, layout = inp.get("dtype", "float32"), inp.get("layout", "NCHW")
        if (dtype, layout) != ("float32", "NCHW"):
            raise ModelRejected(f"model.json: input must be float32 NCHW, got {dtype} {layout}")
        if self.spec.input_shape != self.input_shape:
            raise ModelRejected(f"model.json: preprocess gives {self.spec.input_shape}, input is {self.input_shape}")
        if len(self.labels) != self.num_classes:
            raise ModelRejected(f"model.json: {len(self.labels)} labels for {self.num_classes} classes")
        if self.golden_atol <= 0:
            raise ModelRejected(f"model.json: golden_atol must be > 0, got {self.golden_atol}")

    @classmethod
    def load(cls, path: str | Path) -> ModelManifest:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ModelRejected(f"cannot read {Path(path).name}: {e}") from None
        if not isinstance(d, dict):
            raise ModelRejected(f"{Path(path).name} must hold a JSON object")
        return cls.from_dict(d)
