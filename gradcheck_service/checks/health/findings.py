"""One diagnosis finding: what was measured where, against which threshold, what it means and what to do."""

from __future__ import annotations

import math

from ...report.health import Finding as Finding
from ...report.health import FindingKind as FindingKind


def one_significant_figure(value: float) -> float:
    """``value`` rounded down to one significant figure (e.g. 4.7 -> 4, 0.0372 -> 0.03), for suggested settings."""
    if not math.isfinite(value) or value <= 0:
        return value
    exponent = 10.0 ** math.floor(math.log10(value))
    return float(int(value / exponent * (1 + 1e-12)) * exponent)
