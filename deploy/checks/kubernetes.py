"""deploy/kubernetes/: strict schema validation, then the manifests checked against each other and the Dockerfile.

Every built-in kind is validated against the Kubernetes OpenAPI schemas (as kubernetes-validate ships them; strict:
unknown fields are errors) for the oldest and newest versions the manifests target; the KServe InferenceService's pod
spec and container against the same schemas. Then probes, ports, labels, claims, grace periods and the autoscaler
target are checked against each other and the Dockerfile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from deploy.checks.common import (
    GRPC_PORT,
    SERVE_TARGET,
    TRAIN_TARGET,
    Problems,
    health_service_names,
    load_yaml_documents,
    serve_option_variables,
    uid,
)
from deploy.dockerfile import Dockerfile, ImageConfig

KUBERNETES_VERSIONS = ("1.30", "1.37")   # native gRPC probes (1.27) and the preStop sleep action (1.30) are used
# KServe v1beta1 PredictorSpec: the component extension fields plus a PodSpec (validated as one below).
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                           "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
                           "deploymentStrategy", "workerSpec", "model"}
# Kinds without a built-in schema: KServe's custom resource (its parts are validated one by one) and kustomize's file.
NOT_BUILT_IN = ("InferenceService", "Kustomization")

Doc = dict[str, Any]


# ---- the Kubernetes schemas ----------------------------------------------------------------------------------------

@cache
def _k8s_validator(definition: str, version: str) -> Any:
    """A strict validator for one definition (e.g. ``deployment-apps-v1``), from kubernetes-validate's schemas.

    Those are the Kubernetes OpenAPI schemas converted to JSON schema, one folder per minor version; "strict" ones
    refuse unknown fields. Loaded once per process: the definitions file is a megabyte.
    """
    import jsonschema
    from referencing import Registry, Resource

    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    try:
        schema = json.loads((folder / f"{definition}.json").read_text())
    except FileNotFoundError:
        raise LookupError(f"no Kubernetes {version} schema for {definition}") from None
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resources([("", Resource.from_contents(schema)),
                                          ("_definitions.json", Resource.from_contents(definitions))]).crawl()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _k8s_fragment_problems(fragment: Any, definition: str, where: str) -> Problems:
    """Validate a document, or part of a custom resource (e.g. a container), against a strict built-in schema."""
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            validator = _k8s_validator(definition, version)
        except LookupError as e:
            problems.append(f"{where}: {e}")
            continue
        problems += [f"{where}: Kubernetes {version} {definition}: {'.'.join(map(str, e.path))}: {e.message}"
                     for e in validator.iter_errors(fragment)]
    return problems


def _k8s_schema_problems(document: Doc, where: str) -> Problems:
    # kubernetes-validate's file names: kind-group-version, the group without its domain ("apps/v1" → "apps-v1").
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
    return _k8s_fragment_problems(document, f"{document['kind'].lower()}-{api}", where)


# ---- the folder ----------------------------------------------------------------------------------------------------

def check_kubernetes(folder: Path, dockerfile: Dockerfile) -> Problems:
    """Every manifest in ``folder`` against the schemas, then against each other and the Dockerfile's images."""
    serve, train = dockerfile.config(SERVE_TARGET), dockerfile.config(TRAIN_TARGET)
    manifests: dict[str, list[Doc]] = {f.name: load_yaml_documents(f) for f in sorted(folder.glob("*.yaml"))}
    by_kind: dict[str, list[tuple[str, Doc]]] = {}
    problems: Problems = []
    for file, docs in manifests.items():
        for doc in docs:
            by_kind.setdefault(doc.get("kind", "?"), []).append((file, doc))
            if doc.get("kind") not in NOT_BUILT_IN:
                problems += _k8s_schema_problems(doc, f"{file} {doc.get('kind')}/{doc['metadata']['name']}")
    try:
        kustomization, deployment, hpa, claim, job, isvc = (_one(by_kind, kind) for kind in (
            "Kustomization", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Job",
            "InferenceService"))
    except LookupError as e:
        return [*problems, str(e)]
    problems += _check_kustomization(kustomization, manifests)
    claim_name = claim["metadata"]["name"]
    images = {i["name"] for i in kustomization.get("images") or []}
    problems += _check_deployment(deployment, serve, claim_name, images)
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    ports = {port.get("name"): port["containerPort"] for port in pod["spec"]["containers"][0].get("ports") or []}
    for file, service in by_kind.get("Service", []):
        problems += _check_service(file, service, labels, ports)
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"hpa.yaml: scales {ref['kind']}/{ref['name']}, not "
                        f"Deployment/{deployment['metadata']['name']}")
    problems += _check_train_job(job, train, claim_name)
    problems += _check_inference_service(isvc, serve, claim_name)
    return problems


def _one(by_kind: Mapping[str, list[tuple[str, Doc]]], kind: str) -> Doc:
    """The only document of ``kind``; LookupError if there is none or more than one."""
    found = by_kind.get(kind, [])
    if len(found) != 1:
        raise LookupError(f"deploy/kubernetes: expected one {kind}, found {len(found)}")
    return found[0][1]


def _check_kustomization(kustomization: Doc, manifests: Mapping[str, list[Doc]]) -> Problems:
    """kustomize applies every file of built-in kinds, and only those."""
    listed = set(kustomization.get("resources") or [])
    expected = {f for f, docs in manifests.items() if not any(d["kind"] in NOT_BUILT_IN for d in docs)}
    if listed != expected:
        return [f"kustomization.yaml: resources {sorted(listed)} should be {sorted(expected)}"]
    return []


# ---- one container and its pod -------------------------------------------------------------------------------------

def _env_value(container: Mapping[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e["name"] == name), None)


def _claim_at(pod: Mapping[str, Any], container: Mapping[str, Any], path: str) -> str | None:
    """The PersistentVolumeClaim mounted at ``path`` in ``container``, if any."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    volume = volumes.get(mounts.get(path, ""), {})
    return (volume.get("persistentVolumeClaim") or {}).get("claimName")


def _check_serving_container(c: Mapping[str, Any], where: str, grpc_port: Any) -> Problems:
    problems: Problems = []
    p = problems.append
    names = {e["name"] for e in c.get("env") or []}
    unknown = {n for n in names if n.startswith("SERVING_")} - serve_option_variables()
    if unknown:
        p(f"{where}: sets {sorted(unknown)}, which `python -m serving serve` does not read")
    if c.get("command") or c.get("args"):
        p(f"{where}: overrides the serve image's command (configure it with SERVING_* variables)")
    problems += _check_probes(c, where, grpc_port)
    security = c.get("securityContext") or {}
    if security.get("allowPrivilegeEscalation") is not False or security.get("readOnlyRootFilesystem") is not True:
        p(f"{where}: set allowPrivilegeEscalation: false and readOnlyRootFilesystem: true")
    return problems


def _check_probes(c: Mapping[str, Any], where: str, grpc_port: Any) -> Problems:
    """Readiness and liveness are native gRPC health checks on the gRPC port, of services the server reports."""
    problems: Problems = []
    p = problems.append
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not probe or "grpc" not in probe:
            p(f"{where}: needs a native gRPC {kind}")
            continue
        if probe["grpc"].get("port") not in (GRPC_PORT, grpc_port):
            p(f"{where}: {kind} must ask port {GRPC_PORT}, not {probe['grpc'].get('port')}")
        if probe["grpc"].get("service", "") not in health_service_names():
            p(f"{where}: {kind} asks for unknown health service {probe['grpc'].get('service')!r}")
    readiness = (c.get("readinessProbe") or {}).get("grpc") or {}
    if not readiness.get("service"):
        p(f"{where}: the readiness probe should name the inference service, e.g. "
          f"{sorted(health_service_names() - {''})[0]}")
    return problems


# ---- each manifest -------------------------------------------------------------------------------------------------

def _check_deployment(deployment: Mapping[str, Any], serve: ImageConfig, claim_name: str,
                      images: set[str]) -> Problems:
    problems: Problems = []
    p = problems.append
    pod, labels = deployment["spec"]["template"]["spec"], deployment["spec"]["template"]["metadata"]["labels"]
    if not set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
        p("deployment.yaml: the selector does not match the pod labels")
    server = pod["containers"][0]
    where = f"deployment.yaml container {server['name']}"
    if not str(server["image"]).endswith(":" + SERVE_TARGET) or str(server["image"]).split(":")[0] not in images:
        p(f"{where}: image {server['image']} is not the kustomized serve image")
    ports = {port.get("name"): port["containerPort"] for port in server.get("ports") or []}
    if set(ports.values()) != set(serve.exposed):
        p(f"{where}: container ports {sorted(ports.values())} differ from the image's EXPOSE {sorted(serve.exposed)}")
    problems += _check_serving_container(server, where, ports.get("grpc"))
    if "startupProbe" not in server:
        p(f"{where}: needs a startupProbe (model loading and the golden self-check)")
    problems += _check_deployment_pod(pod, server, serve, claim_name)
    if "limits" not in (server.get("resources") or {}) or "cpu" not in server["resources"].get("requests", {}):
        p(f"{where}: needs CPU requests (the autoscaler's utilization) and limits (SERVING_THREADS)")
    return problems


def _check_deployment_pod(pod: Mapping[str, Any], server: Mapping[str, Any], serve: ImageConfig,
                          claim_name: str) -> Problems:
    """The server's pod: time to stop gracefully, the image's uid, and the model claim at SERVING_REPOSITORY."""
    problems: Problems = []
    p = problems.append
    grace = float(_env_value(server, "SERVING_GRACE_S") or serve.env.get("SERVING_GRACE_S", "10"))
    pre_stop = (((server.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    if pod.get("terminationGracePeriodSeconds", 30) <= grace + pre_stop:
        p(f"deployment.yaml: terminationGracePeriodSeconds must exceed preStop {pre_stop} s + grace {grace:g} s")
    if pod.get("securityContext", {}).get("runAsUser") != uid(serve.user):
        p(f"deployment.yaml: runAsUser must be the image's uid {uid(serve.user)}")
    repository = _env_value(server, "SERVING_REPOSITORY") or serve.env["SERVING_REPOSITORY"]
    if _claim_at(pod, server, repository) != claim_name:
        p(f"deployment.yaml: {repository} must be the {claim_name} claim")
    return problems


def _check_service(file: str, service: Mapping[str, Any], labels: Mapping[str, str],
                   ports: Mapping[str, int]) -> Problems:
    problems: Problems = []
    name = service["metadata"]["name"]
    selector = service["spec"].get("selector") or {}
    if not selector or not set(selector.items()) <= set(labels.items()):
        problems.append(f"{file}: Service {name} does not select the server pods")
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if target not in ports and target not in ports.values():
            problems.append(f"{file}: Service {name} targets unknown port {target}")
        if ports.get(target, target) == GRPC_PORT and port.get("appProtocol") != "kubernetes.io/h2c":
            problems.append(f"{file}: the gRPC port should declare appProtocol: kubernetes.io/h2c")
    return problems


def _check_train_job(job: Mapping[str, Any], train: ImageConfig, claim_name: str) -> Problems:
    problems: Problems = []
    pod = job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    if not str(trainer["image"]).endswith(":" + TRAIN_TARGET):
        problems.append(f"train-job.yaml: image {trainer['image']} is not the train image")
    unknown = {e["name"] for e in trainer.get("env") or []} - set(train.env)
    if unknown:
        problems.append(f"train-job.yaml: sets {sorted(unknown)}, which the train image does not use")
    if _claim_at(pod, trainer, train.env["MODEL_REPOSITORY"]) != claim_name:
        problems.append(f"train-job.yaml: {train.env['MODEL_REPOSITORY']} must be the {claim_name} claim")
    if pod.get("securityContext", {}).get("runAsUser") != uid(train.user):
        problems.append(f"train-job.yaml: runAsUser must be the image's uid {uid(train.user)}")
    return problems


def _check_inference_service(isvc: Doc, serve: ImageConfig, claim_name: str) -> Problems:
    problems: Problems = []
    p = problems.append
    if isvc.get("apiVersion") != "serving.kserve.io/v1beta1":
        p(f"inferenceservice.yaml: apiVersion {isvc.get('apiVersion')}, expected serving.kserve.io/v1beta1")
    predictor = dict(isvc["spec"]["predictor"])
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    # The rest of a PredictorSpec is a PodSpec; the containers' own fields are checked one by one below.
    problems += [f"inferenceservice.yaml predictor: {m}" for m in _k8s_fragment_problems(
        {**pod_spec, "containers": [{"name": c["name"]} for c in pod_spec.get("containers", [])]}, "podspec-v1", "")]
    containers = predictor.get("containers") or []
    if len(containers) != 1:
        return [*problems, "inferenceservice.yaml: expected one predictor container"]
    problems += _check_predictor_container(containers[0], claim_name)
    if (predictor.get("securityContext") or {}).get("runAsUser") != uid(serve.user):
        p(f"inferenceservice.yaml: runAsUser must be the image's uid {uid(serve.user)}")
    if isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") != "RawDeployment":
        p("inferenceservice.yaml: use RawDeployment (a plain Deployment whose gRPC probes the kubelet runs)")
    return problems


def _check_predictor_container(c: Mapping[str, Any], claim_name: str) -> Problems:
    """KServe's serving container: its schema, the one port KServe routes, and the model from the train Job's claim."""
    problems: Problems = []
    p = problems.append
    where = f"inferenceservice.yaml container {c['name']}"
    problems += _k8s_fragment_problems(c, "container-v1", where)
    if not str(c["image"]).endswith(":" + SERVE_TARGET):
        p(f"{where}: image {c['image']} is not the serve image")
    ports = c.get("ports") or []
    if [(q.get("name"), q.get("containerPort")) for q in ports] != [("h2c", GRPC_PORT)]:
        p(f"{where}: KServe routes one port; it must be named h2c (gRPC) and be {GRPC_PORT}")
    problems += _check_serving_container(c, where, GRPC_PORT)
    uri = _env_value(c, "STORAGE_URI") or ""
    if not uri.startswith(f"pvc://{claim_name}/"):
        p(f"{where}: STORAGE_URI {uri!r} should be pvc://{claim_name}/ (the train Job's claim)")
    if _env_value(c, "SERVING_REPOSITORY") != "/mnt/models":
        p(f"{where}: KServe mounts STORAGE_URI at /mnt/models; set SERVING_REPOSITORY to it")
    return problems
