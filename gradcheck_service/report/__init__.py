"""The versioned report of one check, every section of it, its units and its JSON Schema.

Everything downstream (CLI, service database, dashboard, CI gate) reads these models, so fields are only ever added;
a change that removes or renames one bumps ``SCHEMA_VERSION``'s major number. Its JSON is strict: a non-finite
float is written as the string "NaN", "Infinity" or "-Infinity" and read back as the float (see ``strict_json``).

The report is data: this package imports nothing from ``checks/`` (the engine fills these models; an import
contract in ``pyproject.toml`` keeps it that way), so the CLI, CI and the service read reports without the numerics.
"""

from .gradients import Coordinate, GradientCheck, InterpretedKernel, Localization, ModuleCheck, TensorCheck
from .health import (
    Diagnosis,
    Finding,
    FindingKind,
    GradientNorms,
    InputGradient,
    LayerSignal,
    ParameterGradient,
    ReluActivity,
)
from .memory import (
    BatchScaling,
    CheckpointCandidate,
    CheckpointingPlan,
    MemoryProfile,
    ModuleActivation,
    OptimizerState,
    PrecisionComparison,
    PrecisionParameter,
)
from .model import SCHEMA_VERSION, Environment, ModelInfo, Report, Timings
from .schema import SCHEMA_PATH, report_json_schema, write_json_schema

__all__ = [
    "SCHEMA_PATH", "SCHEMA_VERSION", "BatchScaling", "CheckpointCandidate", "CheckpointingPlan", "Coordinate",
    "Diagnosis", "Environment", "Finding", "FindingKind", "GradientCheck", "GradientNorms", "InputGradient",
    "InterpretedKernel", "LayerSignal", "Localization", "MemoryProfile", "ModelInfo", "ModuleActivation", "ModuleCheck",
    "OptimizerState", "ParameterGradient", "PrecisionComparison", "PrecisionParameter", "ReluActivity", "Report",
    "TensorCheck", "Timings", "report_json_schema", "write_json_schema",
]
