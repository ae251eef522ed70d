"""The declarative model spec: pydantic v2 models of a JSON document that describes a model without any code.

A spec is what the service accepts from anyone, so it is strict: unknown fields are refused, numbers are not
coerced from strings, infinities and NaN are refused, and every problem is reported with its JSON path
(``$.layers[2].out_features``). Shapes, parameter counts and size caps are checked in :mod:`.shapes`; the module is
built in :mod:`.build`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from .base import DefinitionError, Problem
from .layers import (
    LAYER_TYPES,
    MAX_DIM,
    AxisIndex,
    Dim,
    FiniteFloat,
    InitSpec,
    Layer,
    PositiveFloat,
    _Strict,
)


@dataclass(frozen=True)
class SpecLimits:
    """Caps that keep a spec cheap to check; all are checked from the spec alone, before anything is allocated."""

    max_parameters: int = 50_000_000
    max_input_elements: int = 10_000_000
    max_layers: int = 1000
    max_depth: int = 32  # nesting of residual blocks
    max_activation_elements: int = 50_000_000  # elements of any one layer's output, batch included


# --- input and loss --------------------------------------------------------------------------------------------


class _Range(_Strict):
    """A ``low``/``high`` pair where ``high`` must exceed ``low``."""

    @field_validator("high", check_fields=False)
    @classmethod
    def _above_low(cls, high: Any, info: ValidationInfo) -> Any:
        low = info.data.get("low")
        if low is not None and high <= low:
            raise ValueError(f"'high' ({high}) must be greater than 'low' ({low})")
        return high


class Normal(_Strict):
    type: Literal["normal"]
    mean: FiniteFloat = 0.0
    std: PositiveFloat = 1.0


class Uniform(_Range):
    type: Literal["uniform"]
    low: FiniteFloat = -1.0
    high: FiniteFloat = 1.0



class Integers(_Range):
    """Integers drawn uniformly from ``[low, high)`` (``high`` exclusive), e.g. token ids."""

    type: Literal["integers"]
    low: Annotated[int, Field(ge=-(2**62), le=2**62)] = 0
    high: Annotated[int, Field(ge=-(2**62), le=2**62)]



class InputSpec(_Strict):
    """One example batch: ``shape`` includes the batch dimension."""

    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]
    dtype: Literal["float32", "float64", "int64"] = "float32"
    distribution: Annotated[Normal | Uniform | Integers, Field(discriminator="type")] | None = Field(
        None,
        description="float inputs default to normal(0, 1); int64 inputs default to integers in "
        "[0, num_embeddings) when the first layer is an embedding",
    )

    @field_validator("distribution")
    @classmethod
    def _matches_dtype(cls, value: Normal | Uniform | Integers | None, info: ValidationInfo) -> Any:
        dtype = info.data.get("dtype")
        if dtype == "int64" and isinstance(value, Normal | Uniform):
            raise ValueError(f"an int64 input needs an 'integers' distribution, not '{value.type}'")
        if dtype in ("float32", "float64") and isinstance(value, Integers):
            raise ValueError(f"a {dtype} input needs a 'normal' or 'uniform' distribution, not 'integers'")
        return value


class RandomProjectionLoss(_Strict):
    """``sum(u * output)`` with a fixed random ``u``: every output element matters (the default)."""

    type: Literal["random_projection"]


class SumLoss(_Strict):
    type: Literal["sum"]


class MSELoss(_Strict):
    """Mean squared error against targets drawn from normal(0, 1) with the seed."""

    type: Literal["mse"]
    reduction: Literal["mean", "sum"] = "mean"


class CrossEntropyLoss(_Strict):
    """Cross-entropy against integer class targets drawn with the seed."""

    type: Literal["cross_entropy"]
    num_classes: Annotated[int, Field(ge=2, le=MAX_DIM)] | None = Field(
        None, description="inferred from the output's class dimension when omitted"
    )
    class_dim: AxisIndex = Field(-1, description="the output dimension holding the class scores")
    reduction: Literal["mean", "sum"] = "mean"


Loss = Annotated[RandomProjectionLoss | SumLoss | MSELoss | CrossEntropyLoss, Field(discriminator="type")]


class ModelSpec(_Strict):
    """A model to check: an input batch, a stack of layers and a loss, all reproducible from ``seed``."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Field(max_length=4000)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="parameter dtype; follows a float input, float32 for an int64 input"
    )
    train: bool = Field(True, description="module mode: train mode checks dropout and batch statistics")
    init: InitSpec | None = Field(None, description="initialisation for every layer without its own 'init'")
    input: InputSpec
    layers: Annotated[list[Layer], Field(min_length=1)]
    loss: Loss = RandomProjectionLoss(type="random_projection")


# --- parsing and errors ----------------------------------------------------------------------------------------


def json_path(parts: list[str | int]) -> str:
    """``["layers", 2, "out_features"]`` -> ``$.layers[2].out_features``."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _walk_loc(loc: tuple[int | str, ...], data: Any, error_type: str) -> list[str | int]:
    """Map a pydantic ``loc`` onto the user's document, dropping the union-member tags pydantic inserts."""
    parts: list[str | int] = []
    node = data
    for index, key in enumerate(loc):
        last = index == len(loc) - 1
        in_dict = isinstance(node, dict) and isinstance(key, str) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
        if in_dict or in_list:
            parts.append(key)
            node = node[key]
        elif last and error_type == "missing":
            parts.append(key)
        # anything else is a tag pydantic adds for a union member ("linear", "int", "list[int]"): not in the document
    return parts


def _message(error: Any, node_key: str | int | None) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field '{node_key}'"
    if kind == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag"))
        expected = error.get("ctx", {}).get("expected_tags", "")
        squashed = {t.replace("_", ""): t for t in LAYER_TYPES}
        guess = difflib.get_close_matches(tag.lower().replace("_", ""), list(squashed), n=1)
        hint = f"; did you mean '{squashed[guess[0]]}'?" if guess and "linear" in expected else ""
        return f"unknown type '{tag}'{hint} (expected one of {expected})"
    if kind == "union_tag_not_found":
        return "a 'type' field is required"
    msg = str(error["msg"])
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg


def problems_from_validation_error(exc: ValidationError, data: Any) -> list[Problem]:
    """One :class:`Problem` per distinct JSON path; messages for alternatives of a union are joined with 'or'."""
    merged: dict[str, list[str]] = {}
    for error in exc.errors():
        parts = _walk_loc(tuple(error["loc"]), data, error["type"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            parts.append("type")
        message = _message(error, parts[-1] if parts else None)
        messages = merged.setdefault(json_path(parts), [])
        if message not in messages:
            messages.append(message)
    return [Problem(path, _join(messages)) for path, messages in merged.items()]


def _join(messages: list[str]) -> str:
    """'Input should be a valid integer' + 'Input should be a valid list' -> '... integer or a valid list'."""
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m[len(prefix) :] for m in messages)
    return " or ".join(messages)


def _precheck_size(data: Any, limits: SpecLimits) -> list[Problem]:
    """Refuse absurdly large or deep documents before pydantic walks them (cheap, iterative, no recursion)."""
    stack: list[tuple[Any, int, list[str | int]]] = [(data, 0, [])]
    layers = 0
    while stack:
        node, depth, parts = stack.pop()
        if depth > 2 * limits.max_depth + 8:  # each residual level adds two levels: the list and the layer dict
            return [Problem(json_path(parts), f"nested more than {limits.max_depth} residual levels deep")]
        if isinstance(node, dict):
            stack.extend((v, depth + 1, [*parts, str(k)]) for k, v in node.items())
            inner = node.get("layers")
            if isinstance(inner, list):
                layers += len(inner)
                if layers > limits.max_layers:
                    return [Problem(json_path([*parts, "layers"]), f"more than {limits.max_layers} layers")]
        elif isinstance(node, list):
            stack.extend((v, depth + 1, [*parts, i]) for i, v in enumerate(node))
    return []


def parse_spec(data: Any, limits: SpecLimits | None = None) -> ModelSpec:
    """Validate a decoded JSON document into a :class:`ModelSpec`; raises :class:`DefinitionError` with paths."""
    limits = limits or SpecLimits()
    if not isinstance(data, dict):
        raise DefinitionError("invalid model spec", [Problem("$", "the spec must be a JSON object")])
    problems = _precheck_size(data, limits)
    if problems:
        raise DefinitionError("model spec too large", problems)
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError("invalid model spec", problems_from_validation_error(exc, data)) from None


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a model spec (draft 2020-12, as pydantic emits it)."""
    schema = ModelSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
