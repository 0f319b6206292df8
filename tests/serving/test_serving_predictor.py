"""The Predictor against PyTorch: same image file → same probabilities (≤ 1e-5), and its input checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serving.contract.prediction import softmax, top_predictions
from serving.errors import InvalidInput
from serving.runtime import loader
from serving.runtime.predictor import Predictor
from tests.support.images import draw_image, encode
from tests.support.repositories import Repo


@pytest.mark.parametrize("model", ["digits", "rgb"])
def test_probabilities_match_pytorch(model: str, request: pytest.FixtureRequest, image_files: dict[str, Path],
                                     torch_reference) -> None:  # type: ignore[no-untyped-def]
    predictor: Predictor = request.getfixturevalue(model)
    paths = list(image_files.values())  # PNG and JPEG, L/RGB/RGBA, several sizes
    results = predictor.classify(paths, top_k=predictor.num_classes)
    for path, preds in zip(paths, results, strict=True):
        expected = torch_reference(model, path)
        got = np.zeros(predictor.num_classes)
        for p in preds:
            got[p.index] = p.probability
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(path))
        assert preds[0].index == int(np.argmax(expected))
        assert preds[0].label == predictor.labels[preds[0].index]


def test_paths_bytes_and_tensors_agree(digits: Predictor, image_files: dict[str, Path]) -> None:
    path = image_files["img2.jpg"]
    x = digits.preprocess(path)
    a, b, c = digits.classify([path, path.read_bytes(), x], top_k=3)
    assert a == b == c


def test_top_k_and_softmax() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [1000.0, 0.0, -1000.0, 0.0]], dtype=np.float32)
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert np.isfinite(probs).all()
    labels = ["a", "b", "c", "d"]
    first, second = top_predictions(logits, 2, labels)
    assert [p.label for p in first] == ["b", "d"]  # a tie keeps the lower index first
    assert second[0].label == "a"
    assert second[0].probability == pytest.approx(1.0)


@pytest.mark.parametrize(("k", "ok"), [(0, 5), (1, 1), (10, 10), (11, None), (-1, None)])
def test_top_k_bounds(digits: Predictor, k: int, ok: int | None) -> None:
    if ok is not None:
        assert digits.resolve_top_k(k) == ok
    else:
        with pytest.raises(InvalidInput, match=r"top_k must be between 1 and 10 \(the number of classes\), got "):
            digits.resolve_top_k(k)


def test_input_checks(digits: Predictor) -> None:
    with pytest.raises(InvalidInput, match=r"tensor shape must be \[1, 28, 28\] \(C, H, W\), got \[3, 28, 28\]"):
        digits.preprocess(np.zeros((3, 28, 28), np.float32))
    with pytest.raises(InvalidInput, match="tensor must be float32, got float64"):
        digits.preprocess(np.zeros((1, 28, 28)))
    with pytest.raises(InvalidInput, match=r"input shape must be \[N, 1, 28, 28\] with N >= 1, got \[0, 1, 28, 28\]"):
        digits.run(np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(InvalidInput, match="cannot decode image"):
        digits.preprocess(b"definitely not an image")


def test_decompression_bomb_is_invalid_input(repository: Repo) -> None:
    predictor = loader.load(repository.path, "digits", threads=1, max_pixels=100_000).predictor
    bomb = encode(draw_image(0, (1000, 1000), "L"), "PNG")  # small file, a megapixel
    with pytest.raises(InvalidInput, match="1000x1000 = 1000000 pixels, more than the limit of 100000"):
        predictor.preprocess(bomb)


def test_cuda_falls_back_to_cpu_with_a_warning(repository: Repo, caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback path is not taken")
    with caplog.at_level(logging.WARNING, logger="serving.runtime.predictor"):
        predictor = loader.load(repository.path, "digits", threads=1, device="cuda").predictor
    assert predictor.device == "cpu"
    assert predictor.providers == ["CPUExecutionProvider"]
    assert "onnxruntime has no CUDAExecutionProvider" in caplog.text
