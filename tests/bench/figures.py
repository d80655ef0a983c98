"""Printing a benchmark's figures: JSON for machines, aligned lines for people."""

from __future__ import annotations

import json
from typing import Any


def print_results(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    width = max(map(len, results), default=0) + 2
    for name, value in results.items():
        print(f"{name:{width}} {value:>12,}" if isinstance(value, int) else f"{name:{width}} {value:>12}")
