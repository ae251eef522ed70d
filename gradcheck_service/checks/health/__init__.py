"""Gradient health: per-parameter and per-layer gradient statistics of one training step (``flow``), and the
vanishing/exploding/dead-unit diagnosis read from them (``diagnosis``, ``findings``).

The report models of this section live in :mod:`gradcheck_service.report.health`; they are importable from here
too, as they were before the report became a package.
"""

from ...report.health import Diagnosis as Diagnosis
from ...report.health import Finding as Finding
from ...report.health import GradientNorms as GradientNorms
