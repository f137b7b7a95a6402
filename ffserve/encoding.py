"""JSON bodies, written once for every response and every stream line: orjson.

orjson writes a 384-float embedding in 11 µs where ``json.dumps`` took 178 µs here, and writes numpy
arrays itself: float32 vectors come out as float32's shortest form (``0.9160947``, as Ollama's Go
server writes them) instead of the float64 expansion of the same value (``0.9160947203636169``), half
the bytes for every client to read. NaN and infinity become ``null``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=OPTIONS)


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSON response, rendered by :func:`dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
