"""Tools in prompts: the model's own template when it knows tools, the system-prompt fallback otherwise."""

from __future__ import annotations

import json

from ffruntime.prompting import ModelPrompting, build_prompt
from ffruntime.runtime import ChatMessage, GenerationRequest, ToolCall

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The shape of Qwen 2.5's template: tools in the system turn, calls and results in their own tags.
TOOL_JINJA = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
    "</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TURNS = [
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "call_1"),)),
    ChatMessage("tool", "18 degrees, sunny", tool_name="get_weather", tool_call_id="call_1"),
]


def _model(chat_template: str | None = None, template: str | None = None) -> ModelPrompting:
    return ModelPrompting(
        template=template, system=None, messages=(), chat_template=chat_template, eos_token="<|im_end|>"
    )


def test_jinja_template_with_tool_support_renders_them_itself() -> None:
    prompt, stops = build_prompt(GenerationRequest(messages=TURNS, tools=[TOOL]), _model(TOOL_JINJA))
    assert json.dumps(TOOL) in prompt and "<tools>" in prompt
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    assert "<tool_response>18 degrees, sunny</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n") and stops == ["<|im_end|>"]
    assert "You can call" not in prompt  # no fallback text


def test_template_without_tools_gets_the_system_prompt_fallback() -> None:
    req = GenerationRequest(messages=[ChatMessage("system", "Be brief."), *TURNS], tools=[TOOL])
    prompt, _ = build_prompt(req, _model(CHATML))
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.") and json.dumps(TOOL) in system
    assert "<tool_call>" in system  # the calling convention is explained
    assert "<|im_start|>assistant\n<tool_call>" in prompt  # the earlier call, written back
    assert '<|im_start|>user\n<tool_response name="get_weather">\n18 degrees, sunny' in prompt
    plain, _ = build_prompt(GenerationRequest(messages=TURNS[:1]), _model(CHATML))
    assert "tool" not in plain  # no tools, no tool text


def test_go_template_with_tools_and_calls() -> None:
    template = (
        "{{ if .Tools }}[TOOLS]{{ range .Tools }}{{ .Function }}{{ end }}[/TOOLS]{{ end }}"
        '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ range .ToolCalls }}CALL {{ .Function.Name }} '
        "{{ .Function.Arguments }}{{ end }}{{ else }}<{{ .Role }}>{{ .Content }}{{ end }}{{ end }}"
    )
    prompt, _ = build_prompt(GenerationRequest(messages=TURNS, tools=[TOOL]), _model(template=template))
    assert prompt.startswith("[TOOLS]" + json.dumps(TOOL["function"]) + "[/TOOLS]")
    assert 'CALL get_weather {"city": "Paris"}' in prompt and "<tool>18 degrees, sunny" in prompt


def test_go_template_without_tools_falls_back() -> None:
    template = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:"
    prompt, _ = build_prompt(GenerationRequest(messages=TURNS[:1], tools=[TOOL]), _model(template=template))
    assert (
        prompt.startswith("S:You can call")
        and "get_weather" in prompt
        and prompt.endswith("U:Weather in Paris?\nA:")
    )
