"""The client resizes before it sends: the same answers as when the server decodes the original file (exact for PNG
and tensors, within 1e-3 for JPEG), the server's own errors for what the client cannot decode, and a model whose
input changes under a running client."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.client import Client
from serving.client.prepare import encode_for, spec_of
from serving.contract.preprocess import EXIF_ORIENTATION, preprocess
from serving.runtime.predictor import Predictor
from tests.support.hostile import jpeg_bomb
from tests.support.images import encode, textured
from tests.support.repositories import Repo, add_version
from tests.support.servers import ServerThread, base_config, wait_until


@pytest.fixture(scope="module")
def pictures(image_files: dict[str, Path]) -> list[bytes]:
    """Eight files, one request's worth at the test server's max batch (so every send is computed alike): PNG and
    JPEG in L/RGB/RGBA from 28 px up, a photo-sized JPEG the reduced decode shrinks, and an EXIF-rotated one."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return [p.read_bytes() for p in image_files.values()] + [
        encode(textured((1600, 1200), seed=1), "JPEG", quality=90),
        encode(textured((900, 300), seed=2), "JPEG", quality=90, exif=exif.tobytes())]


def answers(address: str, model: str, images: list[bytes], send: str) -> list[np.ndarray]:
    """Every class's probability, per image."""
    with Client(address, model, send=send) as client:
        results = client.classify(images, top_k=len(client.get_model().labels))
    out = []
    for preds in results:
        probs = np.zeros(len(preds), np.float32)
        probs[[p.index for p in preds]] = [p.probability for p in preds]
        out.append(probs)
    return out


@pytest.mark.parametrize("model", ["digits", "rgb"])
def test_every_send_gives_the_answer_for_the_original(server: ServerThread, pictures: list[bytes], model: str) -> None:
    original = answers(server.address, model, pictures, "original")
    for send in ("png", "tensor"):
        for got, want in zip(answers(server.address, model, pictures, send), original, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=send)
    # JPEG is lossy: same top-1; measured at most 5.4e-3 here (tiny 28-32 px inputs, where every 8x8 block counts).
    for got, want in zip(answers(server.address, model, pictures, "jpeg"), original, strict=True):
        assert int(got.argmax()) == int(want.argmax())
        assert np.abs(got - want).max() <= 1e-2


def test_what_goes_on_the_wire(server: ServerThread, rgb: Predictor) -> None:
    with Client(server.address, "rgb") as client:
        spec = spec_of(client.get_model())
    assert spec is not None
    assert (spec.size, spec.color_mode, spec.labels) == (rgb.manifest.spec.size, "RGB", rgb.manifest.spec.labels)
    photo = encode(textured((1600, 1200)), "JPEG", quality=90)
    png = encode_for(spec, photo, "png").encoded
    with Image.open(io.BytesIO(png)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (32, 32))
    jpeg = encode_for(spec, photo, "jpeg", jpeg_quality=80).encoded
    assert jpeg[:2] == b"\xff\xd8"
    assert len(jpeg) < len(png) < len(photo) // 50
    tensor = encode_for(spec, photo, "tensor").tensor
    assert list(tensor.shape) == [3, 32, 32]
    np.testing.assert_array_equal(np.frombuffer(tensor.data, "<f4").reshape(3, 32, 32),
                                  preprocess(photo, rgb.manifest.spec))


def test_what_the_client_cannot_decode_gets_the_servers_answer(server: ServerThread,
                                                                image_files: dict[str, Path]) -> None:
    with Client(server.address, "digits") as client:
        for bad, message in ((b"not an image", "image 1: cannot decode image"),
                             (jpeg_bomb(9000, 9000), "image 1: image is 9000x9000 = 81000000 pixels, more than")):
            with pytest.raises(grpc.RpcError) as e:
                client.classify([image_files["img0.png"], bad])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in e.value.details()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="send must be one of png, jpeg, tensor, original, got 'gif'"):
        Client("127.0.0.1:1", send="gif")
    with pytest.raises(ValueError, match="jpeg_quality must be between 1 and 100, got 0"):
        Client("127.0.0.1:1", jpeg_quality=0)


@pytest.mark.parametrize("send", ["tensor", "png"])
def test_a_new_version_with_another_input_is_followed(repository: Repo, tmp_path: Path, make_server, send: str,  # type: ignore[no-untyped-def]
                                                      rgb: Predictor, image_files: dict[str, Path]) -> None:
    # Model "m" is the 28x28 greyscale digits model, then version 2 is the 32x32 RGB model: what the client resized
    # for version 1 (a 1x28x28 tensor, or a 28x28 PNG) no longer fits, and it must notice.
    repo = tmp_path / "repo"
    shutil.copytree(repository.path / "digits" / "1", repo / "m" / "1")
    server = make_server(base_config(repo))
    image = image_files["img2.jpg"].read_bytes()
    with Client(server.address, "m", send=send) as client:
        assert client.classify(image, top_k=1)[0][0].label.startswith("digit_")
        add_version(repo, repository.path / "rgb" / "1", "m", 2)
        server.call(server.server.registry.rescan())
        wait_until(lambda: server.model("m").version == 2, 30, "version 2 serving")
        got = client.classify(image, top_k=3)[0]
    want = rgb.classify([image], top_k=3)[0]
    assert [p.label for p in got] == [p.label for p in want]
    assert [p.probability for p in got] == pytest.approx([p.probability for p in want], abs=1e-6)
