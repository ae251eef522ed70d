"""One diagnosis finding: what was measured where, against which threshold, what it means and what to do."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from ..strict_json import REPORT_MODEL_CONFIG

FindingKind = Literal[
    "vanishing", "exploding", "nonfinite", "dead_relu", "checkpoint_mismatch", "precision", "underflow"
]


class Finding(BaseModel):
    """A problem found in the gradient flow or the memory profile, in words a user can act on."""

    model_config = REPORT_MODEL_CONFIG

    kind: FindingKind
    where: str = Field(description="Qualified module or parameter name ('' is the whole model).")
    measured: float = Field(description="The measured value that triggered the finding (units in `explanation`).")
    threshold: float = Field(description="The threshold it crossed (see HealthThresholds).")
    explanation: str
    suggestion: str


def one_significant_figure(value: float) -> float:
    """``value`` rounded down to one significant figure (e.g. 4.7 -> 4, 0.0372 -> 0.03), for suggested settings."""
    if not math.isfinite(value) or value <= 0:
        return value
    exponent = 10.0 ** math.floor(math.log10(value))
    return float(int(value / exponent * (1 + 1e-12)) * exponent)
