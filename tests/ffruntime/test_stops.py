"""Stop strings for every text runtime: which ones a request has, and where they end its text, however
the generated pieces split them."""

from __future__ import annotations

import pytest

from ffruntime.runtime import RequestRejected
from ffruntime.stops import StopScanner, held_tail, stop_strings


def feed_all(scanner: StopScanner, pieces: list[str]) -> str:
    return "".join(scanner.feed(p) for p in pieces) + scanner.flush()


def test_the_request_stops_come_first_then_the_template_s_each_once() -> None:
    assert stop_strings({"stop": ["b", "a", "b"]}, ["<|end|>", "a", ""]) == ["b", "a", "<|end|>"]
    assert stop_strings({"stop": "x"}) == ["x"]
    assert stop_strings({"stop": ["", "y"]}, []) == ["y"]
    assert stop_strings({}, ["<|im_end|>"]) == ["<|im_end|>"]


@pytest.mark.parametrize("bad", [3, [1, "a"], True])
def test_a_stop_option_that_is_not_strings_is_rejected(bad: object) -> None:
    with pytest.raises(RequestRejected, match="option stop must be a list of strings"):
        stop_strings({"stop": bad})  # type: ignore[dict-item]


def test_a_prefix_is_held_back_until_it_is_decided() -> None:
    s = StopScanner(["<|end|>"])
    assert s.feed("Hello <|") == "Hello "
    assert s.feed("en") == ""
    assert s.feed("d|> more") == "" and s.stopped
    assert s.feed("after") == "" and s.flush() == ""
    s = StopScanner(["ab"])
    assert s.feed("xa") == "x" and s.feed("c") == "ac" and not s.stopped


@pytest.mark.parametrize("cut", range(1, 18))
def test_a_stop_string_split_anywhere_is_never_shown(cut: int) -> None:
    text = "Hello <|end|> more"
    s = StopScanner(["<|end|>"])
    assert feed_all(s, [text[:cut], text[cut:]]) == "Hello "
    assert s.stopped


def test_what_is_held_at_the_end_comes_out_when_no_stop_string_came() -> None:
    s = StopScanner(["STOP"])
    assert s.feed("a ST") == "a "
    assert s.flush() == "ST" and not s.stopped


def test_earliest_stop_wins_and_tail_length() -> None:
    assert feed_all(StopScanner(["b", "a"]), ["xxab"]) == "xx"
    assert feed_all(StopScanner([]), ["any", "thing"]) == "anything"
    assert held_tail("abc", ["cde", "bcx"]) == 2
    assert held_tail("abc", ["zz"]) == 0


def test_the_scanner_says_which_stop_string_ended_the_text() -> None:
    s = StopScanner(["END", "STOP"])
    assert s.feed("one ST") == "one " and s.matched is None
    assert s.feed("OP and END") == "" and s.stopped and s.matched == "STOP"
    early = StopScanner(["b", "abc"])
    assert early.feed("xabc") == "x" and early.matched == "abc"  # the first to begin in the text wins
