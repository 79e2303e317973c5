"""Where the benchmarks (fastjl's and trak_core's) write their JSON results."""

from __future__ import annotations

import datetime
import json
from pathlib import Path


def save_json(folder: str, prefix: str, payload: dict) -> Path:
    """Writes ``<folder>/<prefix>-<local date-time>.json`` and says so."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    path = path / f"{prefix}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
