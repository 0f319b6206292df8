"""deploy/kubernetes/ray/batch-rayjob.yaml, checked offline: KubeRay's RayJob against the project's strict schema of
it (deploy/schemas/rayjob-ray-v1.json; its pod templates against the Kubernetes schemas of kubernetes-validate), and
against what the batch CLI and the other manifests expect of it."""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from serving import cli
from tests.support.paths import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes" / "ray" / "batch-rayjob.yaml"
SCHEMA = ROOT / "deploy" / "schemas" / "rayjob-ray-v1.json"
KUBERNETES_VERSIONS = ("1.30", "1.37")  # the range the other manifests are checked against
Doc = dict[str, Any]


@cache
def validator(version: str) -> jsonschema.Draft202012Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()), registry=registry)


def problems(doc: Doc) -> list[str]:
    return [f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}"
            for version in KUBERNETES_VERSIONS for e in validator(version).iter_errors(doc)]


def rayjob() -> Doc:
    (doc,) = yaml.safe_load_all(MANIFEST.read_text())
    return doc


def pods(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def entrypoint(doc: Doc) -> Any:
    """The entrypoint parsed by the batch CLI's own parser (``SystemExit`` if it would refuse it)."""
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "serving", "batch"], words
    return cli.build_parser().parse_args(words[3:])


def test_the_manifest_passes_the_schema() -> None:
    assert problems(rayjob()) == []


def _container(doc: Doc) -> Doc:
    return pods(doc)[1]["containers"][0]


Mutation = tuple[Callable[[Doc], Any], str]
CASES: list[Mutation] = [
    (lambda d: d["spec"].update(entrypointt="x"), "'entrypointt' was unexpected"),
    (lambda d: d["spec"].update(backoffLimit="2"), "'2' is not of type 'integer'"),
    (lambda d: d["spec"].update(submissionMode="K8sJob"), "'K8sJob' is not one of"),
    (lambda d: d["spec"].pop("rayClusterSpec"), "is not valid under any of the given schemas"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplica=3), "'maxReplica' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "0 is not of type 'string'"),
    (lambda d: _container(d).update(volumeMount=[]), "'volumeMount' was unexpected"),        # Kubernetes' schema
    (lambda d: _container(d)["resources"].update(request={}), "'request' was unexpected"),
    (lambda d: d.update(kind="RayCluster"), "'RayJob' was expected"),
]


@pytest.mark.parametrize(("mutate", "message"), CASES)
def test_the_schema_refuses_mistakes(mutate: Callable[[Doc], Any], message: str) -> None:
    doc = copy.deepcopy(rayjob())
    mutate(doc)
    found = problems(doc)
    assert any(message in p for p in found), found


def test_the_entrypoint_is_a_ray_batch_job_the_cli_accepts() -> None:
    args = entrypoint(rayjob())
    assert args.command == "batch"
    assert (args.engine, args.resume, args.ray_address) == ("ray", True, None)  # RAY_ADDRESS: the job's cluster
    assert args.repository.is_absolute()
    assert all(PurePosixPath(p).is_absolute() for p in args.inputs)
    assert args.output.is_absolute()


def test_every_pod_mounts_the_same_volumes_at_the_same_paths() -> None:
    """The actors open files by the driver's absolute paths: the head and every worker must see the same tree."""
    doc = rayjob()
    mounts = [{m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]} for spec in pods(doc)]
    volumes = [{v["name"]: v for v in spec["volumes"]} for spec in pods(doc)]
    assert all(m == mounts[0] for m in mounts)
    assert all(v == volumes[0] for v in volumes)
    for name in mounts[0].values():
        assert name in volumes[0], name
    args = entrypoint(doc)

    def volume_of(path: str | Path) -> str:
        owner = max((m for m in mounts[0] if PurePosixPath(path).is_relative_to(m)), key=len, default=None)
        assert owner is not None, f"{path} is on no mounted volume"
        return mounts[0][owner]

    (claim,) = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "model-repository.yaml").read_text())
    assert volumes[0][volume_of(args.repository)]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    data = {volume_of(args.output), *map(volume_of, args.inputs)}
    assert len(data) == 1
    assert "persistentVolumeClaim" in volumes[0][data.pop()]  # not an emptyDir: the rows must outlive the pods


def test_the_ray_version_is_the_pinned_one() -> None:
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "requirements" / "constraints.txt").read_text(), re.M)
    assert pinned is not None
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == pinned.group(1)
