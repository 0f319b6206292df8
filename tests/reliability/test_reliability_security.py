"""Security: nothing on the serving path unpickles (by reading the code, and by planting live pickles in a
repository and watching the server with a Python audit hook); message sizes are bounded both ways; dependency
versions are pinned. (Mutual TLS refusing certificates from another CA: tests/serving/test_serving_tls.py.)
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract.tensors import encode_bytes_elements
from tests.support.hostile import seed_images
from tests.support.images import encode
from tests.support.paths import ROOT
from tests.support.repositories import Repo, add_version
from tests.support.servers import ServerProcess, ServerThread, base_config, classify_request

# ---- the code never unpickles --------------------------------------------------------------------------------------

UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg",
                      "torch", "fastai", "yaml"}
UNPICKLING_CALLS = {"load_learner", "torch.load", "pickle.load", "pickle.loads", "eval", "exec"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unpickling_sites(source: str, filename: str = "<source>") -> list[str]:
    """Imports of pickle-family modules, unpickling calls, ``np.load`` without an explicit ``allow_pickle=False``
    and any ``allow_pickle=`` other than ``False``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{filename}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in UNPICKLING_MODULES]
            if isinstance(node, ast.ImportFrom):
                found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name in UNPICKLING_CALLS]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in UNPICKLING_CALLS or name.endswith(".load_learner"):
            found.append(f"{filename}:{node.lineno}: {name}()")
        pickle_kw = [k for k in node.keywords if k.arg == "allow_pickle"]
        if any(not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in pickle_kw):
            found.append(f"{filename}:{node.lineno}: allow_pickle other than False")
        if name in ("np.load", "numpy.load") and not pickle_kw:
            found.append(f"{filename}:{node.lineno}: np.load without allow_pickle=False")
    return found


def test_the_scanner_finds_unpickling() -> None:
    bad = ("import pickle\nfrom fastai.learner import load_learner\nimport numpy as np\nimport torch\n"
           "m = torch.load('m.pth')\nx = np.load('a.npz')\ny = np.load('a.npz', allow_pickle=True)\n"
           "z = pickle.loads(b'')\nlearn = load_learner('export.pkl')\n")
    found = unpickling_sites(bad)
    assert {int(site.split(":")[1]) for site in found} == {1, 2, 4, 5, 6, 7, 8, 9}, found  # line 3 is harmless
    assert unpickling_sites("import numpy as np\nx = np.load('a.npz', allow_pickle=False)\n") == []


def test_serving_code_never_unpickles() -> None:
    files = sorted((ROOT / "serving").rglob("*.py"))
    assert len(files) > 10
    found = [site for path in files for site in unpickling_sites(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, found
    text = "\n".join(p.read_text() for p in files)
    assert "allow_pickle=True" not in text
    assert re.search(r"\bnp\.load\(", text)  # golden.npz is read (with allow_pickle=False, checked above)


# ---- planted pickles are never executed ----------------------------------------------------------------------------

class Payload:
    """Unpickling this creates a file: proof of execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return open, (self.marker, "w")


AUDIT_HOOK = (
    "import os, sys\n"
    "def _audit(event, args, _log=os.environ['PICKLE_AUDIT_LOG']):\n"
    "    if event == 'pickle.find_class':\n"
    "        with open(_log, 'a') as f:\n"
    "            f.write(repr(args) + '\\n')\n"
    "sys.addaudithook(_audit)\n"
)
SERVE_UNDER_AUDIT = [sys.executable, "-c", AUDIT_HOOK + "from serving.cli import main\nsys.exit(main(sys.argv[1:]))"]


def plant(repo: Path, source: Path, marker: Path) -> None:
    """A good model with pickles lying around, a model whose golden.npz holds a pickled object array, and a folder
    holding nothing but a pickle."""
    payload = pickle.dumps(Payload(marker))
    add_version(repo, source, "digits", 1, lambda d: (d / "model.pkl").write_bytes(payload))
    (repo / "digits" / "1" / "model.pth").write_bytes(payload)

    def evil_golden(d: Path) -> None:
        logits = np.zeros((1, 10), np.float32)
        inputs = np.empty(1, dtype=object)
        inputs[0] = Payload(marker)
        np.savez(d / "golden.npz", inputs=inputs, logits=logits)  # np.savez pickles object arrays
        (d / "export.pkl").write_bytes(payload)

    add_version(repo, source, "evil", 1, evil_golden)
    (repo / "pickle-only" / "1").mkdir(parents=True)
    (repo / "pickle-only" / "1" / "model.pkl").write_bytes(payload)


def test_the_planted_payloads_are_live_and_the_audit_hook_sees_them(tmp_path: Path) -> None:
    """Controls for the next test: the payloads really execute when unpickled, and the hook records it."""
    marker, log = tmp_path / "control-marker", tmp_path / "audit.log"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    np.savez(tmp_path / "g.npz", inputs=np.array([Payload(marker)], dtype=object))
    with np.load(tmp_path / "g.npz", allow_pickle=True) as npz:
        npz["inputs"]
    assert marker.exists()
    marker.unlink()
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(Payload(marker)))
    code = AUDIT_HOOK + f"import pickle\npickle.loads(open({str(tmp_path / 'p.pkl')!r}, 'rb').read())\n"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PICKLE_AUDIT_LOG": str(log)}, check=True,
                   timeout=60, cwd=ROOT)
    assert marker.exists()
    assert "open" in log.read_text()  # the payload reduces to open(): find_class('io', 'open') was audited


def test_planted_pickles_are_never_executed(repository: Repo, tmp_path: Path) -> None:
    marker, log = tmp_path / "marker", tmp_path / "audit.log"
    repo = tmp_path / "repository"
    plant(repo, repository.path / "digits" / "1", marker)
    refused = "model evil version 1 refused: cannot read golden.npz: Object arrays cannot be loaded when " \
              "allow_pickle=False"
    server = ServerProcess(repo, launcher=SERVE_UNDER_AUDIT, env={"PICKLE_AUDIT_LOG": str(log)})
    try:
        info = {m.name: m for m in server.classifier.ListModels(ic_pb2.ListModelsRequest(), timeout=10).models}
        assert set(info) == {"digits", "evil"}  # a folder without model.json is not a model
        assert info["evil"].state == ic_pb2.ModelInfo.NOT_SERVING
        assert info["evil"].reason == refused.removeprefix("model evil version 1 refused: ")
        assert server.classifier.Classify(classify_request(seed_images()["seed0.png"]), timeout=10).results
        # Changed files are read again on a rescan (SIGHUP): still refused, still nothing unpickled.
        (repo / "evil" / "1" / "export.pkl").write_bytes(pickle.dumps(Payload(marker)) + b"\n")
        server.signal(signal.SIGHUP)
        first = server.wait_log(lambda e: e.get("msg") == refused, 5)
        server.wait_log(lambda e: e.get("msg") == refused and e is not first, 15)  # the rescan's refusal
    finally:
        assert server.stop() == 0
    assert not marker.exists(), "a planted pickle was executed"
    assert not log.exists(), f"the server unpickled something: {log.read_text()}"


# ---- message sizes, both directions --------------------------------------------------------------------------------

def test_message_size_limits_in_both_directions(repository: Repo,
                                                make_server: Callable[..., ServerThread]) -> None:
    """Requests: gRPC refuses one over ``--max-message-mb`` (RESOURCE_EXHAUSTED), and the data plane refuses one whose
    images would expand past it. Responses: a ModelInfer answer holds N × K float32 logits for N inputs of C·H·W
    float32 values, each input bounded by the limit; K ≤ C·H·W for every model served, so no answer can exceed it.
    Classify answers hold at most K predictions per image."""
    server = make_server(base_config(repository.path, max_message_mb=1, max_images_per_request=1000, max_queue=1000))
    limit = 1 << 20
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        infer = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = kserve_pb2.ModelInferRequest.InferInputTensor
        over = np.zeros((335, 1, 28, 28), np.float32)  # 1,050,560 bytes of data
        with pytest.raises(grpc.RpcError) as e:
            infer.ModelInfer(kserve_pb2.ModelInferRequest(
                model_name="digits", inputs=[tensor(name="input", datatype="FP32", shape=list(over.shape))],
                raw_input_contents=[over.tobytes()]), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.search(r"[Rr]eceived message larger than max \(\d+ vs\. 1048576\)", e.value.details())
        most = limit // (4 * 28 * 28)
        tiny = encode(Image.new("L", (1, 1), 255), "PNG")
        request = kserve_pb2.ModelInferRequest(
            model_name="digits", inputs=[tensor(name="input", datatype="BYTES", shape=[most])],
            raw_input_contents=[encode_bytes_elements([tiny] * most)])
        response = infer.ModelInfer(request, timeout=60)
        assert list(response.outputs[0].shape) == [most, 10]
        assert response.ByteSize() < request.ByteSize() < limit
        for name, loaded in server.server.registry.models.items():
            c, h, w = loaded.manifest.input_shape
            assert loaded.manifest.num_classes <= c * h * w, name


# ---- pinned dependencies -------------------------------------------------------------------------------------------

def test_dependencies_are_pinned() -> None:
    """Every package installed from the constraints file has one exact version, and everything the slim serving
    install needs is among them (the README gives the pip-audit command that checks these pins)."""
    text = (ROOT / "requirements" / "constraints.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    pins = [line for line in lines if line]
    assert pins
    malformed = [p for p in pins if not re.fullmatch(r"[A-Za-z0-9._-]+(\[[^\]]+\])?==[A-Za-z0-9.+!-]+", p)]
    assert not malformed, malformed
    pinned = {re.split(r"[\[=]", p)[0].lower().replace("_", "-") for p in pins}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {re.split(r"[<>=!~\[; ]", d)[0].lower().replace("_", "-") for d in project["serve"]}
    assert wanted <= pinned, wanted - pinned
