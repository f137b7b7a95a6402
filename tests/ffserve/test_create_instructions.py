"""``/api/create`` bodies → Modelfile instructions (``ffserve.routes.ollama_create.instructions``), and those
through ffbuild's writer and parser, as ``ff serve``'s builder reads them."""

from __future__ import annotations

from ffbuild.modelfile import Instruction, Modelfile, format, parse
from ffserve.routes.ollama_create import _Sources, blob_digest, instructions
from ffserve.wire.ollama import CreateRequest

D1, D2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _body(**fields: object) -> CreateRequest:
    return CreateRequest.model_validate({"model": "m", **fields}, strict=True)


def test_every_field_becomes_its_instruction() -> None:
    body = _body(
        **{"from": "base"},
        template="{{ .Prompt }}",
        system='Say "hi"\nthen stop.',
        parameters={
            "temperature": 0.5,
            "stop": ["<|im_end|>", "User:"],
            "num_ctx": 4096,
            "penalize_newline": True,
        },
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        license=["MIT", "Apache-2.0"],
    )
    got = instructions(body, _Sources("base:latest", {}, {"adapters/lora.gguf": D1}))
    assert got == (
        ("FROM", ("base:latest",)),
        ("ADAPTER", ("adapters/lora.gguf",)),
        ("TEMPLATE", ("{{ .Prompt }}",)),
        ("SYSTEM", ('Say "hi"\nthen stop.',)),
        ("PARAMETER", ("temperature", "0.5")),
        ("PARAMETER", ("stop", "<|im_end|>")),
        ("PARAMETER", ("stop", "User:")),
        ("PARAMETER", ("num_ctx", "4096")),
        ("PARAMETER", ("penalize_newline", "true")),
        ("MESSAGE", ("user", "Hi")),
        ("MESSAGE", ("assistant", "Hello")),
        ("LICENSE", ("MIT",)),
        ("LICENSE", ("Apache-2.0",)),
    )
    written = [Instruction(k, args) for k, args in got]
    assert parse(format(Modelfile(written))).instructions == written  # what the builder reads back


def test_files_name_the_source() -> None:
    one = instructions(_body(files={"m.gguf": D1}), _Sources(None, {"m.gguf": D1}, {}))
    assert one[0] == ("FROM", ("m.gguf",))
    folder = {"config.json": D1, "model.safetensors": D2}
    peft = {"adapters/adapter_config.json": D1, "adapters/adapter_model.safetensors": D2}
    many = instructions(_body(files=folder), _Sources(None, folder, peft))
    assert many[:2] == (("FROM", (".",)), ("ADAPTER", ("adapters",)))


def test_digests_in_both_spellings() -> None:
    assert blob_digest("sha256-" + "A" * 64) == blob_digest("sha256:" + "a" * 64) == "sha256:" + "a" * 64
