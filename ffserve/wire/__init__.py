"""Wire types: request bodies as pydantic models (hostile input is validated here) and response shapes."""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ffserve.errors import BadRequest

M = TypeVar("M", bound=BaseModel)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(data: object) -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (which has no UTF-8 form), or None."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{path}.{k}" if path else str(k), k))
                stack.append((f"{path}.{k}" if path else str(k), v))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return None


async def parse_body(request: Request, model: type[M]) -> M:
    """Read and validate a JSON body (size already limited by the middleware); 400 on anything wrong."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and (where := _lone_surrogate(data)) is not None:
        raise BadRequest(f"invalid request: {where}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not text")
    try:
        return model.model_validate(data, strict=True)  # JSON types as sent: no "1" for 1, no 1 for true
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"invalid request: {errs}") from None
