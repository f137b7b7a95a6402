"""Every manifest in deploy/ validates: Kubernetes kinds with kubernetes-validate (the Kubernetes 1.37
schemas it bundles, strict: unknown fields are errors), KServe kinds with the schemas in
kserve_schema.py; and the manifests agree with ff serve (probe paths, ports, the model folder)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kserve_schema import SCHEMAS
from kserve_schema import validate as validate_kserve

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.37.0"
# deploy/prometheus holds Prometheus rule files, not Kubernetes objects (test_prometheus_rules.py).
MANIFESTS = sorted(p for p in (ROOT / "deploy").rglob("*.yaml") if "prometheus" not in p.parts)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _definitions() -> dict[str, Any]:
    from importlib.resources import files

    base = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    return dict(json.loads((base / "_definitions.json").read_text()))


def check(doc: dict[str, Any]) -> None:
    if (doc.get("apiVersion"), doc.get("kind")) in SCHEMAS:
        validate_kserve(doc, _definitions())
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_there_are_manifests() -> None:
    kinds = {d["kind"] for p in MANIFESTS for d in _docs(p)}
    assert {"Deployment", "Service", "ClusterServingRuntime", "InferenceService"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates(path: Path) -> None:
    for doc in _docs(path):
        check(doc)


def _runtime() -> dict[str, Any]:
    return _docs(ROOT / "deploy/kserve/clusterservingruntime.yaml")[0]


@pytest.mark.parametrize("mutate, error", [
    (lambda d: d["spec"].update(supportedModelFormat=[]), "Additional properties"),
    (lambda d: d["spec"]["containers"][0]["ports"][0].update(containerPort="8080"), "is not of type"),
    (lambda d: d["spec"]["containers"][0].update(imagePullPolicy=1), "is not of type"),
    (lambda d: d["spec"].update(protocolVersions=["v3"]), "is not one of"),
    (lambda d: d["spec"]["supportedModelFormats"][0].pop("name"), "'name' is a required property"),
    (lambda d: d["spec"]["containers"][0].update(volumeMount=[]), "Additional properties"),
])
def test_the_validators_catch_mistakes(mutate: Any, error: str) -> None:
    doc = copy.deepcopy(_runtime())
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=error):
        check(doc)
    deployment = _docs(ROOT / "deploy/k8s/deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        check(deployment)  # a misspelt field
    isvc = _docs(ROOT / "deploy/kserve/inferenceservice-gguf.yaml")[0]
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x/"
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        check(isvc)


def test_manifests_agree_with_ff_serve() -> None:
    from ffserve.routes.ops import ROUTES

    paths = {r.path for r in ROUTES}
    rt = _runtime()
    formats = {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert formats == {"gguf", "onnx"} and rt["spec"]["protocolVersions"] == ["v2"]
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container" and c["ports"][0]["containerPort"] == 8080
    assert "--models-dir=/mnt/models" in c["args"] and "--port=8080" in c["args"]
    dep = _docs(ROOT / "deploy/k8s/deployment.yaml")[0]["spec"]["template"]
    (d,) = dep["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert d[probe]["httpGet"]["path"] in paths
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in paths
    assert dep["metadata"]["annotations"]["prometheus.io/path"] in paths
    assert dep["spec"]["securityContext"]["runAsNonRoot"] is True
    for path in (ROOT / "deploy/kserve").glob("inferenceservice-*.yaml"):
        model = _docs(path)[0]["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] in formats
        assert model.get("runtime", "ferrousforge") == "ferrousforge"
