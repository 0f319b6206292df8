"""deploy/kubernetes/: strict schema validation (kubernetes-validate, offline) and the cross-manifest rules."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks.common import load_yaml_documents
from deploy.checks.kubernetes import check_kubernetes
from deploy.dockerfile import Dockerfile
from tests.support.paths import ROOT

FOLDER = ROOT / "deploy" / "kubernetes"
Doc = dict[str, Any]


def test_manifests_pass(dockerfile: Dockerfile) -> None:
    assert check_kubernetes(FOLDER, dockerfile) == []


def test_probes_are_native_grpc_on_the_grpc_port() -> None:
    (deployment,) = load_yaml_documents(FOLDER / "deployment.yaml")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["grpc"] == {"port": 8001, "service": "inference.GRPCInferenceService"}
    assert server["livenessProbe"]["grpc"] == {"port": 8001}
    assert server["startupProbe"]["grpc"] == {"port": 8001}
    (isvc,) = load_yaml_documents(FOLDER / "inferenceservice.yaml")
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"]["port"] == 8001


def _server(docs: list[Doc]) -> Doc:
    return docs[0]["spec"]["template"]["spec"]["containers"][0]


def _predictor(docs: list[Doc]) -> Doc:
    return docs[0]["spec"]["predictor"]


Mutation = tuple[str, Callable[[list[Doc]], Any], str]
CASES: list[Mutation] = [
    # strict schemas (kubernetes-validate): an unknown field, a wrong type
    ("deployment.yaml", lambda d: _server(d)["readinessProbe"].update(grpcc={"port": 8001}), "grpcc"),
    ("deployment.yaml", lambda d: _server(d)["readinessProbe"]["grpc"].update(port="grpc"), "is not of type"),
    ("hpa.yaml", lambda d: d[0]["spec"].update(minReplica=1), "minReplica"),
    ("inferenceservice.yaml", lambda d: _predictor(d)["containers"][0].update(imagePullPolicy=3), "container-v1"),
    ("inferenceservice.yaml", lambda d: _predictor(d).update(nodeSelectr={}), "podspec-v1"),
    # cross-manifest rules
    ("deployment.yaml", lambda d: _server(d).pop("readinessProbe"), "native gRPC readinessProbe"),
    ("deployment.yaml", lambda d: _server(d)["livenessProbe"].update(grpc={"port": 8002}), "must ask port 8001"),
    ("deployment.yaml", lambda d: _server(d)["readinessProbe"]["grpc"].update(service="digits.v1"),
     "unknown health service"),
    ("deployment.yaml", lambda d: _server(d)["readinessProbe"]["grpc"].pop("service"), "should name the inference"),
    ("deployment.yaml", lambda d: _server(d).pop("startupProbe"), "startupProbe"),
    ("deployment.yaml", lambda d: _server(d)["env"].append({"name": "SERVING_PORTT", "value": "1"}), "does not read"),
    ("deployment.yaml", lambda d: _server(d).update(args=["--port", "9"]), "overrides"),
    ("deployment.yaml", lambda d: d[0]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=15),
     "terminationGracePeriodSeconds"),
    ("deployment.yaml", lambda d: d[0]["spec"]["template"]["spec"]["securityContext"].update(runAsUser=1000),
     "runAsUser"),
    ("deployment.yaml", lambda d: _server(d)["securityContext"].update(readOnlyRootFilesystem=False),
     "readOnlyRootFilesystem"),
    ("deployment.yaml", lambda d: d[0]["spec"]["selector"]["matchLabels"].update(tier="x"), "selector"),
    ("deployment.yaml", lambda d: _server(d)["ports"].pop(), "EXPOSE"),
    ("deployment.yaml", lambda d: _server(d).update(image="resnet-serving:train"), "serve image"),
    ("deployment.yaml", lambda d: d[0]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"].update(
        claimName="models"), "claim"),
    ("service.yaml", lambda d: d[0]["spec"]["ports"][0].update(targetPort="grcp"), "unknown port"),
    ("service.yaml", lambda d: d[1]["spec"]["ports"][0].pop("appProtocol"), "kubernetes.io/h2c"),
    ("service.yaml", lambda d: d[0]["spec"]["selector"].update({"app.kubernetes.io/component": "trainer"}),
     "does not select"),
    ("hpa.yaml", lambda d: d[0]["spec"]["scaleTargetRef"].update(name="resnet"), "not Deployment/resnet-serving"),
    ("train-job.yaml", lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "EPOCHS", "value": "3"}), "does not use"),
    ("train-job.yaml", lambda d: d[0]["spec"]["template"]["spec"]["containers"][0].update(
        image="resnet-serving:serve"), "not the train image"),
    ("inferenceservice.yaml", lambda d: _predictor(d)["containers"][0]["ports"][0].update(name="grpc"),
     "named h2c"),
    ("inferenceservice.yaml", lambda d: _predictor(d)["containers"][0]["env"][0].update(value="pvc://other/"),
     "STORAGE_URI"),
    ("inferenceservice.yaml", lambda d: d[0]["metadata"].pop("annotations"), "RawDeployment"),
    ("kustomization.yaml", lambda d: d[0]["resources"].pop(), "resources"),
]


@pytest.mark.parametrize(("file", "mutation", "message"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_kubernetes_rules_catch(dockerfile: Dockerfile, tmp_path: Path, file: str,
                                mutation: Callable[[list[Doc]], Any], message: str) -> None:
    folder = tmp_path / "kubernetes"
    shutil.copytree(FOLDER, folder)
    docs = load_yaml_documents(folder / file)
    mutation(docs)
    (folder / file).write_text(yaml.safe_dump_all(docs))
    problems = check_kubernetes(folder, dockerfile)
    assert any(message in p for p in problems), problems
