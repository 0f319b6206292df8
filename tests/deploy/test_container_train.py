"""The train image, built and run by a Docker engine (skipped without one): it trains the bundled digits and exports
into a named volume, which the serve image then serves.

One epoch with a fixed learning rate (no lr_find) and one torch thread keeps the run to about a minute and a half on
two busy cores: what is tested is the image — its user, its command, the volume's ownership, the hand-over to the
server — not the accuracy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest

from deploy.images import Docker
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from tests.support.containers import Container
from tests.support.images import draw_image, encode
from tests.support.servers import classify_request

pytestmark = pytest.mark.slow

QUICK = {"TRAIN_EPOCHS": "1", "TRAIN_ARGS": "--lr 0.01 --no-plots", "TRAIN_THREADS": "1"}


@pytest.fixture
def volume(docker: Docker) -> Iterator[str]:
    name = f"resnet-serving-test-{uuid.uuid4().hex[:8]}"
    docker.run("volume", "create", name)
    yield name
    docker.run("volume", "rm", "--force", name)


def train(docker: Docker, image: str, volume: str) -> str:
    env = [a for k, v in QUICK.items() for a in ("--env", f"{k}={v}")]
    result = docker.run("run", "--rm", "--volume", f"{volume}:/model_repository", *env, image, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_train_image_trains_into_a_volume_that_the_serve_image_serves(docker: Docker, train_image: str,
                                                                       serve_image: str, volume: str) -> None:
    out = train(docker, train_image, volume)
    assert "train.sh: training digits on digits" in out
    listing = docker.run("run", "--rm", "--volume", f"{volume}:/model_repository:ro", serve_image,
                         "python", "-c", "import json, pathlib; v = pathlib.Path('/model_repository/digits/1'); "
                         "print(json.dumps([sorted(p.name for p in v.iterdir()), "
                         "json.loads((v / 'verification.json').read_text())['passed']]))")
    files, passed = json.loads(listing.stdout)
    assert {"model.onnx", "model.json", "verification.json", "golden.npz"} <= set(files)
    assert passed is True

    server = Container.start(docker, serve_image, "--read-only", "--tmpfs", "/tmp",
                             "--volume", f"{volume}:/model_repository:ro", "--publish", "127.0.0.1::8001")
    try:
        server.wait_healthy(timeout=60)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port(8001)}")
        client = ic_grpc.ImageClassifierStub(channel)
        model = client.GetModel(ic_pb2.GetModelRequest(name="digits"), timeout=10)
        assert list(model.labels) == [str(d) for d in range(10)]
        reply = client.Classify(classify_request(encode(draw_image(1, (28, 28), "L"))), timeout=30)
        assert len(reply.results[0].predictions) == 3
    finally:
        server.remove()
    # Compose starts the trainer on every `up`: with a model in the volume it exits 0 at once.
    again = docker.run("run", "--rm", "--volume", f"{volume}:/model_repository", train_image, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already holds a model" in again.stdout
