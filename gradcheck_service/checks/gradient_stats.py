"""The measured gradient statistics of one training step: per parameter, per float input, per layer output (the
backward signal through depth) and per ReLU. :mod:`.health` measures them; :mod:`.diagnosis` reads them. The
models are report sections and live in :mod:`gradcheck_service.report.health`.
"""

from ..report.health import GradientNorms, InputGradient, LayerSignal, ParameterGradient, ReluActivity  # noqa: F401
