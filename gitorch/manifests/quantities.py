"""Quantities as users write them: cpu, memory and durations.

cpu: ``250m``, ``0.5``, ``2`` -> millicores (int). memory: ``64Mi``, ``1Gi``, ``500M``, plain
bytes -> bytes (int). durations: ``500ms``, ``30s``, ``5m``, ``1h``, ``1m30s`` or a number of
seconds -> seconds (float). Percentages: ``"25%"`` resolved against a total.
"""

from __future__ import annotations

import math
import re

_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
_CPU = re.compile(r"^(?:([0-9]+)m|([0-9]+(?:\.[0-9]+)?))$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class QuantityError(ValueError):
    """A quantity that does not parse; the message says what was expected."""


def parse_cpu(value: str | int | float) -> int:
    """Millicores: ``"250m"`` -> 250, ``0.5`` -> 500, ``"2"`` -> 2000."""
    if isinstance(value, bool):
        raise QuantityError(f"invalid cpu quantity {value!r} (use 250m, 0.5 or 2)")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise QuantityError(f"invalid cpu quantity {value!r} (use 250m, 0.5 or 2)")
        return round(value * 1000)
    match = _CPU.match(str(value))
    if not match:
        raise QuantityError(f"invalid cpu quantity {value!r} (use 250m, 0.5 or 2)")
    if match.group(1) is not None:
        return int(match.group(1))
    return round(float(match.group(2)) * 1000)


def format_cpu(millicores: int) -> str:
    """Canonical cpu text: whole cores as ``"2"``, otherwise ``"250m"``."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def parse_memory(value: str | int | float) -> int:
    """Bytes: ``"64Mi"`` -> 67108864, ``"500M"`` -> 500000000, ``1024`` -> 1024."""
    if isinstance(value, bool):
        raise QuantityError(f"invalid memory quantity {value!r} (use 64Mi, 1Gi, 500M or bytes)")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise QuantityError(f"invalid memory quantity {value!r} (use 64Mi, 1Gi, 500M or bytes)")
        return int(value)
    match = _MEMORY.match(str(value))
    if not match:
        raise QuantityError(f"invalid memory quantity {value!r} (use 64Mi, 1Gi, 500M or bytes)")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""])


def format_memory(size: int) -> str:
    """Canonical memory text: the largest binary unit that divides exactly, else bytes."""
    for unit in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _MEMORY_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def human_memory(size: int) -> str:
    """Rounded memory for people (tables): ``25276518400`` -> ``"23.5Gi"``."""
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if value < 1024 or unit == "Pi":
            return f"{value:.1f}{unit}".replace(".0", "") if unit else f"{int(value)}"
        value /= 1024
    return str(size)


def parse_duration(value: str | int | float) -> float:
    """Seconds: ``"500ms"`` -> 0.5, ``"1m30s"`` -> 90.0, ``10`` -> 10.0."""
    if isinstance(value, bool):
        raise QuantityError(f"invalid duration {value!r} (use 500ms, 30s, 5m, 1h or seconds)")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise QuantityError(f"invalid duration {value!r} (use 500ms, 30s, 5m, 1h or seconds)")
        return float(value)
    text = str(value)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise QuantityError(f"invalid duration {value!r} (use 500ms, 30s, 5m, 1h or seconds)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Canonical duration text: ``90.0`` -> ``"1m30s"``, ``0.5`` -> ``"500ms"``."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    out = ""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            out += f"{count}{unit}"
    return out


def resolve_int_or_percent(value: int | str, total: int, *, round_up: bool) -> int:
    """``maxSurge``-style values: a count, or a percentage of ``total`` rounded as asked."""
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    exact = total * percent / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def is_zero_int_or_percent(value: int | str) -> bool:
    return value == 0 or value == "0%"
