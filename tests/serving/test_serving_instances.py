"""``--instances``: several onnxruntime sessions of one model, each computing its own batches, on a real server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving._generated import model_config_pb2 as config_pb2
from serving.config import ServerConfig
from serving.runtime import loader
from serving.runtime.predictor import instance_threads
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config, wait_until

MakeServer = Callable[..., ServerThread]


def test_a_second_instance_answers_while_the_first_is_held(make_server: MakeServer, serving_repo: Repo,
                                                           image_files: dict[str, Path]) -> None:
    """Two instances of one thread each: while one computes a held request, the other answers; ModelConfig counts
    them (Triton's instance_group)."""
    server = make_server(base_config(serving_repo.path, models=("digits",), threads=2, instances=2))
    batcher, predictor = server.model("digits").batcher, server.model("digits").predictor
    assert batcher is not None
    assert predictor is not None
    assert [s.get_session_options().intra_op_num_threads for s in predictor.sessions] == [1, 1]
    gate = threading.Event()
    plain = {id(instance): instance.run for instance in batcher.instances}
    for instance in batcher.instances:  # every instance waits for the gate before it computes
        instance.run = lambda x, run=instance.run: (gate.wait(30), run(x))[1]
    paths = list(image_files.values())
    request = ic_pb2.ClassifyRequest(model="digits", top_k=10, images=[ic_pb2.Image(encoded=p.read_bytes())
                                                                        for p in paths])
    with grpc.insecure_channel(server.address) as channel:
        stub = ic_grpc.ImageClassifierStub(channel)
        try:
            held = stub.Classify.future(request, timeout=30)
            wait_until(lambda: any(i.running for i in batcher.instances), 10, "the first request computing")
            other = next(i for i in batcher.instances if not i.running)
            other.run = plain[id(other)]  # the idle instance computes without waiting for the gate
            answered = stub.Classify(request, timeout=20)  # while the first request is still held
            assert not held.done()
        finally:
            gate.set()
        first = held.result()
        config = kserve_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
            kserve_pb2.ModelConfigRequest(name="digits"), timeout=10).config
    assert [(g.kind, g.count) for g in config.instance_group] == [(config_pb2.ModelInstanceGroup.KIND_CPU, 2)]
    expected = loader.load(serving_repo.path, "digits", threads=1).predictor.classify(paths, top_k=10)
    for response in (answered, first):
        for result, local in zip(response.results, expected, strict=True):
            assert [p.index for p in result.predictions] == [p.index for p in local]
            np.testing.assert_allclose([p.probability for p in result.predictions],
                                       [p.probability for p in local], atol=1e-6)


@pytest.mark.parametrize(("threads", "instances", "each"), [(None, 1, None), (4, 2, 2), (2, 3, 1), (5, 2, 2)])
def test_threads_are_split_between_instances(threads: int | None, instances: int, each: int | None) -> None:
    from serving.runtime.predictor import available_cores

    assert instance_threads(threads, instances) == (each or available_cores())


def test_zero_instances_is_refused(serving_repo: Repo) -> None:
    with pytest.raises(ValueError, match="--instances must be >= 1"):
        ServerConfig(repository=serving_repo.path, instances=0)
