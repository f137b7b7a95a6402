"""``python -m ffserve [--host] [--port] [--models …]``: the same as ``ff serve``."""

from __future__ import annotations

from ffserve.cli import main

if __name__ == "__main__":
    main()
