"""The planner: a parsed Modelfile, its folder and build args → a validated :class:`BuildPlan`.

Entry points: :func:`make_plan` and :func:`plan_file`. Every instruction is checked, and every problem found
is reported (the first error carries the others in ``more``), each at the word that caused it.
Meanings follow Ollama where it has one: SYSTEM, TEMPLATE, RENDERER, PARSER — the last one wins;
LICENSE and MESSAGE accumulate; ``PARAMETER stop`` accumulates, other parameters the last one wins.
Differences: one FROM model (Ollama merges the files of several; a second FROM may only be the model's
multimodal projector GGUF, as Ollama's vision models have), one DRAFT, and ADAPTERs accumulate.
DRAFT, RENDERER, PARSER and REQUIRES are checked but not acted on: each gets a warning in the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ffbuild.buildargs import resolve_args, substitute, substituted_text, unfaithful
from ffbuild.errors import ModelfileError, ModelfilePlanError, Problem, SourceText, printable
from ffbuild.instruction_words import parse_labels, parse_verify, requires_version, task_word
from ffbuild.modelfile import Instruction, Modelfile, parse_file
from ffbuild.modelfile_text import split_words
from ffbuild.params import DEPRECATED_PARAMETERS, ParamValue, convert
from ffbuild.plan import Adapter, BuildPlan, Message, Source, SourceKind, Variant, VerifyPolicy
from ffbuild.sources import SourceFacts, inspect_source, resolve_adapter, resolve_source
from ffbuild.variants import QuantizeSpec, TargetSpec, expand, parse_quantize, parse_target
from registry.choices import SPEECH_TASKS, TEXT_TASKS

IGNORED_INSTRUCTIONS: Final = {
    "DRAFT": "ff does no speculative decoding: the draft model is neither built nor served",
    "RENDERER": "ff renders prompts with TEMPLATE or the model's own chat template",
    "PARSER": "ff does not parse tool calls or thinking out of the output by a named parser",
    "REQUIRES": "ff does not check the version",
}
"""Ollama instructions ff parses and checks but does not act on: each one gets a warning saying why."""

# Where a quantization type or a target came from: (instruction, word index), or None for the CLI.
_Origin = tuple[Instruction, int] | None


@dataclass
class _Collected:
    """What the Modelfile's instructions say, gathered in one pass (the last TEMPLATE/SYSTEM wins)."""

    substituted: list[Instruction] = field(default_factory=list)
    source: Source | None = None
    source_ins: Instruction | None = None
    draft: Source | None = None
    draft_ins: Instruction | None = None
    task: str | None = None
    task_ins: Instruction | None = None
    template: str | None = None
    system: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    adapters: list[Adapter] = field(default_factory=list)
    projector: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    verify: dict[str, float | str] = field(default_factory=dict)
    quants: list[tuple[str, _Origin]] = field(default_factory=list)
    target_specs: list[tuple[TargetSpec, _Origin]] = field(default_factory=list)
    requantize: bool = False


class _Planner:
    def __init__(self, modelfile: Modelfile, context: Path) -> None:
        self.modelfile = modelfile
        self.context = context
        self.text = SourceText(modelfile.text, modelfile.filename)
        self.errors: list[ModelfileError] = []
        self.warnings: list[str] = []

    # -- errors --------------------------------------------------------------------------------------

    def fail(self, ins: Instruction | None, arg: int | None, problem: Problem, prefix: str = "") -> None:
        message = prefix + problem.message
        if ins is None or not ins.line:
            self.errors.append(
                ModelfilePlanError(
                    message, filename=self.text.filename, expected=problem.expected, hint=problem.hint
                )
            )
            return
        index = problem.arg if problem.arg is not None else arg
        if index is not None and index < len(ins.arg_positions):
            line, column = ins.arg_positions[index]
        else:
            line, column = ins.line, ins.column
        self.errors.append(
            self.text.error(
                ModelfilePlanError,
                self.text.offset(line, column),
                message,
                expected=problem.expected,
                hint=problem.hint,
            )
        )

    # -- the pass ------------------------------------------------------------------------------------

    def run(
        self,
        build_args: Mapping[str, str],
        quantize: Sequence[str] | None,
        targets: Sequence[str] | None,
        modelfile_path: Path | None,
    ) -> BuildPlan:
        values = resolve_args(self.modelfile, build_args, self.text, self.errors)
        c = self._collect(values)
        substituted = c.substituted
        source, source_ins, draft, draft_ins = c.source, c.source_ins, c.draft, c.draft_ins
        task, template, requantize = c.task, c.template, c.requantize
        quants, target_specs = c.quants, c.target_specs

        self.warnings += [
            f"line {i.line}: {i.keyword} is ignored ({IGNORED_INSTRUCTIONS[i.keyword]})"
            for i in substituted
            if i.keyword in IGNORED_INSTRUCTIONS
        ]
        if quantize is not None:
            quants, requantize = self._cli_quants(quantize, requantize)
        if targets is not None:
            target_specs = self._cli_targets(targets)
        if not target_specs:
            target_specs = [(TargetSpec("cpu"), None)]
        if source is not None and draft is not None and source.path is not None and source.path == draft.path:
            self.fail(draft_ins, 0, Problem(f"DRAFT must not be the same local path as FROM: {draft.path}"))

        facts = self._inspect(source, source_ins)
        task_inferred = task is None
        if task is None:
            task = self._infertask_word(source, facts, template)
        variants = self._variants(source, quants, target_specs, task)
        self._check_variants(variants, task, c, facts, requantize)

        text = substituted_text(self.modelfile, values)
        changed = None if self.errors else unfaithful(self.modelfile, values, substituted)
        if changed is not None:
            reads = Problem(
                "with these ARG values the Modelfile's text reads differently here",
                hint='quote ${…} where its value may hold blanks (k="${X}"); a value must hold no line '
                "break, nor quotes where the Modelfile quotes it",
            )
            self.fail(changed, 0, reads)
        if self.errors or source is None:
            if not self.errors:  # only a Modelfile made without parse() can lack FROM here
                self.errors.append(ModelfilePlanError("no FROM instruction", filename=self.text.filename))
            first, *rest = self.errors
            first.more = tuple(rest)
            raise first
        return BuildPlan(
            modelfile=modelfile_path,
            context=self.context,
            source=source,
            variants=tuple(variants),
            task=task,
            task_inferred=task_inferred,
            template=template,
            system=c.system,
            parameters=c.parameters,
            messages=tuple(c.messages),
            adapters=tuple(c.adapters),
            projector=c.projector,
            licenses=tuple(c.licenses),
            labels=c.labels,
            requires=c.requires,
            draft=draft,
            renderer=c.renderer,
            parser=c.parser,
            verify=VerifyPolicy.model_validate(c.verify),
            requantize=requantize,
            build_args={k: v for k, v in values.items() if v is not None},
            text=text,
            warnings=tuple(self.warnings),
        )

    def _collect(self, values: Mapping[str, str | None]) -> _Collected:
        """One pass over the instructions, ``${…}`` substituted from ``values``; each wrong one is an error
        at its own line, and the pass goes on to report the rest."""
        c = _Collected()
        for raw in self.modelfile.instructions:
            ins = substitute(raw, values, self.text, self.errors)
            c.substituted.append(ins)
            try:
                self._instruction(ins, c)
            except Problem as problem:
                self.fail(ins, 1 if ins.keyword in ("PARAMETER", "MESSAGE") else 0, problem)
            except (OSError, ValueError) as exc:  # the filesystem refused a path (too long, bad bytes, …)
                self.fail(ins, 0, _unusable_path(ins.args[0] if ins.args else "", exc))
        return c

    def _inspect(self, source: Source | None, source_ins: Instruction | None) -> SourceFacts:
        """What the FROM source holds (format, quantization, adapter or model); a failure is the FROM
        line's error."""
        facts = SourceFacts()
        if source is None or source_ins is None:
            return facts
        try:
            facts = inspect_source(source)
        except Problem as problem:
            self.fail(source_ins, 0, problem)
        except (OSError, ValueError) as exc:
            self.fail(source_ins, 0, _unusable_path(source.raw, exc))
        if facts.adapter:
            adapter = Problem("this GGUF is a LoRA adapter, not a model", hint="name it with ADAPTER")
            self.fail(source_ins, 0, adapter)
        return facts

    def _check_variants(
        self, variants: Sequence[Variant], task: str, c: _Collected, facts: SourceFacts, requantize: bool
    ) -> None:
        """The variants against the task and the source: int4 only for text, TASK tensor only on ONNX
        backends, a warning where an already-quantized source would be quantized again."""
        if task not in TEXT_TASKS and any(v.quantization == "int4" for v in variants):
            int4 = Problem(f"int4 is for chat/generate models (ONNX Runtime GenAI), not TASK {task}")
            self.fail(c.task_ins or c.source_ins, 0, int4)
        if task not in SPEECH_TASKS and c.source is not None and c.source.kind == SourceKind.CT2_FOLDER:
            speech_only = Problem(f"a CTranslate2 folder serves TASK transcribe, not {task}")
            self.fail(c.task_ins or c.source_ins, 0, speech_only)
        if task == "tensor" and any(v.family == "gguf" for v in variants):
            needs = Problem("TASK tensor needs an ONNX-family backend (onnxruntime, tvm, tensorrt)")
            self.fail(c.task_ins, 0, needs)
        if facts.quantized and not requantize:
            redo = sorted({v.quantization for v in variants} - {"source", facts.quantization or ""})
            if redo:
                self.warnings.append(
                    f"the source is already quantized ({facts.quantization}); making {', '.join(redo)} "
                    "from it needs QUANTIZE … requantize=true (or ff build --allow-requantize)"
                )

    def _instruction(self, ins: Instruction, c: _Collected) -> None:
        """What one (substituted) instruction adds to ``c``; a :class:`Problem` for a wrong one."""
        kw, args = ins.keyword, ins.args
        if kw == "FROM":
            if c.source_ins is not None:
                second = resolve_source(args[0], self.context)
                if c.projector is None and _is_projector(second):
                    c.projector = second.path
                    return
                raise Problem(
                    f"more than one FROM (the first is on line {c.source_ins.line})",
                    hint="ff builds one model from one source; a second FROM may only name its multimodal "
                    "projector GGUF (general.architecture clip, from convert_hf_to_gguf.py --mmproj)",
                )
            c.source_ins = ins
            c.source = resolve_source(args[0], self.context)
        elif kw == "DRAFT":
            if c.draft_ins is not None:
                raise Problem(f"more than one DRAFT (the first is on line {c.draft_ins.line})")
            c.draft_ins = ins
            c.draft = resolve_source(args[0], self.context)
        elif kw == "ADAPTER":
            c.adapters.append(resolve_adapter(args[0], self.context))
        elif kw == "PARAMETER":
            self._parameter(ins, c.parameters)
        elif kw == "TEMPLATE":
            c.template = args[0]
        elif kw == "SYSTEM":
            c.system = args[0]
        elif kw == "LICENSE":
            c.licenses.append(args[0])
        elif kw == "MESSAGE":
            c.messages.append(Message(role=args[0], content=args[1]))
        elif kw == "RENDERER":
            c.renderer = args[0]
        elif kw == "PARSER":
            c.parser = args[0]
        elif kw == "REQUIRES":
            c.requires = requires_version(args[0])
        elif kw == "QUANTIZE":
            spec = parse_quantize(args)
            c.requantize = c.requantize or bool(spec.requantize)
            self._add_quants(ins, args, spec, c.quants)
        elif kw == "TARGET":
            c.target_specs.append((parse_target(args), (ins, 0)))
        elif kw == "TASK":
            if c.task_ins is not None:
                raise Problem(f"more than one TASK (the first is on line {c.task_ins.line})")
            c.task_ins = ins
            c.task = task_word(args[0])
        elif kw == "LABEL":
            parse_labels(args, c.labels)
        elif kw == "VERIFY":
            parse_verify(args, c.verify)

    # -- pieces --------------------------------------------------------------------------------------

    def _parameter(self, ins: Instruction, parameters: dict[str, ParamValue]) -> None:
        name, value = ins.args
        if name in DEPRECATED_PARAMETERS:
            self.warnings.append(
                f"line {ins.line}: parameter {name} is deprecated and ignored (as in Ollama)"
            )
            return
        typed = convert(name, value)
        previous = parameters.get(name)
        if isinstance(typed, list) and isinstance(previous, list):
            parameters[name] = [*previous, *typed]
        else:
            parameters[name] = typed

    def _add_quants(
        self, ins: Instruction, args: Sequence[str], spec: QuantizeSpec, quants: list[tuple[str, _Origin]]
    ) -> None:
        have = {q for q, _ in quants}
        for q in spec.types:
            index = next(i for i, w in enumerate(args) if w.lower() == q)
            if q in have:
                self.fail(ins, index, Problem(f"{q} is already listed by an earlier QUANTIZE"))
                continue
            quants.append((q, (ins, index)))

    def _cli_quants(self, words: Sequence[str], requantize: bool) -> tuple[list[tuple[str, _Origin]], bool]:
        try:
            spec = parse_quantize(list(words))
        except Problem as problem:
            self.fail(None, None, problem, prefix="--quantize: ")
            return [], requantize
        return [(q, None) for q in spec.types], requantize or bool(spec.requantize)

    def _cli_targets(self, texts: Sequence[str]) -> list[tuple[TargetSpec, _Origin]]:
        out: list[tuple[TargetSpec, _Origin]] = []
        for text in texts:
            try:
                words = [w for w, _ in split_words(" " + text, 0)]
                out.append((parse_target(words), None))
            except (Problem, ValueError) as exc:
                problem = exc if isinstance(exc, Problem) else Problem(str(exc))
                self.fail(None, None, problem, prefix=f"--target {text!r}: ")
        return out

    def _variants(
        self,
        source: Source | None,
        quants: list[tuple[str, _Origin]],
        targets: list[tuple[TargetSpec, _Origin]],
        task: str,
    ) -> list[Variant]:
        if source is None:
            return []
        variants, problems = expand([q for q, _ in quants], [t for t, _ in targets], source.kind, task)
        for vp in problems:
            on_quant = vp.quant is not None and vp.blame == "quant"
            origin = quants[vp.quant][1] if vp.quant is not None and on_quant else targets[vp.target][1]
            if origin is not None and vp.blame == "backend":
                words = [w.upper() for w in origin[0].args]
                origin = (origin[0], words.index("BACKEND") + 1) if "BACKEND" in words else origin
            prefix = "" if origin is not None else f"TARGET {targets[vp.target][0].name}: "
            if origin is None:
                self.fail(None, None, vp.problem, prefix=prefix)
            else:
                self.fail(origin[0], origin[1], vp.problem)
        return variants

    def _infertask_word(self, source: Source | None, facts: SourceFacts, template: str | None) -> str:
        if facts.speech:
            return "transcribe"
        if facts.embedding:
            return "embed"
        if facts.classifier:
            return "classify"
        if template is not None or facts.chat_template:
            return "chat"
        if source is not None and source.kind == SourceKind.ONNX_FILE:
            return "tensor"
        if source is not None and facts.chat_template is None and source.kind != SourceKind.OCI:
            self.warnings.append(
                f"could not look inside {source.raw} (not on this machine), so TASK is taken as generate; "
                "write TASK chat|generate|embed|… to be sure"
            )
        return "generate"


def _unusable_path(raw: str, exc: OSError | ValueError) -> Problem:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return Problem(f"cannot use {printable(raw, 60)}: {reason}")


def _is_projector(source: Source) -> bool:
    """Whether a FROM names a multimodal projector GGUF (``general.architecture`` ``clip``)."""
    if source.kind != SourceKind.GGUF_FILE or source.path is None:
        return False
    from registry.gguf_info import GGUFFormatError, read_gguf_header  # the gguf extra

    try:
        return read_gguf_header(source.path).kv.get("general.architecture") == "clip"
    except (GGUFFormatError, OSError):
        return False


def build_plan(
    modelfile: Modelfile,
    *,
    context: Path,
    modelfile_path: Path | None,
    build_args: Mapping[str, str],
    quantize: Sequence[str] | None,
    targets: Sequence[str] | None,
) -> BuildPlan:
    return _Planner(modelfile, context).run(build_args, quantize, targets, modelfile_path)


def make_plan(
    modelfile: Modelfile,
    *,
    context: Path,
    modelfile_path: Path | None = None,
    build_args: dict[str, str] | None = None,
    quantize: list[str] | None = None,
    targets: list[str] | None = None,
) -> BuildPlan:
    """Plan a parsed Modelfile: resolve paths against ``context`` (the Modelfile's folder), substitute
    ARGs (``build_args`` override their defaults), type PARAMETERs, expand QUANTIZE × TARGET into
    variants. ``quantize`` / ``targets`` (as on the command line) replace the file's QUANTIZE / TARGETs;
    a target string is written like TARGET's value (``"cuda:sm_90 BACKEND onnxruntime"``).

    Raises :class:`~ffbuild.errors.ModelfilePlanError` listing every problem found (in ``.more``).
    """
    return build_plan(
        modelfile,
        context=Path(context).resolve(),
        modelfile_path=modelfile_path,
        build_args=build_args or {},
        quantize=quantize,
        targets=targets,
    )


def plan_file(path: str | Path, build_args: dict[str, str] | None = None, **overrides: Any) -> BuildPlan:
    """Parse and plan the Modelfile at ``path`` (a file, or a folder holding ``Modelfile``)."""
    file = Path(path)
    if file.is_dir():
        file = file / "Modelfile"
    file = file.resolve()
    return make_plan(
        parse_file(file), context=file.parent, modelfile_path=file, build_args=build_args, **overrides
    )
