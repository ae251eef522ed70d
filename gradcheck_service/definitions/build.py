"""Building a checked spec into a real ``nn.Module``, an input batch and a loss, all reproducible from the seed.

Module names follow the spec: the n-th layer is ``layers.n`` and a residual block's inner layers are
``layers.n.body.m``, so a report's faulty module maps straight back to ``$.layers[n].layers[m]``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks.loss import RandomProjection
from . import layers as ly
from . import spec as s
from .base import Definition, DefinitionError
from .layers import InitSpec
from .shapes import Inference, infer
from .spec import ModelSpec, SpecLimits, parse_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


class SpecModel(nn.Module):
    """The sequential stack a spec describes."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


def _select(output: str, out: torch.Tensor, h: torch.Tensor, directions: int) -> torch.Tensor:
    if output == "sequence":
        return out
    if output == "last":
        return out[:, -1, :]
    # h is (num_layers * directions, batch, hidden); the top layer's directions are the last entries.
    top = h[-directions:]
    return top.transpose(0, 1).reshape(top.shape[1], -1)


class LSTMLayer(nn.LSTM):
    """A batch-first LSTM returning one tensor: the output sequence, its last step, or the final hidden state."""

    def __init__(self, *args: Any, output: str = "sequence", **kwargs: Any) -> None:
        super().__init__(*args, batch_first=True, **kwargs)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, (h, _) = super().forward(x)
        return _select(self.output, out, h, 2 if self.bidirectional else 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output={self.output!r}"


class GRULayer(nn.GRU):
    """A batch-first GRU returning one tensor: the output sequence, its last step, or the final hidden state."""

    def __init__(self, *args: Any, output: str = "sequence", **kwargs: Any) -> None:
        super().__init__(*args, batch_first=True, **kwargs)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, h = super().forward(x)
        return _select(self.output, out, h, 2 if self.bidirectional else 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output={self.output!r}"


class SelfAttention(nn.MultiheadAttention):
    """Batch-first multi-head self-attention: query, key and value are all ``x``; optionally causal."""

    def __init__(self, embed_dim: int, num_heads: int, *, causal: bool = False, **kwargs: Any) -> None:
        super().__init__(embed_dim, num_heads, batch_first=True, **kwargs)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mask = None
        if self.causal:
            steps = x.shape[1]
            mask = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(diagonal=1)
        return super().forward(x, x, x, need_weights=False, attn_mask=mask)[0]

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, causal={self.causal}"


def _known(size: int | None) -> int:
    assert size is not None, "shape inference fills in every omitted size"
    return size


def _pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _make(layer: Any) -> nn.Module:
    """One resolved layer spec (all sizes known) -> its module, with PyTorch's default initialisation."""
    match layer:
        case ly.Residual():
            return Residual([_make(inner) for inner in layer.layers])
        case ly.Linear():
            return nn.Linear(_known(layer.in_features), layer.out_features, bias=layer.bias)
        case ly.Conv1d() | ly.Conv2d():
            conv = nn.Conv1d if isinstance(layer, ly.Conv1d) else nn.Conv2d
            return conv(_known(layer.in_channels), layer.out_channels, _pair(layer.kernel_size), stride=_pair(layer.stride),
                        padding=_pair(layer.padding), dilation=_pair(layer.dilation), groups=layer.groups,
                        bias=layer.bias)
        case ly.MaxPool1d() | ly.MaxPool2d() | ly.AvgPool1d() | ly.AvgPool2d():
            pool: type[nn.Module] = {ly.MaxPool1d: nn.MaxPool1d, ly.MaxPool2d: nn.MaxPool2d,
                                     ly.AvgPool1d: nn.AvgPool1d, ly.AvgPool2d: nn.AvgPool2d}[type(layer)]
            return pool(_pair(layer.kernel_size), stride=_pair(layer.stride), padding=_pair(layer.padding))
        case ly.AdaptiveAvgPool1d():
            return nn.AdaptiveAvgPool1d(layer.output_size)
        case ly.AdaptiveAvgPool2d():
            return nn.AdaptiveAvgPool2d(_pair(layer.output_size))
        case ly.BatchNorm1d() | ly.BatchNorm2d():
            norm = nn.BatchNorm1d if isinstance(layer, ly.BatchNorm1d) else nn.BatchNorm2d
            return norm(_known(layer.num_features), eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        case ly.LayerNorm():
            return nn.LayerNorm(layer.normalized_shape, eps=layer.eps, elementwise_affine=layer.elementwise_affine)
        case ly.Embedding():
            return nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx)
        case ly.LSTM() | ly.GRU():
            rnn = LSTMLayer if isinstance(layer, ly.LSTM) else GRULayer
            return rnn(_known(layer.input_size), layer.hidden_size, num_layers=layer.num_layers, bias=layer.bias,
                       dropout=layer.dropout, bidirectional=layer.bidirectional, output=layer.output)
        case ly.MultiheadAttention():
            return SelfAttention(_known(layer.embed_dim), layer.num_heads, causal=layer.causal, dropout=layer.dropout,
                                 bias=layer.bias)
        case ly.LeakyReLU():
            return nn.LeakyReLU(layer.negative_slope)
        case ly.GELU():
            return nn.GELU(approximate=layer.approximate)
        case ly.ELU():
            return nn.ELU(layer.alpha)
        case ly.Softplus():
            return nn.Softplus(beta=layer.beta, threshold=layer.threshold)
        case ly.Softmax():
            return nn.Softmax(dim=layer.dim)
        case ly.LogSoftmax():
            return nn.LogSoftmax(dim=layer.dim)
        case ly.Dropout():
            return nn.Dropout(layer.p)
        case ly.Flatten():
            return nn.Flatten(layer.start_dim, layer.end_dim)
    simple: dict[type, type[nn.Module]] = {ly.ReLU: nn.ReLU, ly.Tanh: nn.Tanh, ly.Sigmoid: nn.Sigmoid, ly.SiLU: nn.SiLU}
    return simple[type(layer)]()


@torch.no_grad()
def apply_init(module: nn.Module, init: InitSpec) -> None:
    """Re-initialise ``module``'s weights (parameters with 2+ dims) and biases as ``init`` says."""
    for name, param in module.named_parameters():
        if param.dim() >= 2:
            if init.scheme == "normal":
                nn.init.normal_(param, 0.0, init.std or 1.0)
            elif init.scheme == "uniform":
                bound = init.bound or 1.0
                nn.init.uniform_(param, -bound, bound)
            elif init.scheme != "default":
                getattr(nn.init, f"{init.scheme}_")(param)
            param.mul_(init.gain)
        elif "bias" in name and init.bias == "zeros":
            param.zero_()


def _initialise(module: nn.Module, layer: Any, default: InitSpec | None) -> None:
    if isinstance(layer, ly.Residual):
        assert isinstance(module, Residual)
        for child, inner in zip(module.body, layer.layers, strict=True):
            _initialise(child, inner, default)
        return
    chosen = getattr(layer, "init", None) or default
    if chosen is not None and hasattr(layer, "init"):
        apply_init(module, chosen)


def make_input(spec: ModelSpec, generator: torch.Generator) -> torch.Tensor:
    """The input batch the (resolved) spec describes."""
    shape, dtype, dist = tuple(spec.input.shape), DTYPES[spec.input.dtype], spec.input.distribution
    if isinstance(dist, s.Integers):
        return torch.randint(dist.low, dist.high, shape, generator=generator, dtype=dtype)
    if isinstance(dist, s.Uniform):
        return torch.rand(shape, generator=generator, dtype=torch.float64).mul(dist.high - dist.low).add(
            dist.low).to(dtype)
    assert isinstance(dist, s.Normal)
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul(dist.std).add(dist.mean).to(dtype)


class SumLoss:
    """The plain sum of the output."""

    def __call__(self, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return output.sum()


def fit_batch(target: torch.Tensor, batch: int) -> torch.Tensor:
    """The targets for a batch of ``batch`` samples: the generated ones, tiled along dim 0 when the batch grows.

    Batch-scaling measurements repeat the inputs along dim 0; repeating the targets the same way keeps the loss
    defined (and per-sample identical) at every batch size.
    """
    if target.dim() == 0 or target.shape[0] == batch:
        return target
    reps = -(-batch // target.shape[0])
    return target.repeat(reps, *([1] * (target.dim() - 1)))[:batch]


class MSEToTargets:
    """Mean (or summed) squared error against fixed targets drawn once from normal(0, 1)."""

    def __init__(self, target: torch.Tensor, reduction: str) -> None:
        self.target = target
        self.reduction = reduction

    def __call__(self, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        target = fit_batch(self.target, output.shape[0]) if output.dim() else self.target
        return F.mse_loss(output, target.to(device=output.device, dtype=output.dtype), reduction=self.reduction)


class CrossEntropyToTargets:
    """Cross-entropy against fixed integer targets; ``class_dim`` of the output holds the class scores."""

    def __init__(self, target: torch.Tensor, class_dim: int, reduction: str) -> None:
        self.target = target
        self.class_dim = class_dim
        self.reduction = reduction

    def __call__(self, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        scores = output.movedim(self.class_dim, 1)
        target = fit_batch(self.target, scores.shape[0]) if scores.dim() else self.target
        return F.cross_entropy(scores, target.to(output.device), reduction=self.reduction)


def make_loss(spec: ModelSpec, output_shape: tuple[int, ...], generator: torch.Generator) -> Any:
    """The loss the (resolved) spec describes; generated targets come from ``generator``."""
    loss = spec.loss
    if isinstance(loss, s.SumLoss):
        return SumLoss()
    if isinstance(loss, s.MSELoss):
        return MSEToTargets(torch.randn(output_shape, generator=generator, dtype=torch.float64), loss.reduction)
    if isinstance(loss, s.CrossEntropyLoss):
        assert loss.num_classes is not None  # filled in by shape inference
        rank = len(output_shape)
        target_shape = tuple(n for axis, n in enumerate(output_shape) if axis != loss.class_dim % rank)
        target = torch.randint(0, loss.num_classes, target_shape, generator=generator, dtype=torch.int64)
        return CrossEntropyToTargets(target, loss.class_dim, loss.reduction)
    return RandomProjection(spec.seed)


def build_from_spec(spec_or_dict: ModelSpec | dict[str, Any], source: str | None = None, *,
                    name: str | None = None, limits: SpecLimits | None = None) -> Definition:
    """Validate, shape-check and build a spec into a :class:`Definition`. No user code runs.

    ``source`` is the spec's text (kept in the definition); ``name`` is used when the spec has none. Parameters,
    input and targets depend only on ``seed``, and the global RNG is left untouched. Raises
    :class:`DefinitionError` with JSON paths for anything invalid or over ``limits``.
    """
    spec = spec_or_dict if isinstance(spec_or_dict, ModelSpec) else parse_spec(spec_or_dict, limits)
    inference: Inference = infer(spec, limits)
    resolved = inference.spec
    if source is None:
        source = json.dumps(spec_or_dict if isinstance(spec_or_dict, dict) else spec.model_dump(mode="json"),
                            indent=2)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(resolved.seed)
            modules = [_make(layer) for layer in resolved.layers]
        model = SpecModel(modules)
        for module, layer in zip(model.layers, resolved.layers, strict=True):
            _initialise(module, layer, resolved.init)
    except (RuntimeError, ValueError) as exc:  # shape inference should make this unreachable; never crash
        raise DefinitionError("could not build the model", []) from exc
    model.to(DTYPES[resolved.dtype or "float32"])
    model.train(resolved.train)
    # Separate streams: the input does not change when a loss is added, and vice versa.
    inputs = (make_input(resolved, torch.Generator().manual_seed(resolved.seed)),)
    loss_fn = make_loss(resolved, inference.output.shape, torch.Generator().manual_seed(resolved.seed + 1))
    metadata = {
        "parameters": inference.parameters,
        "layers": inference.layer_count,
        "output_shape": list(inference.output.shape),
        "loss": resolved.loss.type,
        "seed": resolved.seed,
        "train": resolved.train,
        "spec": resolved.model_dump(mode="json", exclude_none=True),
    }
    return Definition(model, inputs, loss_fn, resolved.name or name or "spec", "spec", source, metadata)
