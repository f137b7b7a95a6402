"""JSON schemas for KServe's ClusterServingRuntime (serving.kserve.io/v1alpha1) and InferenceService
(serving.kserve.io/v1beta1), for validating deploy/kserve/ offline.

No PyPI package ships KServe's CRDs (the ``kserve`` SDK wheel has none), so these are written here from
the CRDs KServe publishes (``config/crd/full/serving.kserve.io_clusterservingruntimes.yaml`` and
``…_inferenceservices.yaml`` in github.com/kserve/kserve, read at commit aaac4e294): every field name
the CRDs allow at the levels checked, nothing else (a misspelt field is an error, as the API server's
structural-schema pruning would silently drop it), the types and ``required`` lists of the fields ff
uses, and the Kubernetes types they embed (Container, Volume, Toleration, …) taken from the Kubernetes
schemas that ``kubernetes-validate`` bundles. ``protocolVersions`` values are KServe's protocol names.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from referencing import Registry, Resource

DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"
K8S = DEFS + "io.k8s.api.core.v1."
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]

# Field names at each level, as the CRDs list them.
RUNTIME_SPEC_FIELDS = [
    "affinity", "annotations", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint",
    "grpcEndpoint", "hostIPC", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel",
    "nodeSelector", "protocolVersions", "replicas", "resourceClaims", "schedulerName", "storageHelper",
    "supportedModelFormats", "tolerations", "volumes", "workerSpec",
]
PREDICTOR_FIELDS = [
    "activeDeadlineSeconds", "affinity", "annotations", "autoScaling", "automountServiceAccountToken",
    "batcher", "canaryTrafficPercent", "containerConcurrency", "containers", "deploymentStrategy",
    "dnsConfig", "dnsPolicy", "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork", "hostPID",
    "hostUsers", "hostname", "hostnameOverride", "huggingface", "imagePullSecrets", "initContainers",
    "labels", "lightgbm", "logger", "maxReplicas", "minReplicas", "model", "name", "nodeName",
    "nodeSelector", "onnx", "os", "overhead", "paddle", "pmml", "preemptionPolicy", "priority",
    "priorityClassName", "pytorch", "readinessGates", "resourceClaims", "resources", "restartPolicy",
    "runtimeClassName", "scaleMetric", "scaleMetricType", "scaleTarget", "schedulerName",
    "schedulingGates", "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "sklearn", "storageContainerName", "storageUris", "subdomain", "tensorflow",
    "terminationGracePeriodSeconds", "timeout", "tolerations", "topologySpreadConstraints", "triton",
    "volumes", "workerSpec", "xgboost",
]
CONTAINER_FIELDS = [
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
    "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "restartPolicyRules",
    "securityContext", "startupProbe", "stdin", "stdinOnce", "terminationMessagePath",
    "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "workingDir",
]
MODEL_FIELDS = [*CONTAINER_FIELDS, "confidential", "modelFormat", "protocolVersion", "runtime",
                "runtimeVersion", "storage", "storageUri"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": K8S + name}


def _closed(fields: list[str], typed: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    props = {f: typed.get(f, {}) for f in fields}
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _metadata(namespaced: bool) -> dict[str, Any]:
    meta = {"$ref": DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    scope: dict[str, Any] = {} if namespaced else {"not": {"required": ["namespace"]}}
    return {"allOf": [meta, {"required": ["name"]} | scope]}


def _container_typed() -> dict[str, Any]:
    """The Container fields with their Kubernetes types (the Container schema's own properties)."""
    return {"allOf": [_ref("Container")]}


SERVING_RUNTIME: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"const": "ClusterServingRuntime"},
        "metadata": _metadata(namespaced=False),
        "spec": _closed(RUNTIME_SPEC_FIELDS, {
            "containers": {"type": "array", "minItems": 1, "items": _container_typed()},
            "supportedModelFormats": {"type": "array", "items": _closed(
                ["autoSelect", "name", "priority", "version"],
                {"autoSelect": {"type": "boolean"}, "name": {"type": "string", "minLength": 1},
                 "priority": {"type": "integer", "minimum": 1}, "version": {"type": "string"}},
                ["name"],
            )},
            "protocolVersions": {"type": "array", "items": {"enum": PROTOCOLS}},
            "multiModel": {"type": "boolean"}, "disabled": {"type": "boolean"},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "volumes": {"type": "array", "items": _ref("Volume")},
            "tolerations": {"type": "array", "items": _ref("Toleration")},
            "imagePullSecrets": {"type": "array", "items": _ref("LocalObjectReference")},
            "affinity": _ref("Affinity"),
            "replicas": {"type": "integer", "minimum": 0},
        }, ["containers"]),
    },
}

_model_typed: dict[str, Any] = {
    f: {"$ref": K8S + "Container/properties/" + f} for f in CONTAINER_FIELDS
}
INFERENCE_SERVICE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": _metadata(namespaced=True),
        "spec": _closed(["canary", "explainer", "predictor", "transformer"], {
            "predictor": _closed(PREDICTOR_FIELDS, {
                "model": _closed(MODEL_FIELDS, {
                    **_model_typed,
                    "modelFormat": _closed(["name", "version"], {"name": {"type": "string", "minLength": 1},
                                                                 "version": {"type": "string"}}, ["name"]),
                    "protocolVersion": {"enum": PROTOCOLS},
                    "runtime": {"type": "string", "minLength": 1},
                    "storageUri": {"type": "string", "pattern": "^(s3|gs|https?|pvc|oci|hdfs|webhdfs|hf)://"},
                }, ["modelFormat"]),
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "containers": {"type": "array", "items": _container_typed()},
                "volumes": {"type": "array", "items": _ref("Volume")},
            }),
        }, ["predictor"]),
    },
}

SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): SERVING_RUNTIME,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}


def validate(doc: dict[str, Any], definitions: dict[str, Any]) -> None:
    """Validate a KServe resource; ``definitions``: kubernetes-validate's ``_definitions.json``."""
    schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)
