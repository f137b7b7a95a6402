"""``ff sign``, ``ff verify``, ``ff sbom`` and ``ff export``: what a pipeline does after ``ff push``.

Signatures and SBOMs live in the registry next to the model (:mod:`registry.signing`,
:mod:`registry.sbom`); ``ff export --modelcar`` writes an OCI image for KServe (:mod:`registry.modelcar`).
Exit codes: :mod:`ffcli.exitcodes`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ffcli.exitcodes import expected_errors

if TYPE_CHECKING:
    from registry.http import RegistryClient


def _transport(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), envvar="FF_CA_BUNDLE",
                     help="CA bundle for the registry's TLS certificate")(f)
    return click.option("--insecure", is_flag=True, help="allow plain HTTP (loopback hosts always may)")(f)


def _created() -> str:
    """Now in UTC (or SOURCE_DATE_EPOCH, for reproducible pipelines), ISO 8601 with a Z."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _resolve(ref: str, insecure: bool, ca_file: str | None) -> tuple[RegistryClient, str, str, str, int, str]:
    """(client, repository, ``host/repo``, digest, size, media type) of a remote reference."""
    from registry.auth import client_for
    from registry.reference import parse_reference
    from registry.remote import RemoteError
    from registry.transfer import get_manifest

    r = parse_reference(ref)
    if r.host is None:
        raise RemoteError(f"{r}: give the pushed reference with its registry host, e.g. HOST/ns/name:tag")
    cl = client_for(r.host, insecure=insecure, ca_file=ca_file)
    data, media_type, digest = get_manifest(cl, r.repository, r.digest or r.tag or "latest")
    if r.digest and digest != r.digest:
        raise RemoteError(f"{r}: the registry answered {digest}")
    return cl, r.repository, f"{r.host}/{r.repository}", digest, len(data), media_type


def push_summary(ref: str) -> dict[str, object]:
    """What ``ff push --json`` adds for later pipeline steps: each variant with its manifest digest and
    the verify figures the build stored."""
    from registry.artifact import variants_of
    from registry.oci import ANN_AGREEMENT, ANN_PPL_RATIO
    from registry.store import Store

    out = []
    for v in variants_of(Store(), ref):
        ann = v.annotations

        def num(key: str, ann: dict[str, str] = ann) -> float | None:
            try:
                return float(ann[key])
            except (KeyError, ValueError):
                return None

        out.append({
            "name": v.name, "manifest": v.descriptor.digest, "size": v.descriptor.size,
            "target": v.target, "backend": v.backend, "quantization": v.quantization,
            "agreement": num(ANN_AGREEMENT), "perplexity_ratio": num(ANN_PPL_RATIO),
        })
    return {"variants": out}


@click.command("sign")
@click.argument("ref")
@click.option("--key", "key", required=True, envvar="FF_SIGNING_KEY", metavar="KEY",
              help="private key: a file or env://VAR (cosign.key or PEM; password in COSIGN_PASSWORD)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_transport
def sign_command(ref: str, key: str, as_json: bool, insecure: bool, ca_file: str | None) -> None:
    """Sign the pushed model REF (HOST/ns/name:tag) in cosign's format: the sha256-<hex>.sig tag.

    The tag is resolved to its digest first and the digest is what is signed.
    """
    from registry.signing import load_private_key, sign

    with expected_errors():
        private = load_private_key(key)
        cl, repo, docker_ref, digest, _, _ = _resolve(ref, insecure, ca_file)
        result = sign(cl, repo, docker_ref, digest, private)
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        click.echo(f"signed {docker_ref}@{digest} ({docker_ref}:{result.signature_tag})")


@click.command("verify")
@click.argument("ref")
@click.option("--key", "key", required=True, envvar="FF_VERIFY_KEY", metavar="KEY",
              help="public key: a file or env://VAR (cosign.pub, PEM)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_transport
def verify_command(ref: str, key: str, as_json: bool, insecure: bool, ca_file: str | None) -> None:
    """Check that the model REF carries a cosign signature by KEY (exit 6 when it does not)."""
    from registry.signing import load_public_key, verify

    with expected_errors():
        public = load_public_key(key)
        cl, repo, docker_ref, digest, _, _ = _resolve(ref, insecure, ca_file)
        result = verify(cl, repo, digest, public)
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        click.echo(f"verified {docker_ref}@{digest}: signed by the given key")


@click.command("sbom")
@click.argument("ref")
@click.option("--revision", default=None, help="the source revision (default: the model's LABEL)")
@click.option("--attach", is_flag=True, help="attach the SBOM to the model in the registry (OCI referrer)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the SBOM to this file")
@_transport
def sbom_command(
    ref: str, revision: str | None, attach: bool, output: Path | None, insecure: bool, ca_file: str | None
) -> None:
    """Make the SPDX 2.3 SBOM of the pushed model REF (every layer's digest, revision, licenses).

    Prints the SBOM, or with --attach a JSON summary of where it was attached.
    """
    from registry import sbom
    from registry.oci import Descriptor
    from registry.store import Store

    with expected_errors():
        cl, repo, docker_ref, digest, size, media_type = _resolve(ref, insecure, ca_file)
        created = _created()
        facts = sbom.collect(cl, repo, digest, f"{docker_ref}@{digest}", Store())
        doc = sbom.spdx_document(facts, revision=revision, created=created)
        body = json.dumps(doc, indent=2, sort_keys=True).encode()
        if output is not None:
            output.write_bytes(body)
        if not attach:
            click.echo(body.decode())
            return
        subject = Descriptor(media_type=media_type, digest=digest, size=size)
        result = sbom.attach(cl, repo, subject, body, created)
    click.echo(json.dumps({"subject": digest, "layers": len(facts.layers), **asdict(result)}))


@click.command("export")
@click.argument("ref")
@click.option("--modelcar", "modelcar", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="write an OCI image layout whose layer holds /models/… (KServe oci://)")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="write the model folder itself (what ff serve --models-dir reads)")
@click.option("--tag", default="latest", show_default=True, help="the modelcar image's tag in the layout")
@click.option("--base", default=None, metavar="LAYOUT[:TAG]",
              help="an OCI image layout to build the modelcar on (one with sh, for KServe's sidecar)")
@click.option("--target", help="the variant's target (default: the one that fits this machine)")
@click.option("--quantize", help="the variant's quantization")
@click.option("--backend", help="the variant's backend (llamacpp, onnxruntime, …)")
@click.option("--variant", help="the variant by name (e.g. q8_0-cpu)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def export_command(
    ref: str, modelcar: Path | None, folder: Path | None, tag: str, base: str | None,
    target: str | None, quantize: str | None, backend: str | None, variant: str | None, as_json: bool,
) -> None:
    """Export one variant of model REF from the store: as a modelcar image or as a plain folder.

    \b
    Examples:
      ff export smollm2:latest --modelcar ./smollm2-modelcar
      skopeo copy oci:./smollm2-modelcar:latest docker://registry.example/models/smollm2-modelcar:1
      ff export smollm2:latest --dir /srv/models/smollm2
    """
    from registry.folder import export_folder
    from registry.modelcar import write_modelcar
    from registry.reference import parse_reference
    from registry.select import select_stored
    from registry.store import Store

    if (modelcar is None) == (folder is None):
        raise click.UsageError("give one of --modelcar DIR or --dir DIR")
    with expected_errors():
        store = Store()
        name = str(parse_reference(ref))
        chosen = select_stored(
            store, name, target=target, quantize=quantize, backend=backend, variant=variant
        )
        if folder is not None:
            files = export_folder(store, name, chosen, folder)
            result: dict[str, object] = {"folder": str(folder), "variant": chosen.name, "files": files}
        else:
            assert modelcar is not None
            base_dir, base_tag = None, None
            if base:
                path, sep, btag = base.rpartition(":") if ":" in base else (base, "", "")
                base_dir, base_tag = Path(path if sep else base), (btag or None)
            res = write_modelcar(store, name, chosen, modelcar, tag=tag, base=base_dir, base_tag=base_tag)
            result = {"variant": chosen.name, **asdict(res)}
    if as_json:
        click.echo(json.dumps(result))
    elif folder is not None:
        click.echo(f"exported {name} variant {chosen.name} to {folder}")
    else:
        click.echo(f"wrote modelcar oci:{modelcar}:{tag} ({result['digest']}) with {name} {chosen.name}")


COMMANDS = [sign_command, verify_command, sbom_command, export_command]
