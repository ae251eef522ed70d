"""Shape inference and size accounting for a spec, done on integers alone -- nothing is allocated.

Walking the layers with the running output shape lets us fill in omitted sizes (``in_features`` ...), report a
mismatch at the JSON path of the layer that causes it, and count parameters exactly (as PyTorch would allocate
them) so that a spec describing ten billion parameters is refused in microseconds.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import layers as ly
from . import spec as s
from .base import DefinitionError, Problem
from .spec import ModelSpec, SpecLimits, json_path


@dataclass(frozen=True)
class TensorInfo:
    """What flows between layers: a shape (batch first) and, for token ids, the integer range ``[low, high)``."""

    shape: tuple[int, ...]
    integer: bool = False
    low: int = 0
    high: int = 0

    def __str__(self) -> str:
        return f"{'int64' if self.integer else 'float'} tensor of shape {list(self.shape)}"


@dataclass
class Inference:
    """A spec with every omitted size filled in, plus what it will cost."""

    spec: ModelSpec
    output: TensorInfo
    parameters: int
    layer_count: int
    layer_parameters: dict[str, int] = field(default_factory=dict)  # JSON path -> parameter count


class _ShapeError(Exception):
    def __init__(self, fieldname: str | None, message: str) -> None:
        super().__init__(message)
        self.fieldname = fieldname
        self.message = message


class _Stop(Exception):
    pass


Rule = Callable[[Any, TensorInfo, bool], tuple[Any, TensorInfo, int]]


def _needs_float(info: TensorInfo) -> None:
    if info.integer:
        raise _ShapeError(None, f"expects a float tensor but gets the {info}; token ids need an 'embedding' first")


def _needs_rank(info: TensorInfo, ranks: tuple[int, ...], meaning: str) -> None:
    if len(info.shape) not in ranks:
        raise _ShapeError(None, f"expects a {meaning} input, but the previous output is a {info}")


def _check_given(layer: Any, name: str, given: int | None, actual: int, what: str, info: TensorInfo) -> Any:
    if given is not None and given != actual:
        raise _ShapeError(name, f"is {given} but the previous output has {actual} {what} ({info})")
    return layer.model_copy(update={name: actual})


def _tup(value: int | list[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _linear(layer: ly.Linear, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    _needs_rank(info, tuple(range(2, 9)), "(batch, ..., features)")
    n_in = info.shape[-1]
    layer = _check_given(layer, "in_features", layer.in_features, n_in, "features", info)
    params = n_in * layer.out_features + (layer.out_features if layer.bias else 0)
    return layer, TensorInfo((*info.shape[:-1], layer.out_features)), params


def _spatial_out(sizes: tuple[int, ...], k: tuple[int, ...], st: tuple[int, ...], p: tuple[int, ...],
                 d: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for axis, (n, kk, ss, pp, dd) in enumerate(zip(sizes, k, st, p, d, strict=True)):
        length = (n + 2 * pp - dd * (kk - 1) - 1) // ss + 1
        if length < 1:
            raise _ShapeError("kernel_size", f"the kernel (size {kk}, dilation {dd}) is larger than the padded input "
                              f"({n} + 2*{pp}) along spatial dimension {axis}")
        out.append(length)
    return tuple(out)


def _conv(layer: ly.Conv1d | ly.Conv2d, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    n = 1 if isinstance(layer, ly.Conv1d) else 2
    _needs_float(info)
    _needs_rank(info, (n + 2,), "(batch, channels, length)" if n == 1 else "(batch, channels, height, width)")
    channels = info.shape[1]
    layer = _check_given(layer, "in_channels", layer.in_channels, channels, "channels", info)
    if channels % layer.groups or layer.out_channels % layer.groups:
        raise _ShapeError("groups", f"{layer.groups} groups must divide both in_channels ({channels}) "
                          f"and out_channels ({layer.out_channels})")
    k, st, d = _tup(layer.kernel_size, n), _tup(layer.stride, n), _tup(layer.dilation, n)
    if layer.padding == "same":
        if any(x != 1 for x in st):
            raise _ShapeError("padding", "'same' padding needs stride 1")
        spatial = info.shape[2:]
    else:
        p = (0,) * n if layer.padding == "valid" else _tup(layer.padding, n)
        spatial = _spatial_out(info.shape[2:], k, st, p, d)
    weight = layer.out_channels * (channels // layer.groups) * math.prod(k)
    params = weight + (layer.out_channels if layer.bias else 0)
    return layer, TensorInfo((info.shape[0], layer.out_channels, *spatial)), params


def _pool(layer: Any, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    n = 1 if isinstance(layer, ly.MaxPool1d | ly.AvgPool1d) else 2
    _needs_float(info)
    _needs_rank(info, (n + 2,), "(batch, channels, length)" if n == 1 else "(batch, channels, height, width)")
    k = _tup(layer.kernel_size, n)
    st = k if layer.stride is None else _tup(layer.stride, n)
    p = _tup(layer.padding, n)
    if any(pp > kk // 2 for pp, kk in zip(p, k, strict=True)):
        raise _ShapeError("padding", f"padding {list(p)} must be at most half the kernel size {list(k)}")
    spatial = _spatial_out(info.shape[2:], k, st, p, (1,) * n)
    return layer, TensorInfo((*info.shape[:2], *spatial)), 0


def _adaptive(layer: Any, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    n = 1 if isinstance(layer, ly.AdaptiveAvgPool1d) else 2
    _needs_float(info)
    _needs_rank(info, (n + 2,), "(batch, channels, length)" if n == 1 else "(batch, channels, height, width)")
    return layer, TensorInfo((*info.shape[:2], *_tup(layer.output_size, n))), 0


def _batch_norm(layer: Any, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    if isinstance(layer, ly.BatchNorm1d):
        _needs_rank(info, (2, 3), "(batch, features) or (batch, channels, length)")
    else:
        _needs_rank(info, (4,), "(batch, channels, height, width)")
    channels = info.shape[1]
    layer = _check_given(layer, "num_features", layer.num_features, channels, "channels", info)
    if train and math.prod(info.shape) // channels < 2:
        raise _ShapeError(None, "batch norm in train mode needs more than one value per channel; "
                          "use a batch of 2 or more, or set \"train\": false")
    return layer, info, 2 * channels if layer.affine else 0


def _layer_norm(layer: ly.LayerNorm, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    given = layer.normalized_shape
    shape = [info.shape[-1]] if given is None else ([given] if isinstance(given, int) else list(given))
    if len(shape) > len(info.shape) or list(info.shape[-len(shape):]) != shape:
        raise _ShapeError("normalized_shape", f"{shape} must equal the trailing dimensions of the previous output "
                          f"({info})")
    layer = layer.model_copy(update={"normalized_shape": shape})
    return layer, info, 2 * math.prod(shape) if layer.elementwise_affine else 0


def _embedding(layer: ly.Embedding, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    if not info.integer:
        raise _ShapeError(None, f"expects int64 token ids, but gets a {info}; set input.dtype to \"int64\"")
    if info.low < 0 or info.high > layer.num_embeddings:
        raise _ShapeError("num_embeddings", f"the table has {layer.num_embeddings} rows but the token ids range "
                          f"over [{info.low}, {info.high}); set input.distribution to fit")
    if layer.padding_idx is not None and layer.padding_idx >= layer.num_embeddings:
        raise _ShapeError("padding_idx", f"must be below num_embeddings ({layer.num_embeddings})")
    out = TensorInfo((*info.shape, layer.embedding_dim))
    return layer, out, layer.num_embeddings * layer.embedding_dim


def _recurrent(layer: ly.LSTM | ly.GRU, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    _needs_rank(info, (3,), "(batch, time, features)")
    features = info.shape[2]
    layer = _check_given(layer, "input_size", layer.input_size, features, "features", info)
    if layer.dropout > 0 and layer.num_layers == 1:
        raise _ShapeError("dropout", "applies between stacked layers only; it needs num_layers > 1")
    gates = 4 if isinstance(layer, ly.LSTM) else 3
    h, directions = layer.hidden_size, 2 if layer.bidirectional else 1
    params = 0
    for depth in range(layer.num_layers):
        n_in = features if depth == 0 else h * directions
        per_direction = gates * h * n_in + gates * h * h + (2 * gates * h if layer.bias else 0)
        params += per_direction * directions
    batch, steps = info.shape[0], info.shape[1]
    shape = (batch, steps, h * directions) if layer.output == "sequence" else (batch, h * directions)
    return layer, TensorInfo(shape), params


def _attention(layer: ly.MultiheadAttention, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    _needs_rank(info, (3,), "(batch, time, embed_dim)")
    e = info.shape[2]
    layer = _check_given(layer, "embed_dim", layer.embed_dim, e, "features", info)
    if e % layer.num_heads:
        raise _ShapeError("num_heads", f"embed_dim {e} is not divisible by num_heads {layer.num_heads}")
    params = 4 * e * e + (4 * e if layer.bias else 0)  # q, k, v and output projections
    return layer, info, params


def _elementwise(layer: Any, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    _needs_float(info)
    dim = getattr(layer, "dim", None)
    if dim is not None and not -len(info.shape) <= dim < len(info.shape):
        raise _ShapeError("dim", f"{dim} is out of range for the {info}")
    return layer, info, 0


def _flatten(layer: ly.Flatten, info: TensorInfo, train: bool) -> tuple[Any, TensorInfo, int]:
    rank = len(info.shape)
    for name in ("start_dim", "end_dim"):
        if not -rank <= getattr(layer, name) < rank:
            raise _ShapeError(name, f"{getattr(layer, name)} is out of range for the {info}")
    start, end = layer.start_dim % rank, layer.end_dim % rank
    if start > end:
        raise _ShapeError("start_dim", f"start_dim ({layer.start_dim}) comes after end_dim ({layer.end_dim})")
    shape = (*info.shape[:start], math.prod(info.shape[start : end + 1]), *info.shape[end + 1 :])
    return layer, TensorInfo(shape, info.integer, info.low, info.high), 0


RULES: dict[type, Rule] = {
    ly.Linear: _linear,
    ly.Conv1d: _conv,
    ly.Conv2d: _conv,
    ly.MaxPool1d: _pool,
    ly.MaxPool2d: _pool,
    ly.AvgPool1d: _pool,
    ly.AvgPool2d: _pool,
    ly.AdaptiveAvgPool1d: _adaptive,
    ly.AdaptiveAvgPool2d: _adaptive,
    ly.BatchNorm1d: _batch_norm,
    ly.BatchNorm2d: _batch_norm,
    ly.LayerNorm: _layer_norm,
    ly.Embedding: _embedding,
    ly.LSTM: _recurrent,
    ly.GRU: _recurrent,
    ly.MultiheadAttention: _attention,
    ly.Flatten: _flatten,
    **{cls: _elementwise for cls in (ly.ReLU, ly.LeakyReLU, ly.GELU, ly.Tanh, ly.Sigmoid, ly.SiLU, ly.ELU, ly.Softplus,
                                     ly.Softmax, ly.LogSoftmax, ly.Dropout)},
}


class _Walker:
    def __init__(self, limits: SpecLimits, train: bool) -> None:
        self.limits = limits
        self.train = train
        self.layer_count = 0
        self.layer_parameters: dict[str, int] = {}
        self.problems: list[Problem] = []

    def fail(self, parts: list[str | int], message: str) -> _Stop:
        self.problems.append(Problem(json_path(parts), message))
        return _Stop()

    def walk(self, layers: list[Any], info: TensorInfo, parts: list[str | int]) -> tuple[list[Any], TensorInfo]:
        resolved: list[Any] = []
        for index, layer in enumerate(layers):
            path = [*parts, index]
            self.layer_count += 1
            if isinstance(layer, ly.Residual):
                if info.integer:
                    raise self.fail(path, f"a residual block needs a float input, not the {info}")
                inner, out = self.walk(layer.layers, info, [*path, "layers"])
                if out.shape != info.shape:
                    raise self.fail(path, f"x + f(x) needs f to keep the shape, but the block maps "
                                    f"{list(info.shape)} to {list(out.shape)}")
                layer = layer.model_copy(update={"layers": inner})
            else:
                try:
                    layer, out, params = RULES[type(layer)](layer, info, self.train)
                except _ShapeError as exc:
                    where = [*path, exc.fieldname] if exc.fieldname else path
                    raise self.fail(where, f"{layer.type}: {exc.message}") from None
                self.layer_parameters[json_path(path)] = params
            elements = math.prod(out.shape)
            if elements > self.limits.max_activation_elements:
                raise self.fail(path, f"its output ({list(out.shape)}) has {elements:,} elements, over the cap of "
                                f"{self.limits.max_activation_elements:,}")
            resolved.append(layer)
            info = out
        return resolved, info


def _input_info(spec: ModelSpec, limits: SpecLimits, problems: list[Problem]) -> tuple[ModelSpec, TensorInfo]:
    shape = tuple(spec.input.shape)
    if math.prod(shape) > limits.max_input_elements:
        problems.append(Problem("$.input.shape", f"{list(shape)} has {math.prod(shape):,} elements, over the cap "
                                f"of {limits.max_input_elements:,}"))
    if spec.input.dtype != "int64":
        if spec.dtype is not None and spec.dtype != spec.input.dtype:
            problems.append(Problem("$.dtype", f"'{spec.dtype}' differs from the float input's dtype "
                                    f"'{spec.input.dtype}'; omit it or make them equal"))
        spec = spec.model_copy(update={"dtype": spec.input.dtype, "input": spec.input.model_copy(
            update={"distribution": spec.input.distribution or s.Normal(type="normal")})})
        return spec, TensorInfo(shape)
    dist = spec.input.distribution
    if dist is None and isinstance(spec.layers[0], ly.Embedding):
        dist = s.Integers(type="integers", low=0, high=spec.layers[0].num_embeddings)
    if not isinstance(dist, s.Integers):
        problems.append(Problem("$.input.distribution", "an int64 input needs an 'integers' distribution "
                                "(it can be omitted only when the first layer is an embedding)"))
        dist = s.Integers(type="integers", low=0, high=1)
    spec = spec.model_copy(update={"dtype": spec.dtype or "float32", "input": spec.input.model_copy(
        update={"distribution": dist})})
    return spec, TensorInfo(shape, integer=True, low=dist.low, high=dist.high)


def _check_loss(spec: ModelSpec, out: TensorInfo, problems: list[Problem]) -> ModelSpec:
    if out.integer:
        problems.append(Problem("$.layers", f"the model's output is an {out}; there is nothing to differentiate"))
        return spec
    loss = spec.loss
    if not isinstance(loss, s.CrossEntropyLoss):
        return spec
    rank = len(out.shape)
    if rank < 2:
        problems.append(Problem("$.loss", f"cross_entropy needs (batch, classes, ...) scores, but the output is a "
                                f"{out}"))
        return spec
    if not -rank <= loss.class_dim < rank or loss.class_dim % rank == 0:
        problems.append(Problem("$.loss.class_dim", f"{loss.class_dim} is not a non-batch dimension of the {out}"))
        return spec
    classes = out.shape[loss.class_dim]
    if loss.num_classes is not None and loss.num_classes != classes:
        problems.append(Problem("$.loss.num_classes", f"is {loss.num_classes} but the output has {classes} classes "
                                f"along dimension {loss.class_dim} ({out})"))
        return spec
    return spec.model_copy(update={"loss": loss.model_copy(update={"num_classes": classes})})


def infer(spec: ModelSpec, limits: SpecLimits | None = None) -> Inference:
    """Resolve every omitted size, check shapes and caps; raises :class:`DefinitionError` listing the problems."""
    limits = limits or SpecLimits()
    problems: list[Problem] = []
    spec, info = _input_info(spec, limits, problems)
    walker = _Walker(limits, spec.train)
    layers: list[Any] = []
    out = info
    if not any(p.path == "$.input.shape" for p in problems):  # an oversized input would only repeat itself
        with contextlib.suppress(_Stop):  # the walker has recorded why it stopped
            layers, out = walker.walk(spec.layers, info, ["layers"])
    problems.extend(walker.problems)
    if walker.layer_count > limits.max_layers:
        problems.append(Problem("$.layers", f"{walker.layer_count} layers, over the cap of {limits.max_layers}"))
    total = sum(walker.layer_parameters.values())
    if total > limits.max_parameters:
        largest = max(walker.layer_parameters, key=walker.layer_parameters.__getitem__)
        problems.append(Problem(largest, f"the model has {total:,} parameters, over the cap of "
                                f"{limits.max_parameters:,}; this layer alone has "
                                f"{walker.layer_parameters[largest]:,}"))
    if not problems:
        spec = _check_loss(spec.model_copy(update={"layers": layers}), out, problems)
    if problems:
        raise DefinitionError("invalid model spec", problems)
    return Inference(spec, out, total, walker.layer_count, walker.layer_parameters)
