"""The one chat-template renderer (ffruntime.prompting): the environment Hugging Face templates expect."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ffruntime.prompting import (
    ChatTemplateError,
    ModelfilePrompt,
    ModelPrompting,
    build_prompt,
    model_prompting,
    question_prompt,
    render_jinja,
)
from ffruntime.runtime import ChatMessage, GenerationRequest

USER = [ChatMessage("user", "Hi <there> & \"you\" é")]


def _jinja(template: str, msgs: list[ChatMessage] = USER) -> str:
    return render_jinja(ModelPrompting(None, None, (), chat_template=template), msgs, None)


def test_strftime_now_gives_the_date_of_rendering() -> None:
    before = datetime.now(UTC)
    out = _jinja("Today is {{ strftime_now('%d %b %Y') }}.")
    after = datetime.now(UTC)
    assert out in {f"Today is {t.strftime('%d %b %Y')}." for t in (before, after)}


def test_tojson_is_plain_json_with_transformers_options() -> None:
    content = USER[0].content
    plain = json.dumps({"role": "user", "content": content}, ensure_ascii=False)
    assert _jinja("{{ messages[0] | tojson }}") == plain
    assert "&#34;" not in _jinja("{{ messages[0].content | tojson }}")  # Jinja's own filter escapes HTML
    indented = _jinja("{{ {'b': 1, 'a': [2]} | tojson(indent=2, sort_keys=True) }}")
    assert indented == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}'
    assert _jinja("{{ {'a': 1} | tojson(separators=(',', ':')) }}") == '{"a":1}'
    assert _jinja("{{ 'é' | tojson(ensure_ascii=True) }}") == '"\\u00e9"'


def test_raise_exception_refuses_the_messages() -> None:
    template = (
        "{% if messages[0].role != 'system' %}{{ raise_exception('a system turn comes first') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="a system turn comes first"):
        _jinja(template)
    model = ModelPrompting(None, None, (), chat_template=template)
    with pytest.raises(ValueError, match="cannot render the model's template: a system turn comes first"):
        build_prompt(GenerationRequest(messages=USER), model)
    assert _jinja(template, [ChatMessage("system", "s"), *USER]) == ""


def test_blocks_are_trimmed_and_loop_controls_work() -> None:
    msgs = [ChatMessage("user", str(i)) for i in range(6)]
    template = (
        "{% for m in messages %}\n"
        "    {% if m.content == '1' %}{% continue %}{% endif %}\n"
        "    {% if m.content == '4' %}{% break %}{% endif %}\n"
        "[{{ m.content }}]\n"
        "{% endfor %}"
    )
    assert _jinja(template, msgs) == "[0]\n[2]\n[3]\n"


def test_generation_blocks_render_their_body() -> None:
    template = "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}"
    assert _jinja(template, [ChatMessage("assistant", "a"), ChatMessage("assistant", "b")]) == "<a><b>"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.append({'role': 'user', 'content': 'x'}) }}",  # the sandbox is immutable
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ undefined_function() }}",
    ],
)
def test_the_sandbox_refuses_what_a_template_may_not_do(template: str) -> None:
    with pytest.raises(ChatTemplateError):
        _jinja(template)


def test_a_template_that_does_not_parse_is_a_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        _jinja("{% for m in messages %}never closed")


def test_special_tokens_and_generation_prompt() -> None:
    template = "{{ bos_token }}{{ messages[0].content }}{% if add_generation_prompt %}>{% endif %}"
    model = ModelPrompting(None, None, (), chat_template=template, bos_token="<s>", eos_token="</s>")
    assert build_prompt(GenerationRequest(messages=USER), model) == (f"<s>{USER[0].content}>", ["</s>"])


def test_the_modelfile_template_wins_over_the_model_s_own() -> None:
    earlier = [{"role": "user", "content": "Earlier"}]
    modelfile = ModelfilePrompt.of("Q: {{ .Prompt }} A:", "Be brief.", earlier)
    assert modelfile.messages == (ChatMessage("user", "Earlier"),)
    model = model_prompting(modelfile, "{{ messages | tojson }}", bos_token="<s>")
    assert model.chats and model.template == "Q: {{ .Prompt }} A:" and model.bos_token == "<s>"
    prompt, stops = question_prompt(model, "Why?")
    assert prompt == "Q: Earlier A:Q: Why? A:" and stops == []  # Ollama's one render per user turn
    own = model_prompting(ModelfilePrompt(system="Be brief."), "{{ messages | tojson }}")
    assert json.loads(question_prompt(own, "Why?")[0]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]


def test_a_model_without_a_template_is_asked_with_the_raw_question() -> None:
    model = model_prompting(ModelfilePrompt(system="Be brief."), None)
    assert not model.chats
    assert question_prompt(model, "Why?") == ("Be brief.\nWhy?", [])
    assert question_prompt(model_prompting(ModelfilePrompt(), ""), "Why?") == ("Why?", [])


def test_renders_as_transformers_does() -> None:
    """The same template, messages and tools through transformers' own chat-template renderer."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = (
        "{% if tools %}{% for t in tools %}{{ t | tojson(indent=1) }}\n{% endfor %}{% endif %}"
        "{% for m in messages %}\n  {% if loop.index > 3 %}{% break %}{% endif %}\n"
        "<|{{ m.role }}|>{% generation %}{{ m.content }}{% endgeneration %}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        "{{ strftime_now('%Y') }}"
    )
    tool = {"type": "function", "function": {"name": "f", "description": "<é>", "parameters": {}}}
    msgs = [ChatMessage("system", "S & <s>"), *USER, ChatMessage("assistant", "a"), ChatMessage("user", "b")]
    model = ModelPrompting(None, None, (), chat_template=template, bos_token="<s>", eos_token="</s>")
    ours = render_jinja(model, msgs, [tool])
    conversation = [{"role": m.role, "content": m.content} for m in msgs]
    theirs, _ = utils.render_jinja_template(
        conversations=[conversation], tools=[tool], chat_template=template, add_generation_prompt=True,
        bos_token="<s>", eos_token="</s>",
    )
    assert ours == theirs[0]
    assert "<|user|>b" not in ours and '"<é>"' in ours and "<|assistant|>" in ours  # break, no escaping
