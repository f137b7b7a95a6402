"""examples/ci/*.yml run end to end: check, build with the revision, push with credentials from the
pipeline's secrets, sign, SBOM, then a fresh job pulls with the signature verified and serves it.

The steps come from the YAML files themselves (tests/delivery/ci_runner.py), against Debian's
docker-registry with htpasswd auth; the results are checked here from the registry and the job files.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests
from ci_runner import ROOT, Machine, run_github, run_gitlab
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from remote_testkit import PASSWORD, USER, RegistryServer

pytestmark = [pytest.mark.registry, pytest.mark.slow]
SHA = "4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
KEY_PASSWORD = "pipeline-key-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(KEY_PASSWORD.encode())).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pub


def _check_results(machine: Machine, registry: RegistryServer, repo: str, tag: str,
                   publish: str, smoke: str, answer_path: str) -> None:
    for run in machine.runs:  # the secrets reach ff through the environment only
        assert PASSWORD not in run.script and KEY_PASSWORD not in run.script, run.script
    jobs = machine.root / "jobs"
    build = json.loads((jobs / publish / "work" / "build.json").read_text())
    assert [v["name"] for v in build["variants"]] == ["q4_1-cpu"]
    assert build["variants"][0]["agreement"] == 1.0
    pushed = json.loads((jobs / publish / "work" / "push.json").read_text())
    assert pushed["status"] == "result" and pushed["variants"][0]["agreement"] == 1.0
    r = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}", auth=(USER, PASSWORD), timeout=10,
                     headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == pushed["digest"]
    variant = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}-q4_1-cpu",
                           auth=(USER, PASSWORD), timeout=10,
                           headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert variant["annotations"]["org.opencontainers.image.revision"] == SHA
    hexd = pushed["digest"].split(":")[1]
    for ref, mt in ((f"sha256-{hexd}.sig", "manifest"), (f"sha256-{hexd}", "index")):  # signature, SBOM
        assert requests.head(f"http://{registry.host}/v2/{repo}/manifests/{ref}", auth=(USER, PASSWORD),
                             timeout=10, headers={"Accept": f"application/vnd.oci.image.{mt}.v1+json"}
                             ).status_code == 200
    answer = json.loads((jobs / smoke / "work" / answer_path).read_text())
    text = answer["choices"][0]["message"]["content"] if "choices" in answer else answer["message"]["content"]
    assert text.strip()


def test_github_actions_example(auth_registry: RegistryServer, tmp_path: Path) -> None:
    priv, pub = _keys()
    machine = Machine(tmp_path / "gh", extra_env={"FF_PORT": str(_free_port()), "FF_NUM_THREADS": "1"})
    run_github(
        ROOT / "examples/ci/github-actions.yml", machine,
        secrets={"REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": PASSWORD,
                 "COSIGN_PRIVATE_KEY": priv, "COSIGN_PASSWORD": KEY_PASSWORD},
        variables={"REGISTRY_HOST": auth_registry.host, "MODEL_REPOSITORY": "my-org/smollm2",
                   "COSIGN_PUBLIC_KEY": pub},
        github={"sha": SHA, "server_url": "https://github.example", "repository": "my-org/models"},
    )
    assert [r.job for r in machine.runs] == ["model"] * 4 + ["smoke"] * 2
    _check_results(machine, auth_registry, "my-org/smollm2", SHA, "model", "smoke", "answer.json")


def test_gitlab_ci_example(auth_registry: RegistryServer, tmp_path: Path) -> None:
    priv, pub = _keys()
    machine = Machine(tmp_path / "gl", extra_env={"FF_PORT": str(_free_port()), "FF_NUM_THREADS": "1"})
    run_gitlab(
        ROOT / "examples/ci/gitlab-ci.yml", machine,
        predefined={"CI_REGISTRY": auth_registry.host, "CI_REGISTRY_USER": USER,
                    "CI_REGISTRY_PASSWORD": PASSWORD,
                    "CI_REGISTRY_IMAGE": f"{auth_registry.host}/group/project",
                    "CI_COMMIT_SHA": SHA, "CI_COMMIT_SHORT_SHA": SHA[:8],
                    "CI_PROJECT_URL": "https://gitlab.example/group/project"},
        variables={"COSIGN_PASSWORD": KEY_PASSWORD},
        file_variables={"COSIGN_PRIVATE_KEY": priv, "COSIGN_PUBLIC_KEY": pub},
    )
    assert [r.job for r in machine.runs] == ["check", "publish", "smoke"]
    repo = "group/project/smollm2"
    _check_results(machine, auth_registry, repo, SHA[:8], "publish", "smoke", "answer.json")
