"""One row of a benchmark record: the shape shared by ``lenet bench``'s benchmarks and its JSON."""

from __future__ import annotations


def row(name: str, value, unit: str, target: str = "", meets: bool | None = None, **extra) -> dict:
    """One line of the results table (and of the JSON)."""
    return {"name": name, "value": value, "unit": unit, "target": target, "meets": meets, **extra}
