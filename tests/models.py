"""Test models made from the real ones the test packages ship, cached under ~/.cache/ferrousforge-tests.

- :func:`hf_folder_from_gguf`: a Hugging Face folder (config, bf16 safetensors, tokenizer, chat
  template) of a GGUF model, through transformers' GGUF loader (which dequantizes) and
  ``save_pretrained``: what a real Hub checkout of the model looks like, made without a network.
- :func:`hub_cache_from_folder`: an HF hub cache (``hub/models--org--name/{blobs,snapshots,refs}``)
  holding a folder, for ``hf://`` sources with ``HF_HUB_OFFLINE=1``.
- :func:`peft_lora`: a small deterministic PEFT LoRA adapter for a model folder.

Every product is built in a temp folder next to its cache entry and renamed into place under a file
lock, so a killed test run never leaves half a fixture, and concurrent runs build it once.
Entries are keyed by the content they come from and :data:`RECIPE` (bump it when a recipe changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from registry.store import Store

RECIPE = "3"
CACHE_ROOT = Path(os.environ.get("FF_TEST_CACHE", Path.home() / ".cache" / "ferrousforge-tests"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_dir(key: str, name: str, build: Callable[[Path], None]) -> Path:
    """``CACHE_ROOT/key/name``, made by ``build(tmp_dir)`` the first time (atomically, under a lock)."""
    entry = CACHE_ROOT / key
    final = entry / name
    if final.is_dir():
        return final
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry / ".lock")):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def hf_folder_from_gguf(gguf_path: Path, dest: Path) -> None:
    """Write a Hugging Face folder of the GGUF model into ``dest`` (bf16 weights, like the Hub's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF loader's marker; a Hub checkout has none
    config._name_or_path = ""
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh = fresh.to(torch.bfloat16)
    fresh.config.dtype = torch.bfloat16
    fresh.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    config_path = dest / "config.json"
    data = json.loads(config_path.read_text())
    data.pop("quantization_config", None)
    data.pop("_name_or_path", None)
    data.pop("_model_name_or_path", None)
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def hub_cache_from_folder(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay ``folder`` out as the HF hub cache of ``repo_id`` under ``hf_home/hub`` (revision: a hash
    of the files)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {p: sha256_of(p) for p in files}
    revision = hashlib.sha1(
        "".join(f"{p.relative_to(folder).as_posix()}:{d}\n" for p, d in digests.items()).encode()
    ).hexdigest()
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for p, digest in digests.items():
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs" / "main").write_text(revision)


def peft_lora(base_folder: Path, dest: Path, *, seed: int = 1234, rank: int = 8, alpha: int = 16) -> None:
    """A LoRA on every attention and MLP projection with small random non-zero weights (deterministic)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(dest)
    config_path = dest / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def add_model(
    store: Store,
    ref: str,
    variants: dict[str, Path],
    *,
    params: dict[str, object] | None = None,
    template: str | None = None,
    system: str | None = None,
    task: str = "chat",
) -> None:
    """Write a model (one variant per quantization → GGUF file) the way ``ff build`` lays it out."""
    from registry.artifact import layer, tag_model, write_index, write_variant
    from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
    from registry.oci import (
        ANN_BACKEND,
        ANN_FORMAT,
        ANN_QUANTIZATION,
        ANN_TARGET,
        ANN_TASK,
        ANN_VARIANT,
        FF_PARAMS,
        FF_SYSTEM,
        FF_TEMPLATE,
        MODEL_DOC,
        MODEL_WEIGHT,
    )

    descs = []
    for quant, path in sorted(variants.items()):
        layers = [layer(store, MODEL_WEIGHT, "model.gguf", file=path)]
        if params:
            layers.append(layer(store, FF_PARAMS, "params.json", data=json.dumps(params).encode()))
        if template:
            layers.append(layer(store, FF_TEMPLATE, "template.txt", data=template.encode()))
        if system:
            layers.append(layer(store, FF_SYSTEM, "system.txt", data=system.encode()))
        layers.append(layer(store, MODEL_DOC, "LICENSE", data=b"Apache-2.0"))
        config = ModelPackConfig(
            descriptor=ModelDescriptor(name=ref.split(":")[0]),
            config=ModelConfig(
                architecture="llama", format="gguf", param_size="135M", quantization=quant
            ),
            modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
        )
        ann = {
            ANN_VARIANT: f"{quant}-cpu",
            ANN_TARGET: "cpu",
            ANN_BACKEND: "llamacpp",
            ANN_FORMAT: "gguf",
            ANN_QUANTIZATION: quant,
            ANN_TASK: task,
        }
        descs.append(write_variant(store, config, layers, ann))
    tag_model(store, ref, write_index(store, descs))


def random_whisper(tokenizer_json: Path, out: Path) -> None:
    """A tiny random Whisper as a Hugging Face folder (2+2 layers, width 64, fixed seed), with Whisper's
    own tokenizer (``tokenizer_json``, e.g. tiny.en's) and a feature extractor: for the converter path,
    not for its transcripts."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json))
    eot, sot = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    cfg = WhisperConfig(
        vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot,
    )  # fmt: skip
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.2}
FAMILIES: dict[str, tuple[str, dict[str, object]]] = {
    # name: (transformers model_type, config beyond _TINY)
    "qwen3": ("qwen3", {"head_dim": 16}),
    "gemma3": ("gemma3_text", {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16}),
    "mistral": ("mistral", {"head_dim": 16}),  # llama.cpp runs Mistral as llama: no sliding window
    "granite": ("granite", {}),
    "olmo2": ("olmo2", {}),
    "smollm3": ("smollm3", {"pad_token_id": 0}),
    "stablelm": ("stablelm", {}),
    "qwen2moe": ("qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                               "shared_expert_intermediate_size": 64}),
    "granitemoe": ("granitemoe", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "phi4": ("phi3", {}),  # Phi-4's layout: Phi3ForCausalLM with a GPT-2 BPE tokenizer
}
"""Tiny random decoders by family, made by transformers from a config (numeric agreement checks only).
The Phi-3 architecture is checked here as Phi-4 ships it (``Phi3ForCausalLM`` with a GPT-2 BPE tokenizer,
the one these models borrow from SmolLM2), in a folder named ``phi4``: for a model whose name says Phi-3,
llama.cpp's vocabulary loader looks up Phi-3-mini's SentencePiece tokens (``<unk>``, ``<s>``, ``</s>``,
``<|endoftext|>``), which a BPE vocabulary lacks ("unordered_map::at"). Phi-3-mini as it ships (a
SentencePiece ``tokenizer.model`` plus added chat tokens) is :func:`random_phi3_sentencepiece`."""


DECISIVE = 30.0
"""How much :func:`random_decoder` scales its token embeddings (see there)."""
DECODER_RECIPE = "d30"
"""Part of the cache key of :func:`random_decoder`'s folders: change it when the recipe changes."""


def random_decoder(family: str, tokenizer_folder: Path, dest: Path, *, seed: int = 0) -> None:
    """A randomly initialised ``family`` decoder (hidden 64, 2 layers, f32) with the tokenizer of
    ``tokenizer_folder`` (its vocabulary sizes the embedding), saved as a Hugging Face folder.

    Its next-token logits are made decisive, like a trained model's: a purely random model's top two
    logits (out of 49k) lie about 0.16 standard deviations apart at the median, so q8_0's rounding flips
    5-15 % of its greedy tokens however right the conversion is. Here the token embeddings are scaled by
    :data:`DECISIVE` (so the residual stream carries the current token, as the first thing a trained model
    learns) and an untied output head is the embedding matrix with its rows shuffled (a random bigram
    table: token ``t`` favours one next token; a tied head favours ``t`` itself). The top logit then stands
    about 1.5-4 standard deviations above the next at the median, while the layers still move every
    logit and pick the winner at 0-15 % of positions (measured on tests/ffbuild/test_families.py's
    text)."""
    from transformers import AutoTokenizer

    model_type, extra = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    _save_decisive(model_type, {"vocab_size": len(tokenizer), **special, **extra}, dest, seed)
    tokenizer.save_pretrained(dest)
    # as the Hub's SmolLM2 names it (transformers 5 writes TokenizersBackend; Phi-3's converter reads
    # GPT2Tokenizer as "BPE, like Phi-4", anything else as SentencePiece)
    config_path = dest / "tokenizer_config.json"
    data = json.loads(config_path.read_text())
    data["tokenizer_class"] = "GPT2Tokenizer"
    config_path.write_text(json.dumps(data, indent=2) + "\n")


def _save_decisive(model_type: str, config: Mapping[str, object], dest: Path, seed: int) -> None:
    """A random ``model_type`` decoder of :data:`_TINY`'s size with decisive logits (see
    :func:`random_decoder`), saved to ``dest`` (safetensors, f32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, **_TINY, **config), dtype=torch.float32
    )
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        if head.data_ptr() != emb.data_ptr():  # untied: a shuffled copy of the embeddings
            head.copy_(emb[torch.randperm(emb.shape[0])])
        emb.mul_(DECISIVE)
    model.save_pretrained(dest, safe_serialization=True)


PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")
"""Phi-3-mini's added tokens, in id order right after its SentencePiece pieces (its added_tokens.json)."""


def train_sentencepiece(corpus: Path, model_file: Path, *, vocab_size: int = 1000) -> None:
    """A Llama-style SentencePiece model (BPE, byte fallback, ``<unk>``/``<s>``/``</s>`` at 0/1/2, a dummy
    space prefix, digits split, no normalization: the trainer options of Llama's and Phi-3-mini's
    ``tokenizer.model``) trained on ``corpus`` with the installed ``sentencepiece``, one thread."""
    import io

    import sentencepiece as spm

    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        split_digits=True, allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
    )  # fmt: skip
    model_file.write_bytes(out.getvalue())


def random_phi3_sentencepiece(corpus: Path, dest: Path, *, seed: int = 0) -> None:
    """A randomly initialised ``Phi3ForCausalLM`` laid out as Phi-3-mini ships: a SentencePiece
    ``tokenizer.model`` (:func:`train_sentencepiece` on ``corpus``; 1,000 pieces where Phi-3-mini has
    32,000), :data:`PHI3_ADDED` after them (``added_tokens.json`` and ``tokenizer_config.json``'s
    ``added_tokens_decoder``), ``tokenizer_class`` LlamaTokenizer, ``<|endoftext|>`` as EOS and padding,
    the vocabulary padded to a multiple of 64 (1,024; Phi-3-mini's 32,064) and a 2,047-token sliding
    window. No ``tokenizer.json``: transformers 5 cannot convert a SentencePiece model here (the
    installed protobuf is older than sentencepiece's generated code), and llama.cpp's Phi-3 converter
    reads ``tokenizer.model``."""
    import sentencepiece as spm

    dest.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(corpus, dest / "tokenizer.model")
    n_pieces = spm.SentencePieceProcessor(model_file=str(dest / "tokenizer.model")).vocab_size()
    added = {token: n_pieces + i for i, token in enumerate(PHI3_ADDED)}
    eos = added["<|endoftext|>"]
    config = {"vocab_size": -(-(n_pieces + len(added)) // 64) * 64, "bos_token_id": 1, "eos_token_id": eos,
              "pad_token_id": eos, "sliding_window": 2047}
    _save_decisive("phi3", config, dest, seed)
    (dest / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    ids = {"<unk>": 0, "<s>": 1, "</s>": 2, **added}
    decoder = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": t in PHI3_ADDED[1:],
                 "single_word": False, "special": True}
        for t, i in ids.items()
    }  # fmt: skip
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
        "model_max_length": 4096, "added_tokens_decoder": decoder,
    }  # fmt: skip
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def random_bert(tokenizer_folder: Path, dest: Path, *, seed: int = 0) -> None:
    """A randomly initialised BERT encoder (hidden 64, 2 layers) with ``tokenizer_folder``'s WordPiece
    tokenizer and sentence-transformers' mean pooling files (so the GGUF pools as the reference does)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, initializer_range=0.2)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    for name in ("modules.json", "1_Pooling"):
        src = tokenizer_folder / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            shutil.copyfile(src, dest / name)


IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "min_pixels": 3136, "max_pixels": 12544,
    "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "do_resize": True, "do_rescale": True,
    "do_normalize": True, "do_convert_rgb": True,
}


def random_qwen2vl(tokenizer_folder: Path, dest: Path, *, seed: int = 0) -> None:
    """A randomly initialised Qwen2-VL (text hidden 64, 2 layers; vision width 32, 3 blocks: llama.cpp's
    tensor map needs the merger's mlp.2 below the block count) with ``tokenizer_folder``'s tokenizer and
    the image processor's ``preprocessor_config.json`` (written as JSON: Pillow is not a dependency)."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    n = len(tokenizer)
    config = Qwen2VLConfig(
        text_config={"vocab_size": n, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 3, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=n - 3, video_token_id=n - 4, vision_start_token_id=n - 5, vision_end_token_id=n - 6,
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    (dest / "preprocessor_config.json").write_text(json.dumps(IMAGE_PROCESSOR, indent=2) + "\n")


def random_qwen2audio(tokenizer_folder: Path, dest: Path, *, seed: int = 0) -> None:
    """A randomly initialised Qwen2-Audio (text hidden 64, 2 layers; a Whisper-style audio encoder of
    width 32, 3 layers (llama.cpp's tensor map needs conv2 below
    the block count), 128 mel bins, 1500 positions: llama.cpp encodes every clip as 30 s windows of
    3000 frames, 750 tokens each) with ``tokenizer_folder``'s tokenizer and a Whisper feature extractor
    made from its constructor (Qwen2-Audio's settings)."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    n = len(tokenizer)
    config = Qwen2AudioConfig(
        text_config={"model_type": "qwen2", "vocab_size": n, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id},
        audio_config={"d_model": 32, "encoder_layers": 3, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        audio_token_index=n - 3,
    )
    torch.manual_seed(seed)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(dest)


def multimodal_ggufs(folder: Path, out: Path, ftype: str) -> tuple[Path, Path]:
    """(text model, projector) GGUFs of a multimodal Hugging Face folder, by llama.cpp's converter."""
    from ffbuild.stages.convert import convert_hf_to_gguf, convert_projector

    convert_hf_to_gguf(folder, out / "model.gguf", ftype)
    convert_projector(folder, out / "mmproj.gguf", ftype)
    return out / "model.gguf", out / "mmproj.gguf"
