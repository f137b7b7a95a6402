"""Stop strings, for every text runtime: which ones a request has, and where they end its text.

:func:`stop_strings` reads them: the ``stop`` option (the request's, else the Modelfile ``PARAMETER``'s)
and then the template's own. :class:`StopScanner` takes generated text as it comes; a stop string can
arrive split over several tokens, so it holds back a tail that could begin one and releases the rest,
and at the first stop string it cuts the text there. No stop string, nor a piece of one, is ever shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ffruntime.runtime import ParamValue, RequestRejected


def stop_strings(options: Mapping[str, ParamValue], template_stops: Sequence[str] = ()) -> list[str]:
    """The request's stop strings and then the template's, each once, none empty."""
    stop = options.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
        raise RequestRejected("option stop must be a list of strings")
    return [s for s in dict.fromkeys([*stop, *template_stops]) if s]


def held_tail(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin one of ``stops``."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class StopScanner:
    """Feed text; get back the text that is now certain, and :attr:`stopped` once a stop string ended it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""  # text not yet released (it could begin a stop string)
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """The text released by ``text`` (empty while undecided); sets :attr:`stopped` at a stop string."""
        if self.stopped:
            return ""
        text = self.pending + text
        cut, self.matched = min(
            ((i, s) for s in self.stops if (i := text.find(s)) >= 0), default=(-1, None)
        )
        if cut >= 0:
            self.stopped = True
            self.pending = ""
            return text[:cut]
        keep = held_tail(text, self.stops)
        self.pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is still held when the generation ends otherwise (nothing after a stop string)."""
        text, self.pending = self.pending, ""
        return text
