"""Explanations end to end: CAM from the exported explain graph equals CAM computed from the PyTorch model, the
occlusion map of an image with known evidence peaks on it, both transports answer alike, bad requests get one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch

from models import registry
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.contract.preprocess import PreprocessSpec, preprocess
from serving.runtime import explain
from serving.runtime.loader import read_manifest
from tests.support.images import encode
from tests.support.repositories import Repo, patch_detector
from tests.support.servers import ServerThread, base_config, call


def _torch_cam(run: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, CAM) of the run's PyTorch model, computed here from its own modules: W_fc · last feature map."""
    model = registry.load_checkpoint(run / "model.pth")[0].eval()
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(x))
        cams = torch.einsum("kc,nchw->nkhw", model.fc.weight, features)
        return model(torch.from_numpy(x)).numpy(), cams.numpy()


@pytest.mark.parametrize("name", ["digits", "rgb"])
def test_cam_from_onnxruntime_equals_cam_from_pytorch(repository: Repo, name: str) -> None:
    run = repository.runs[name]
    version = repository.path / name / "1"
    manifest = read_manifest(version)
    assert manifest.explain is not None
    assert manifest.explain.cam
    spec = PreprocessSpec.load(run / "spec.json")
    data = json.loads((run / "data.json").read_text())
    x = np.stack([preprocess(Path(data["root"]) / path, spec) for path, _ in data["valid"]])
    outputs = explain.ExplainSession(version, manifest.explain).run(x)
    logits, cams = _torch_cam(run, x)
    assert outputs["cam"].shape == cams.shape
    assert float(np.abs(outputs["cam"] - cams).max()) <= 1e-4
    assert float(np.abs(outputs["logits"] - logits).max()) <= 1e-4
    # CAM decomposes the answer: its mean over positions plus the bias is the logit.
    bias = registry.load_checkpoint(run / "model.pth")[0].fc.bias.detach().numpy()
    np.testing.assert_allclose(outputs["cam"].mean(axis=(2, 3)) + bias, outputs["logits"], atol=1e-4)


@pytest.fixture(scope="module")
def explain_server(serving_repo: Repo, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """digits (explain graph with CAM), fastai (fastai's head: stages, no CAM), patch (hand-built, no graph)."""
    from tests.support.repositories import export_model
    from tests.support.runs import DIGITS_LABELS, make_run

    root = tmp_path_factory.mktemp("explain")
    path = root / "repository"
    shutil.copytree(serving_repo.path / "digits", path / "digits")
    patch_detector(path)
    export_model(make_run(root / "runs" / "fastai", "resnet20", DIGITS_LABELS, in_chans=1, size=28, seed=3,
                          n_train=4, n_valid=8, head="fastai"), path, "fastai")
    server = ServerThread(base_config(path, models=("digits", "patch", "fastai"))).start()
    yield server
    server.close()


def _bright_patch(top: int, left: int, size: int = 28) -> bytes:
    from PIL import Image

    pixels = np.full((size, size), 25, np.uint8)
    pixels[top:top + 5, left:left + 5] = 255
    return encode(Image.fromarray(pixels, "L"), "PNG")


def test_get_model_says_what_explain_offers(explain_server: ServerThread) -> None:
    models = {m["name"]: m for m in httpx.get(f"{explain_server.http_url}/v1/models").json()["models"]}
    offers = {name: (m["explain_methods"], m["stages"]) for name, m in models.items()}
    assert offers == {"digits": (["cam", "occlusion"], ["layer1", "layer2", "layer3"]),
                      "fastai": (["occlusion"], ["layer1", "layer2", "layer3"]),
                      "patch": (["occlusion"], [])}


def test_occlusion_peaks_on_the_patch_that_decides(explain_server: ServerThread) -> None:
    for top, left in ((4, 4), (12, 16), (20, 8)):
        answer = httpx.post(f"{explain_server.http_url}/v1/models/patch/explain", content=_bright_patch(top, left))
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert (found["method"], found["label"]) == ("occlusion", "bright")
        heat = np.array(found["heatmap"]["values"]).reshape(found["heatmap"]["height"], found["heatmap"]["width"])
        assert heat.shape == (7, 7)
        i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
        cell = 28 / 7  # the grid's cells: rows [i*4, i*4+4)
        overlaps = i * cell < top + 5 and top < (i + 1) * cell and j * cell < left + 5 and left < (j + 1) * cell
        assert overlaps, (top, left, i, j)
        # Far from the patch, blanking changes nothing.
        assert heat[(i + 4) % 7, (j + 4) % 7] < 0.05


def test_grpc_and_http_explanations_agree(explain_server: ServerThread, image_files: dict[str, Path]) -> None:
    png = image_files["img0.png"].read_bytes()
    http = httpx.post(f"{explain_server.http_url}/v1/models/digits/explain", params={"stages": 1, "class": 3},
                      content=png).json()
    with grpc.insecure_channel(explain_server.address) as channel:
        answer = ic_grpc.ImageClassifierStub(channel).Explain(ic_pb2.ExplainRequest(
            model="digits", image=ic_pb2.Image(encoded=png), class_index=3, stages=True), timeout=30)
    assert (answer.method, answer.class_index, http["method"], http["class_index"]) == ("cam", 3, "cam", 3)
    np.testing.assert_array_equal(np.float32(http["heatmap"]["values"]), np.float32(answer.heatmap.values))
    assert [s.name for s in answer.stages] == ["layer1", "layer2", "layer3"]
    assert len(answer.stages[0].values) == answer.stages[0].channels * answer.stages[0].height * \
        answer.stages[0].width
    values = np.array(answer.heatmap.values)
    assert values.min() >= 0.0
    assert values.max() == (1.0 if answer.heatmap.raw_max > 0 else 0.0)  # scaled to [0, 1], or no evidence at all


def test_fastai_head_gets_stages_and_occlusion(explain_server: ServerThread, image_files: dict[str, Path]) -> None:
    png = image_files["img0.png"].read_bytes()
    answer = httpx.post(f"{explain_server.http_url}/v1/models/fastai/explain", params={"stages": 1}, content=png)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["method"] == "occlusion"  # no CAM for fastai's head: the default is occlusion
    assert [s["name"] for s in found["stages"]] == ["layer1", "layer2", "layer3"]
    refused = httpx.post(f"{explain_server.http_url}/v1/models/fastai/explain", params={"method": "cam"},
                         content=png)
    assert refused.status_code == 400
    assert refused.json()["error"] == ("model 'fastai': its head is not global-average-pool + linear, so it has no "
                                       "class activation map; use method 'occlusion'")


ERRORS = [
    ("digits", {"class": 10}, "class_index 10 is out of range: model 'digits' has 10 classes (0-9)"),
    ("digits", {"class": -1}, "class_index -1 is out of range"),
    ("digits", {"method": "gradcam"}, "unknown method 'gradcam'; choose one of cam, occlusion"),
    ("digits", {"top_k": 11}, "top_k must be between 1 and 10"),
    ("patch", {"method": "cam"}, "model 'patch' version 1 has no explain graph, which method 'cam' needs"),
    ("patch", {"stages": 1}, "model 'patch' version 1 has no explain graph, which stages needs"),
]


@pytest.mark.parametrize(("model", "query", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_bad_explain_requests_get_one_line(explain_server: ServerThread, image_files: dict[str, Path], model: str,
                                            query: dict, message: str) -> None:
    answer = httpx.post(f"{explain_server.http_url}/v1/models/{model}/explain", params=query,
                        content=image_files["img0.png"].read_bytes())
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(message)


def test_an_image_the_model_refuses(explain_server: ServerThread) -> None:
    answer = httpx.post(f"{explain_server.http_url}/v1/models/digits/explain", content=b"GIF89a broken")
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("image 0: cannot decode image")
    with grpc.insecure_channel(explain_server.address) as channel:
        code, details, _ = call(lambda: ic_grpc.ImageClassifierStub(channel).Explain(
            ic_pb2.ExplainRequest(model="digits"), timeout=10))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "image 0 is empty: set encoded or tensor")


def test_explaining_leaves_the_served_answers_unchanged(explain_server: ServerThread,
                                                        image_files: dict[str, Path],
                                                        digits_probabilities: Callable[[bytes], list]) -> None:
    png = image_files["img3.jpg"].read_bytes()
    before = digits_probabilities(png)
    httpx.post(f"{explain_server.http_url}/v1/models/digits/explain", params={"stages": 1}, content=png)
    httpx.post(f"{explain_server.http_url}/v1/models/digits/explain", params={"method": "occlusion"}, content=png)
    assert digits_probabilities(png) == before


@pytest.fixture
def digits_probabilities(explain_server: ServerThread) -> Callable[[bytes], list]:
    def classify(png: bytes) -> list:
        return httpx.post(f"{explain_server.http_url}/v1/models/digits/classify", params={"top_k": 10},
                          content=png).json()["results"][0]["predictions"]
    return classify
