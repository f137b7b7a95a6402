"""HTTP load from ``wrk`` (Debian's ``wrk``, a C load generator): the lightest client for a server
that shares its 2 cores with the client.

A Python client spends CPU on every request on the same cores as the server it measures: aiohttp
0.24 ms a request here, httpx 1.3 ms, against ~0.03 ms for wrk. Against a bare ASGI app on uvicorn
(``bench/serve_overhead.py``) aiohttp's round trip took 0.31 ms and wrk's 0.12 ms, so on these
machines a Python client's own cost is the size of a whole MiniLM int8 model run's margin.

``rate(url, bodies, connections, seconds)``: requests/s of ``POST url`` with ``connections`` requests
in flight (1: one after the other), cycling through ``bodies`` (JSON strings); any answer that is not
2xx is an error. ``free_port()``: a port on 127.0.0.1 for a server the benchmark starts.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

_SCRIPT = """local bodies = {
%s
}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which("wrk") is not None


def rate(url: str, bodies: Sequence[str], connections: int, seconds: float) -> float:
    """Requests/s that ``wrk`` got from ``POST url`` with ``connections`` connections for ``seconds``
    (wrk counts the requests that ended in that time: a request must take a small part of it)."""
    if not available():
        raise SystemExit("wrk is not installed: apt-get install wrk (or pick --client aiohttp)")
    for b in bodies:
        if "]==]" in b:
            raise ValueError("a body holds the Lua string delimiter ]==]")
    lua = _SCRIPT % ",\n".join(f"[==[{b}]==]" for b in bodies)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua)
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout=10s"]
        cmd += ["-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    if "Non-2xx" in out or "Socket errors" in out or re.search(r"\b0 requests in", out):
        raise RuntimeError(f"wrk saw failed requests, or none finished:\n{out}")
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if found is None:
        raise RuntimeError(f"no rate in wrk's output:\n{out}")
    return float(found.group(1))
