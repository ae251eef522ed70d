"""The layer vocabulary of the declarative model spec: one strict pydantic model per layer ``type``.

Sizes that follow from the previous layer (``in_features``, ``in_channels`` ...) may be omitted; :mod:`.shapes`
fills them in and reports a mismatch when one is given wrongly.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ..strict_json import StrictModel

MAX_DIM = 2**31 - 1  # no tensor dimension, channel count or kernel may exceed what an int32 index can address

Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_DIM)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Pair = Annotated[list[Dim], Field(min_length=2, max_length=2)]
NonNegPair = Annotated[list[NonNegInt], Field(min_length=2, max_length=2)]
AxisIndex = Annotated[int, Field(ge=-16, le=15)]


class _Strict(StrictModel):
    """A layer of a spec: types as written (no coercion of "3" to 3) and immutable once parsed."""

    model_config = ConfigDict(strict=True, frozen=True)


# --- weight initialisation -------------------------------------------------------------------------------------


class InitSpec(_Strict):
    """How a layer's weights (parameters with 2+ dimensions) and biases are initialised.

    ``gain`` multiplies the weights after the scheme, so ``{"gain": 3}`` gives a large-init stack and
    ``{"scheme": "normal", "std": 0.01}`` a small-init one.
    """

    scheme: Literal[
        "default",
        "normal",
        "uniform",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "orthogonal",
    ] = "default"
    std: PositiveFloat | None = Field(None, description="standard deviation, only for scheme 'normal' (default 1)")
    bound: PositiveFloat | None = Field(None, description="U(-bound, bound), only for scheme 'uniform' (default 1)")
    gain: PositiveFloat = Field(1.0, description="factor applied to the weights after the scheme")
    bias: Literal["default", "zeros"] = "default"

    @field_validator("std")
    @classmethod
    def _std_needs_normal(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("scheme") != "normal":
            raise ValueError("'std' applies only to scheme 'normal'")
        return value

    @field_validator("bound")
    @classmethod
    def _bound_needs_uniform(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("scheme") != "uniform":
            raise ValueError("'bound' applies only to scheme 'uniform'")
        return value


# --- layers ----------------------------------------------------------------------------------------------------


class Linear(_Strict):
    type: Literal["linear"]
    in_features: Dim | None = Field(None, description="inferred from the previous output when omitted")
    out_features: Dim
    bias: bool = True
    init: InitSpec | None = None


class _Conv(_Strict):
    in_channels: Dim | None = Field(None, description="inferred from the previous output when omitted")
    out_channels: Dim
    groups: Dim = 1
    bias: bool = True
    init: InitSpec | None = None


class Conv1d(_Conv):
    type: Literal["conv1d"]
    kernel_size: Dim
    stride: Dim = 1
    padding: NonNegInt | Literal["same", "valid"] = 0
    dilation: Dim = 1


class Conv2d(_Conv):
    type: Literal["conv2d"]
    kernel_size: Dim | Pair
    stride: Dim | Pair = 1
    padding: NonNegInt | NonNegPair | Literal["same", "valid"] = 0
    dilation: Dim | Pair = 1


class _Pool1d(_Strict):
    kernel_size: Dim
    stride: Dim | None = Field(None, description="defaults to kernel_size")
    padding: NonNegInt = 0


class _Pool2d(_Strict):
    kernel_size: Dim | Pair
    stride: Dim | Pair | None = Field(None, description="defaults to kernel_size")
    padding: NonNegInt | NonNegPair = 0


class MaxPool1d(_Pool1d):
    type: Literal["max_pool1d"]


class MaxPool2d(_Pool2d):
    type: Literal["max_pool2d"]


class AvgPool1d(_Pool1d):
    type: Literal["avg_pool1d"]


class AvgPool2d(_Pool2d):
    type: Literal["avg_pool2d"]


class AdaptiveAvgPool1d(_Strict):
    type: Literal["adaptive_avg_pool1d"]
    output_size: Dim


class AdaptiveAvgPool2d(_Strict):
    type: Literal["adaptive_avg_pool2d"]
    output_size: Dim | Pair


class _BatchNorm(_Strict):
    num_features: Dim | None = Field(None, description="inferred from the previous output when omitted")
    eps: PositiveFloat = 1e-5
    momentum: Probability = 0.1
    affine: bool = True


class BatchNorm1d(_BatchNorm):
    type: Literal["batch_norm1d"]


class BatchNorm2d(_BatchNorm):
    type: Literal["batch_norm2d"]


class LayerNorm(_Strict):
    type: Literal["layer_norm"]
    normalized_shape: Dim | Annotated[list[Dim], Field(min_length=1, max_length=8)] | None = Field(
        None, description="trailing dimensions to normalise; the last dimension when omitted"
    )
    eps: PositiveFloat = 1e-5
    elementwise_affine: bool = True


class Embedding(_Strict):
    type: Literal["embedding"]
    num_embeddings: Dim
    embedding_dim: Dim
    padding_idx: NonNegInt | None = None
    init: InitSpec | None = None


class _Recurrent(_Strict):
    input_size: Dim | None = Field(None, description="inferred from the previous output when omitted")
    hidden_size: Dim
    num_layers: Annotated[int, Field(ge=1, le=64)] = 1
    bidirectional: bool = False
    bias: bool = True
    dropout: Probability = 0.0
    output: Literal["sequence", "last", "hidden"] = Field(
        "sequence",
        description="'sequence': every step (batch, time, hidden*directions); 'last': the output at the last "
        "step (batch, hidden*directions); 'hidden': the top layer's final hidden state (batch, hidden*directions)",
    )
    init: InitSpec | None = None


class LSTM(_Recurrent):
    type: Literal["lstm"]


class GRU(_Recurrent):
    type: Literal["gru"]


class MultiheadAttention(_Strict):
    """Self-attention over (batch, time, embed_dim): query, key and value are all the layer's input."""

    type: Literal["multihead_attention"]
    embed_dim: Dim | None = Field(None, description="inferred from the previous output when omitted")
    num_heads: Dim
    dropout: Probability = 0.0
    bias: bool = True
    causal: bool = Field(False, description="mask future steps")
    init: InitSpec | None = None


class ReLU(_Strict):
    type: Literal["relu"]


class LeakyReLU(_Strict):
    type: Literal["leaky_relu"]
    negative_slope: FiniteFloat = 0.01


class GELU(_Strict):
    type: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"


class Tanh(_Strict):
    type: Literal["tanh"]


class Sigmoid(_Strict):
    type: Literal["sigmoid"]


class SiLU(_Strict):
    type: Literal["silu"]


class ELU(_Strict):
    type: Literal["elu"]
    alpha: FiniteFloat = 1.0


class Softplus(_Strict):
    type: Literal["softplus"]
    beta: PositiveFloat = 1.0
    threshold: PositiveFloat = 20.0


class Softmax(_Strict):
    type: Literal["softmax"]
    dim: AxisIndex = -1


class LogSoftmax(_Strict):
    type: Literal["log_softmax"]
    dim: AxisIndex = -1


class Dropout(_Strict):
    type: Literal["dropout"]
    p: Probability = 0.5


class Flatten(_Strict):
    type: Literal["flatten"]
    start_dim: AxisIndex = 1
    end_dim: AxisIndex = -1


class Residual(_Strict):
    """``x + f(x)`` where ``f`` is the inner ``layers``; f must keep the shape of x."""

    type: Literal["residual"]
    layers: Annotated[list[Layer], Field(min_length=1)]


Layer = Annotated[
    Linear
    | Conv1d
    | Conv2d
    | MaxPool1d
    | MaxPool2d
    | AvgPool1d
    | AvgPool2d
    | AdaptiveAvgPool1d
    | AdaptiveAvgPool2d
    | BatchNorm1d
    | BatchNorm2d
    | LayerNorm
    | Embedding
    | LSTM
    | GRU
    | MultiheadAttention
    | ReLU
    | LeakyReLU
    | GELU
    | Tanh
    | Sigmoid
    | SiLU
    | ELU
    | Softplus
    | Softmax
    | LogSoftmax
    | Dropout
    | Flatten
    | Residual,
    Field(discriminator="type"),
]
Residual.model_rebuild()

LAYER_TYPES: tuple[str, ...] = tuple(
    get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(get_args(Layer)[0])
)
