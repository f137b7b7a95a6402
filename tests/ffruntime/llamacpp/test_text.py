"""Per-sequence text: whole UTF-8 characters and stop strings, however the tokens split them (the stop
strings themselves: tests/ffruntime/test_stops.py)."""

from __future__ import annotations

import pytest

from ffruntime.llamacpp.text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_a_character_split_over_tokens_comes_out_whole() -> None:
    s = TextStream([])
    data = "né 😊".encode()
    outs = [s.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(outs) == "né 😊"
    assert all("\ufffd" not in o for o in outs)
    assert outs[-1] == "😊"  # released only once its four bytes were there


def test_an_incomplete_character_at_the_end_is_replaced() -> None:
    s = TextStream([])
    assert s.feed(b"ok\xf0\x9f") == "ok"
    assert s.flush() == "\ufffd"


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_stop_string_split_anywhere_is_never_shown(cut: int) -> None:
    text = b"Hello <|end|> more"
    s = TextStream(["<|end|>"])
    out = feed_all(s, [text[:cut], text[cut:]])
    assert out == "Hello "
    assert s.stopped


def test_a_held_prefix_that_does_not_complete_is_released() -> None:
    s = TextStream(["STOP"])
    assert s.feed(b"a ST") == "a "
    assert s.feed(b"ART") == "START"
    assert s.flush() == "" and not s.stopped


def test_a_stop_string_after_a_split_character() -> None:
    s = TextStream(["é!"])
    data = "ok é! no".encode()
    assert feed_all(s, [data[i : i + 1] for i in range(len(data))]) == "ok "
    assert s.stopped
