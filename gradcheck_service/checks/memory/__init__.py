"""The memory profile of one training step (``profile``): exact static figures, activations and the peak
measured by an allocation tracker (``allocations``), checkpointing trade-offs, batch scaling and mixed precision.

The report models of this section live in :mod:`gradcheck_service.report.memory`; they are importable from here
too, as they were before the report became a package.
"""

from ...report.memory import BatchScaling as BatchScaling
from ...report.memory import CheckpointingPlan as CheckpointingPlan
from ...report.memory import MemoryProfile as MemoryProfile
from ...report.memory import PrecisionComparison as PrecisionComparison
