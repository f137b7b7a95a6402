"""``ff list``, ``ff show``, ``ff rm``, ``ff tag``, ``ff prune``: the local store from the command line."""

from __future__ import annotations

import json

import click

from ffcli.render import figure, human_size, print_table
from registry.artifact import (
    ModelFiles,
    VariantRef,
    open_variant,
    remove_model,
    tag_model,
    variant_tag,
    variants_of,
)
from registry.oci import ANN_AGREEMENT, ANN_COSINE, ANN_PPL_RATIO, OCI_INDEX, PROJECTOR_FILEPATH
from registry.reference import Reference, ReferenceError, parse_reference
from registry.store import NotFoundError, Store, StoreError


def _ref(text: str) -> Reference:
    try:
        return parse_reference(text)
    except ReferenceError as exc:
        raise click.ClickException(str(exc)) from None


def _size(store: Store, digest: str) -> int:
    return sum(store.blob_path(d).stat().st_size for d in store.reachable([digest]))


def _variant_tag_names(store: Store) -> set[str]:
    """Tags that name a variant of some tagged index (``name:<tag>-<variant>``)."""
    out: set[str] = set()
    for name, desc in store.tags():
        if desc.media_type != OCI_INDEX:
            continue
        ref = parse_reference(name)
        for v in variants_of(store, ref):
            if ref.tag is not None:
                out.add(f"{ref.name}:{variant_tag(ref.tag, v.name)}")
    return out


@click.command("list")
@click.option("-a", "--all", "show_all", is_flag=True, help="also list each variant's own tag")
def list_command(show_all: bool) -> None:
    """List the models in the local store."""
    try:
        store = Store()
        hidden = set() if show_all else _variant_tag_names(store)
        rows = []
        for name, desc in sorted(store.tags()):
            if name in hidden:
                continue
            variants = variants_of(store, name)
            rows.append(
                [
                    name,
                    desc.digest[7:19],
                    ", ".join(v.name for v in variants),
                    human_size(_size(store, desc.digest)),
                ]
            )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    print_table(["NAME", "ID", "VARIANTS", "SIZE"], rows)


def _variant_info(store: Store, v: VariantRef) -> tuple[ModelFiles | None, dict[str, object]]:
    """A variant's files and figures; ``None`` files for a variant not in the store (a partial pull)."""
    info: dict[str, object] = {
        "variant": v.name,
        "digest": v.descriptor.digest,
        "target": v.target,
        "backend": v.backend,
        "format": v.format,
        "quantization": v.quantization,
    }
    try:
        files = open_variant(store, v.descriptor.digest)
    except NotFoundError:
        return None, {**info, "present": False}
    ann = files.annotations
    info |= {
        "size": files.size,
        "agreement": float(ann[ANN_AGREEMENT]) if ANN_AGREEMENT in ann else None,
        "perplexity_ratio": float(ann[ANN_PPL_RATIO]) if ANN_PPL_RATIO in ann else None,
        "cosine": float(ann[ANN_COSINE]) if ANN_COSINE in ann else None,
        "annotations": ann,
        "verify": files.verify,
        "present": True,
    }
    return files, info


@click.command("show")
@click.argument("reference")
@click.option("--modelfile", "show_modelfile", is_flag=True, help="print the Modelfile it was built from")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
def show_command(reference: str, show_modelfile: bool, as_json: bool) -> None:
    """Show a model: its capabilities (input and output types), its variants with their verify figures,
    template, system prompt and parameters."""
    ref = _ref(reference)
    try:
        store = Store()
        desc = store.resolve(ref)
        pairs = [_variant_info(store, v) for v in variants_of(store, ref)]
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    present = [files for files, _ in pairs if files is not None]
    if not present:
        raise click.ClickException(f"none of {ref}'s variants is in the store (ff pull --variant …)")
    first = present[0]
    if show_modelfile:
        if first.modelfile is None:
            raise click.ClickException(f"{ref} has no stored Modelfile")
        click.echo(first.modelfile, nl=not first.modelfile.endswith("\n"))
        return
    caps = first.config.config.capabilities
    inputs = list(caps.input_types or []) if caps else []
    outputs = list(caps.output_types or []) if caps else []
    if as_json:
        doc = {
            "reference": str(ref),
            "digest": desc.digest,
            "task": first.annotations.get("io.ferrousforge.task"),
            "capabilities": {"inputTypes": inputs, "outputTypes": outputs},
            "projector": first.projector is not None,
            "architecture": first.config.config.architecture,
            "paramSize": first.config.config.param_size,
            "template": first.template,
            "system": first.system,
            "parameters": first.params,
            "messages": first.messages,
            "licenses": first.licenses,
            "variants": [info for _, info in pairs],
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    cfg = first.config.config
    click.echo(f"{ref}  {desc.digest}")
    click.echo(f"  architecture  {cfg.architecture or '-'}")
    click.echo(f"  parameters    {cfg.param_size or '-'}")
    click.echo(f"  task          {first.annotations.get('io.ferrousforge.task', '-')}")
    if inputs or outputs:
        click.echo(f"  capabilities  {', '.join(inputs) or '-'} → {', '.join(outputs) or '-'}")
    if first.projector is not None:
        click.echo(f"  projector     {PROJECTOR_FILEPATH} ({human_size(first.projector.stat().st_size)})")
    if first.system is not None:
        click.echo(f"  system        {first.system!r}")
    if first.params:
        click.echo(f"  params        {json.dumps(first.params, sort_keys=True)}")
    click.echo("")
    rows = [
        [
            str(i["variant"]),
            str(i["target"]),
            str(i["backend"]),
            str(i["quantization"]),
            human_size(int(str(i["size"]))) if i["present"] else "not present",
            figure(i.get("agreement")),
            figure(i.get("perplexity_ratio")),
            figure(i.get("cosine")),
        ]
        for _, i in pairs
    ]
    print_table(["VARIANT", "TARGET", "BACKEND", "QUANT", "SIZE", "AGREEMENT", "PPL RATIO", "COSINE"], rows)


@click.command("rm")
@click.argument("references", nargs=-1, required=True)
def rm_command(references: tuple[str, ...]) -> None:
    """Remove models (their tags and variant tags); blobs stay until `ff prune`."""
    store = Store()
    for text in references:
        ref = _ref(text)
        try:
            removed = remove_model(store, ref)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"deleted {', '.join(removed)}")


@click.command("tag")
@click.argument("source")
@click.argument("target")
def tag_command(source: str, target: str) -> None:
    """Give a model in the store another name (its variants get variant tags under it too)."""
    src, dst = _ref(source), _ref(target)
    try:
        store = Store()
        desc = store.resolve(src)
        if desc.media_type == OCI_INDEX:
            names = tag_model(store, dst, desc)
        else:
            store.tag(dst, desc)
            names = [str(dst)]
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"tagged {', '.join(names)}")


@click.command("prune")
@click.option("--cache", "clear_cache", is_flag=True, help="also empty the build cache ($FF_HOME/cache)")
def prune_command(clear_cache: bool) -> None:
    """Delete blobs no tag reaches (and, with --cache, every build-cache entry)."""
    try:
        removed = Store().prune()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {len(removed)} blob(s), {human_size(sum(s for _, s in removed))}")
    if clear_cache:
        from ffbuild.cache import BuildCache

        entries, size = BuildCache().clear()
        click.echo(f"removed {entries} build-cache entr{'y' if entries == 1 else 'ies'}, {human_size(size)}")


COMMANDS = [list_command, show_command, rm_command, tag_command, prune_command]
