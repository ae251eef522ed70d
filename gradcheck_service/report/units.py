"""The units a report's figures are read and written in: bytes as '1.50 KiB', sizes given as '16GiB'."""

from __future__ import annotations

import re

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units with three significant digits: 1536 -> '1.50 KiB', 512 -> '512 B'."""
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    for unit in _BYTE_UNITS[:-1]:
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.3g} {unit}"
        value /= 1024
    return f"{sign}{value:.3g} {_BYTE_UNITS[-1]}"


def parse_bytes(text: str) -> int:
    """A size as people write it -> bytes: '16GiB' -> 17179869184, '512MB' -> 512000000; plain numbers are bytes.

    Raises ValueError (saying what a size looks like) for anything else."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size like 16GiB, 512MB or 1000000")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
