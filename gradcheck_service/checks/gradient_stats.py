"""The measured gradient statistics of one training step: per parameter, per float input, per layer output (the
backward signal through depth) and per ReLU. :mod:`.health` measures them; :mod:`.diagnosis` reads them. The
models are report sections and live in :mod:`gradcheck_service.report.health`.
"""

from ..report.health import (
    GradientNorms as GradientNorms,
)
from ..report.health import (
    InputGradient as InputGradient,
)
from ..report.health import (
    LayerSignal as LayerSignal,
)
from ..report.health import (
    ParameterGradient as ParameterGradient,
)
from ..report.health import (
    ReluActivity as ReluActivity,
)
