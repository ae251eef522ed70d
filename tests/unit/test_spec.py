"""The declarative JSON spec: valid specs build what they say, invalid ones are refused with the right JSON path."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck_service.checks.loss import RandomProjection
from gradcheck_service.definitions import DefinitionError, load_definition
from gradcheck_service.definitions.build import build_from_spec
from gradcheck_service.definitions.layers import LAYER_TYPES
from gradcheck_service.definitions.spec import SpecLimits, parse_spec, spec_json_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spec(shape: list[int], *layers: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"input": {"shape": shape, **top.pop("input", {})}, "layers": list(layers), **top}


def forward(definition: Any) -> torch.Tensor:
    return definition.module(*definition.inputs)


# Each spec exercises one layer family; the test below checks that shape inference and parameter counting agree
# exactly with what PyTorch builds and runs.
VALID = {
    "mlp": spec([4, 6], {"type": "linear", "out_features": 5}, {"type": "relu"},
                {"type": "linear", "in_features": 5, "out_features": 2, "bias": False}),
    "conv1d": spec([2, 3, 20], {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2, "dilation": 2},
                   {"type": "max_pool1d", "kernel_size": 2, "padding": 1}, {"type": "avg_pool1d", "kernel_size": 2},
                   {"type": "batch_norm1d"}, {"type": "adaptive_avg_pool1d", "output_size": 3}),
    "conv2d": spec([2, 4, 9, 7], {"type": "conv2d", "out_channels": 6, "kernel_size": [3, 2], "groups": 2,
                                  "padding": [1, 0], "stride": [2, 1]},
                   {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same"},
                   {"type": "batch_norm2d", "affine": False}, {"type": "max_pool2d", "kernel_size": [2, 1]},
                   {"type": "avg_pool2d", "kernel_size": 2, "stride": 1},
                   {"type": "adaptive_avg_pool2d", "output_size": [2, 1]}, {"type": "flatten"}),
    "norms": spec([3, 4, 5], {"type": "layer_norm", "normalized_shape": [4, 5]}, {"type": "layer_norm"},
                  {"type": "batch_norm1d", "num_features": 4}),
    "embedding": spec([2, 7], {"type": "embedding", "num_embeddings": 11, "embedding_dim": 4, "padding_idx": 0},
                      {"type": "flatten"}, input={"dtype": "int64"}),
    "lstm": spec([2, 5, 3], {"type": "lstm", "hidden_size": 4, "num_layers": 2, "bidirectional": True,
                             "dropout": 0.2}, {"type": "lstm", "hidden_size": 3, "output": "hidden"}),
    "gru": spec([2, 5, 3], {"type": "gru", "hidden_size": 4, "bias": False, "output": "last",
                            "bidirectional": True}),
    "gru_hidden": spec([2, 5, 3], {"type": "gru", "hidden_size": 4, "num_layers": 3, "output": "hidden"}),
    "attention": spec([2, 5, 8], {"type": "multihead_attention", "num_heads": 2, "causal": True},
                      {"type": "multihead_attention", "embed_dim": 8, "num_heads": 4, "bias": False,
                       "dropout": 0.1}),
    "activations": spec([3, 6], *[{"type": t} for t in ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "silu",
                                                         "elu", "softplus", "dropout")],
                        {"type": "gelu", "approximate": "tanh"}, {"type": "softmax", "dim": 1},
                        {"type": "log_softmax", "dim": -1}),
    "residual": spec([2, 8], {"type": "residual", "layers": [
        {"type": "linear", "out_features": 8},
        {"type": "residual", "layers": [{"type": "tanh"}, {"type": "linear", "out_features": 8}]}]}),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_spec_builds_what_it_describes(name: str) -> None:
    definition = build_from_spec(VALID[name])
    (x,) = definition.inputs
    if x.is_floating_point():
        x.requires_grad_(True)
    out = definition.module(x)
    assert list(out.shape) == definition.metadata["output_shape"]
    assert definition.metadata["parameters"] == sum(p.numel() for p in definition.module.parameters())
    loss = definition.loss_fn(out, x)
    assert loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None for p in definition.module.parameters())
    assert x.grad is not None or not x.is_floating_point()


def test_every_layer_type_is_covered_by_a_valid_spec() -> None:
    used: set[str] = set()

    def collect(layers: list[dict[str, Any]]) -> None:
        for layer in layers:
            used.add(layer["type"])
            collect(layer.get("layers", []))

    for document in VALID.values():
        collect(document["layers"])
    assert used == set(LAYER_TYPES)


def test_module_names_follow_the_spec_layout() -> None:
    names = dict(build_from_spec(VALID["residual"]).module.named_modules())
    assert isinstance(names["layers.0.body.0"], torch.nn.Linear)
    assert isinstance(names["layers.0.body.1.body.0"], torch.nn.Tanh)


def test_recurrent_output_selection() -> None:
    base = spec([2, 5, 3], {"type": "lstm", "hidden_size": 4, "output": "sequence"})
    sequence = build_from_spec(base)
    out = forward(sequence)
    last_spec = copy.deepcopy(base)
    last_spec["layers"][0]["output"] = "last"
    hidden_spec = copy.deepcopy(base)
    hidden_spec["layers"][0]["output"] = "hidden"
    # Same seed -> same weights and input, so the selections are slices of the same run.
    torch.testing.assert_close(forward(build_from_spec(last_spec)), out[:, -1, :])
    torch.testing.assert_close(forward(build_from_spec(hidden_spec)), out[:, -1, :])  # one layer, one direction


def test_causal_attention_ignores_the_future() -> None:
    definition = build_from_spec(spec([1, 4, 8], {"type": "multihead_attention", "num_heads": 2, "causal": True}))
    x = definition.inputs[0]
    changed = x.clone()
    changed[:, -1] += 1.0
    torch.testing.assert_close(definition.module(changed)[:, :-1], definition.module(x)[:, :-1])


def test_same_seed_same_model_and_input_and_global_rng_untouched() -> None:
    document = VALID["conv2d"]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_from_spec(document), build_from_spec(document)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.inputs[0], b.inputs[0])
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = build_from_spec({**document, "seed": 1})
    assert not torch.equal(a.inputs[0], c.inputs[0])
    assert not torch.equal(next(a.module.parameters()), next(c.module.parameters()))


def test_input_dtype_and_distribution() -> None:
    uniform = build_from_spec(spec([1000, 2], {"type": "relu"},
                                   input={"dtype": "float64", "distribution": {"type": "uniform", "low": 2, "high": 3}}))
    x = uniform.inputs[0]
    assert x.dtype == torch.float64 and x.min() >= 2 and x.max() < 3
    normal = build_from_spec(spec([20000, 1], {"type": "relu"},
                                  input={"distribution": {"type": "normal", "mean": 5, "std": 0.5}}))
    assert normal.inputs[0].dtype == torch.float32
    assert abs(normal.inputs[0].mean().item() - 5) < 0.05 and abs(normal.inputs[0].std().item() - 0.5) < 0.05
    tokens = build_from_spec(VALID["embedding"]).inputs[0]
    assert tokens.dtype == torch.int64 and tokens.min() >= 0 and tokens.max() < 11  # range from the embedding


def test_float64_input_builds_a_float64_model() -> None:
    definition = build_from_spec(spec([2, 3], {"type": "linear", "out_features": 2}, input={"dtype": "float64"}))
    assert all(p.dtype == torch.float64 for p in definition.module.parameters())
    assert forward(definition).dtype == torch.float64


def test_train_flag_sets_module_mode() -> None:
    assert build_from_spec(VALID["conv1d"]).module.training
    evaluated = build_from_spec({**VALID["conv1d"], "train": False}).module
    assert not any(m.training for m in evaluated.modules())


def weights(definition: Any) -> list[torch.Tensor]:
    return [p for p in definition.module.parameters() if p.dim() >= 2]


def test_init_options_scale_weights() -> None:
    stack = [{"type": "linear", "out_features": 64}, {"type": "tanh"}] * 3
    default = build_from_spec(spec([4, 64], *stack))
    large = build_from_spec(spec([4, 64], *stack, init={"gain": 3.0}))
    for w_default, w_large in zip(weights(default), weights(large), strict=True):
        torch.testing.assert_close(w_large, 3 * w_default)
    small = build_from_spec(spec([4, 64], *stack, init={"scheme": "normal", "std": 0.01, "bias": "zeros"}))
    for w in weights(small):
        assert 0.008 < w.std().item() < 0.012
    assert all(torch.count_nonzero(p) == 0 for n, p in small.module.named_parameters() if n.endswith("bias"))


def test_per_layer_init_overrides_the_default() -> None:
    definition = build_from_spec(spec(
        [2, 8], {"type": "linear", "out_features": 8, "init": {"scheme": "uniform", "bound": 1e-3}},
        {"type": "linear", "out_features": 8}, init={"scheme": "normal", "std": 10.0}))
    first, second = weights(definition)
    assert first.abs().max() <= 1e-3
    assert second.std() > 5


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                                    "orthogonal"])
def test_every_init_scheme_applies_to_every_weighted_layer(scheme: str) -> None:
    document = spec([2, 5, 8], {"type": "lstm", "hidden_size": 8}, {"type": "multihead_attention", "num_heads": 2},
                    {"type": "linear", "out_features": 4}, init={"scheme": scheme})
    default = build_from_spec({**document, "init": None})
    chosen = build_from_spec(document)
    for a, b in zip(weights(default), weights(chosen), strict=True):
        assert not torch.equal(a, b)
    forward(chosen).sum().backward()


def test_losses() -> None:
    base = spec([6, 4], {"type": "linear", "out_features": 3})
    assert isinstance(build_from_spec(base).loss_fn, RandomProjection)
    summed = build_from_spec({**base, "loss": {"type": "sum"}})
    out = forward(summed)
    torch.testing.assert_close(summed.loss_fn(out), out.sum())
    mse = build_from_spec({**base, "loss": {"type": "mse", "reduction": "sum"}})
    out = forward(mse)
    target = mse.loss_fn.target  # drawn once with the seed; the same on every call
    torch.testing.assert_close(mse.loss_fn(out), ((out.double() - target) ** 2).sum().float())
    ce = build_from_spec({**base, "loss": {"type": "cross_entropy"}})
    assert ce.loss_fn.target.shape == (6,) and ce.loss_fn.target.min() >= 0 and ce.loss_fn.target.max() < 3
    assert ce.loss_fn(forward(ce)).item() > 0


def test_cross_entropy_class_dim_for_sequences_and_images() -> None:
    seq = build_from_spec(spec([2, 5, 4], {"type": "linear", "out_features": 7}, loss={"type": "cross_entropy"}))
    assert seq.loss_fn.target.shape == (2, 5) and seq.loss_fn.target.max() < 7
    img = build_from_spec(spec([2, 3, 4, 4], {"type": "conv2d", "out_channels": 5, "kernel_size": 1},
                               loss={"type": "cross_entropy", "class_dim": 1, "num_classes": 5}))
    assert img.loss_fn.target.shape == (2, 4, 4)
    assert img.loss_fn(forward(img)).dim() == 0


# --- invalid specs: each names the JSON path of the problem --------------------------------------------------------

GOOD = spec([4, 6], {"type": "linear", "out_features": 5}, {"type": "relu"}, {"type": "linear", "out_features": 2})

INVALID = [
    ({"layers": [{"type": "linear", "out_features": "5"}]}, "$.layers[0].out_features", "valid integer"),
    ({"layers": [{"type": "linear", "out_features": 5.0}]}, "$.layers[0].out_features", "valid integer"),
    ({"layers": [{"type": "linear", "out_features": True}]}, "$.layers[0].out_features", "valid integer"),
    ({"layers": [{"type": "linear", "out_features": 10**40}]}, "$.layers[0].out_features", "less than or equal"),
    ({"layers": [{"type": "linear", "out_features": 0}]}, "$.layers[0].out_features", "greater than or equal"),
    ({"layers": [{"type": "linear"}]}, "$.layers[0].out_features", "required"),
    ({"layers": [{"type": "linear", "out_features": 2, "units": 3}]}, "$.layers[0].units", "unknown field 'units'"),
    ({"layers": [{"type": "Linear", "out_features": 2}]}, "$.layers[0].type", "did you mean 'linear'"),
    ({"layers": [{"out_features": 2}]}, "$.layers[0].type", "'type' field is required"),
    ({"layers": ["relu"]}, "$.layers[0]", "dictionary"),
    ({"layers": []}, "$.layers", "at least 1"),
    ({"layers": [{"type": "relu"}, {"type": "conv2d", "out_channels": 2, "kernel_size": [3, 3, 3]}]},
     "$.layers[1].kernel_size", "at most 2"),
    ({"layers": [{"type": "dropout", "p": 1.5}]}, "$.layers[0].p", "less than 1"),
    ({"layers": [{"type": "elu", "alpha": float("inf")}]}, "$.layers[0].alpha", "finite"),
    ({"layers": [{"type": "residual", "layers": [{"type": "relu", "inplace": True}]}]},
     "$.layers[0].layers[0].inplace", "unknown field"),
    ({"input": {"shape": [4, -6]}}, "$.input.shape[1]", "greater than or equal"),
    ({"input": {"shape": []}}, "$.input.shape", "at least 1"),
    ({"input": {"shape": [4, 6], "dtype": "float16"}}, "$.input.dtype", "float32"),
    ({"input": {"shape": [4, 6], "distribution": {"type": "integers", "high": 3}}}, "$.input.distribution",
     "'normal' or 'uniform'"),
    ({"input": {"shape": [4, 6], "distribution": {"type": "uniform", "low": 1, "high": 1}}},
     "$.input.distribution.high", "greater than 'low'"),
    ({"loss": {"type": "hinge"}}, "$.loss.type", "unknown type 'hinge'"),
    ({"loss": {"type": "mse", "reduction": "none"}}, "$.loss.reduction", "'mean' or 'sum'"),
    ({"init": {"scheme": "xavier_normal", "std": 0.1}}, "$.init.std", "only to scheme 'normal'"),
    ({"seed": -1}, "$.seed", "greater than or equal"),
    ({"extra": 1}, "$.extra", "unknown field"),
    # shape problems found by inference, reported at the layer (and field) that causes them
    ({"layers": [{"type": "linear", "out_features": 5}, {"type": "linear", "in_features": 6, "out_features": 2}]},
     "$.layers[1].in_features", "previous output has 5 features"),
    ({"layers": [{"type": "conv1d", "out_channels": 2, "kernel_size": 3}]}, "$.layers[0]", "(batch, channels, length)"),
    ({"input": {"shape": [2, 3, 4]}, "layers": [{"type": "conv1d", "out_channels": 2, "kernel_size": 5}]},
     "$.layers[0].kernel_size", "larger than the padded input"),
    ({"input": {"shape": [2, 3, 8]}, "layers": [{"type": "conv1d", "out_channels": 2, "kernel_size": 3,
                                                  "groups": 2}]}, "$.layers[0].groups", "must divide"),
    ({"input": {"shape": [2, 3, 8]}, "layers": [{"type": "conv1d", "out_channels": 3, "kernel_size": 3, "stride": 2,
                                                  "padding": "same"}]}, "$.layers[0].padding", "stride 1"),
    ({"input": {"shape": [2, 3, 8]}, "layers": [{"type": "max_pool1d", "kernel_size": 2, "padding": 2}]},
     "$.layers[0].padding", "at most half"),
    ({"layers": [{"type": "residual", "layers": [{"type": "linear", "out_features": 3}]}]}, "$.layers[0]",
     "keep the shape"),
    ({"layers": [{"type": "relu"}, {"type": "residual", "layers": [{"type": "relu"}, {"type": "conv2d",
                                                                    "out_channels": 1, "kernel_size": 1}]}]},
     "$.layers[1].layers[1]", "(batch, channels, height, width)"),
    ({"input": {"shape": [1, 6]}, "layers": [{"type": "batch_norm1d"}]}, "$.layers[0]", "more than one value"),
    ({"layers": [{"type": "layer_norm", "normalized_shape": 5}]}, "$.layers[0].normalized_shape", "trailing"),
    ({"layers": [{"type": "embedding", "num_embeddings": 3, "embedding_dim": 2}]}, "$.layers[0]", "int64 token ids"),
    ({"input": {"shape": [4, 6], "dtype": "int64", "distribution": {"type": "integers", "high": 9}},
      "layers": [{"type": "embedding", "num_embeddings": 8, "embedding_dim": 2}]}, "$.layers[0].num_embeddings",
     "[0, 9)"),
    ({"input": {"shape": [4, 6], "dtype": "int64"}, "layers": [{"type": "flatten"}]}, "$.input.distribution",
     "'integers' distribution"),
    ({"input": {"shape": [4, 6], "dtype": "int64", "distribution": {"type": "integers", "high": 9}},
      "layers": [{"type": "relu"}]}, "$.layers[0]", "token ids need an 'embedding' first"),
    ({"input": {"shape": [4, 6, 3]}, "layers": [{"type": "lstm", "hidden_size": 2, "dropout": 0.1}]},
     "$.layers[0].dropout", "num_layers > 1"),
    ({"input": {"shape": [4, 6, 3]}, "layers": [{"type": "multihead_attention", "num_heads": 2}]},
     "$.layers[0].num_heads", "not divisible"),
    ({"layers": [{"type": "softmax", "dim": 2}]}, "$.layers[0].dim", "out of range"),
    ({"layers": [{"type": "flatten", "start_dim": 1, "end_dim": 0}]}, "$.layers[0].start_dim", "after end_dim"),
    ({"dtype": "float64"}, "$.dtype", "differs from the float input"),
    ({"loss": {"type": "cross_entropy", "num_classes": 3}}, "$.loss.num_classes", "output has 2 classes"),
    ({"loss": {"type": "cross_entropy", "class_dim": 0}}, "$.loss.class_dim", "non-batch"),
    ({"input": {"shape": [4]}, "layers": [{"type": "relu"}], "loss": {"type": "cross_entropy"}}, "$.loss",
     "(batch, classes, ...)"),
]


@pytest.mark.parametrize(("change", "path", "message"), INVALID, ids=[f"{p}:{m}" for _, p, m in INVALID])
def test_invalid_spec_names_the_json_path(change: dict[str, Any], path: str, message: str) -> None:
    document = {**copy.deepcopy(GOOD), **change}
    with pytest.raises(DefinitionError) as caught:
        build_from_spec(document)
    problems = {p.path: p.message for p in caught.value.problems}
    assert path in problems, problems
    assert message in problems[path]


def test_several_problems_are_reported_together() -> None:
    document = spec([4, 6], {"type": "linear", "out_features": -1, "bogus": 1}, {"type": "nope"})
    with pytest.raises(DefinitionError) as caught:
        parse_spec(document)
    paths = {p.path for p in caught.value.problems}
    assert {"$.layers[0].out_features", "$.layers[0].bogus", "$.layers[1].type"} <= paths


@pytest.mark.parametrize("document", [None, [], "spec", 3, {"input": None, "layers": None}])
def test_non_object_documents_are_refused(document: Any) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_spec(document)
    assert caught.value.problems


# --- caps ----------------------------------------------------------------------------------------------------------


def refuse_fast(document: dict[str, Any], limits: SpecLimits | None = None) -> DefinitionError:
    start = time.perf_counter()
    with pytest.raises(DefinitionError) as caught:
        build_from_spec(document, limits=limits)
    # Allocating any of these would take seconds (or fail): a fast refusal shows nothing was allocated.
    assert time.perf_counter() - start < 0.5
    return caught.value


def test_ten_billion_parameters_refused_instantly() -> None:
    error = refuse_fast(spec([2, 100_000], {"type": "linear", "out_features": 50_000}, {"type": "relu"},
                             {"type": "linear", "out_features": 100_000}))
    (problem,) = error.problems
    assert problem.path == "$.layers[2]"
    assert "10,000,150,000 parameters" in problem.message and "50,000,000" in problem.message


def test_huge_recurrent_and_attention_parameter_counts_refused() -> None:
    lstm = refuse_fast(spec([2, 3, 4], {"type": "lstm", "hidden_size": 2**20, "num_layers": 64}))
    assert lstm.problems[0].path == "$.layers[0]" and "parameters" in lstm.problems[0].message
    attention = refuse_fast(spec([1, 1, 2**20], {"type": "multihead_attention", "num_heads": 1}))
    assert "parameters" in attention.problems[-1].message


def test_input_and_activation_caps() -> None:
    big_input = refuse_fast(spec([100_000, 100_000], {"type": "relu"}))
    assert [p.path for p in big_input.problems] == ["$.input.shape"]
    assert "10,000,000,000 elements" in big_input.problems[0].message
    blow_up = refuse_fast(spec([2, 1, 10], {"type": "conv1d", "out_channels": 4, "kernel_size": 1,
                                            "padding": 2**30}))
    assert blow_up.problems[0].path == "$.layers[0]" and "over the cap" in blow_up.problems[0].message


def test_layer_count_and_depth_caps() -> None:
    many = refuse_fast(spec([2, 3], *([{"type": "relu"}] * 1001)))
    assert many.problems[0].path == "$.layers" and "1000" in many.problems[0].message
    document = spec([2, 3], {"type": "relu"})
    node = document
    for _ in range(200):
        inner: dict[str, Any] = {"type": "residual", "layers": [{"type": "relu"}]}
        node["layers"].append(inner)
        node = inner
    deep = refuse_fast(document)
    assert "nested more than 32" in deep.problems[0].message


def test_caps_are_configurable() -> None:
    document = spec([4, 100], {"type": "linear", "out_features": 100})
    build_from_spec(document)
    error = refuse_fast(document, SpecLimits(max_parameters=1000))
    assert "10,100 parameters" in error.problems[0].message


# --- the examples and the schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_specs_match_their_declared_shapes(path: Path) -> None:
    definition = load_definition(str(path))
    assert definition.kind == "spec" and definition.source == path.read_text()
    out = forward(definition)
    assert list(out.shape) == definition.metadata["output_shape"]
    assert definition.metadata["parameters"] == sum(p.numel() for p in definition.module.parameters())
    assert json.loads(definition.source).get("name") == definition.name


def test_deep_sigmoid_example_gradients_vanish() -> None:
    definition = load_definition(str(EXAMPLES / "deep_sigmoid.json"))
    definition.loss_fn(forward(definition), *definition.inputs).backward()
    linears = [m for m in definition.module.modules() if isinstance(m, torch.nn.Linear)]
    first, last = linears[0].weight.grad.norm().item(), linears[-2].weight.grad.norm().item()
    assert first < 1e-3 * last


def test_json_schema_lists_every_layer_type() -> None:
    schema = spec_json_schema()
    json.dumps(schema)
    layer_refs = schema["properties"]["layers"]["items"]["discriminator"]["mapping"]
    assert set(layer_refs) == set(LAYER_TYPES)
    assert schema["additionalProperties"] is False


# --- robustness: arbitrary JSON never crashes the parser ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
layer_like = st.fixed_dictionaries({"type": st.sampled_from(LAYER_TYPES)},
                                   optional={k: json_values for k in ("out_features", "kernel_size", "hidden_size",
                                                                      "num_heads", "dim", "p", "layers")})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(-2, 40), max_size=5) | json_values, layers=st.lists(layer_like, max_size=4),
       top=st.dictionaries(st.sampled_from(["seed", "loss", "init", "dtype", "train"]), json_values, max_size=2))
def test_arbitrary_documents_give_a_definition_or_a_definition_error(shape: Any, layers: Any, top: Any) -> None:
    document = {"input": {"shape": shape}, "layers": layers, **top}
    try:
        definition = build_from_spec(document)
    except DefinitionError as exc:
        assert exc.problems and all(p.path.startswith("$") for p in exc.problems)
        return
    assert math.prod(definition.inputs[0].shape) <= SpecLimits().max_input_elements
    out = definition.module(*definition.inputs)  # whatever validates also runs
    assert list(out.shape) == definition.metadata["output_shape"]


def test_generated_targets_follow_a_grown_batch_so_batch_scaling_works() -> None:
    import warnings

    from gradcheck_service import check
    from gradcheck_service.definitions import load_definition

    definition = load_definition(str(Path(__file__).resolve().parents[2] / "examples" / "mlp.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check(definition.module, definition.inputs, definition.loss_fn, mode="fast", health=False,
                       batch_scaling=True, memory_budget_bytes=2**30)
    scaling = report.memory.batch_scaling
    assert scaling is not None and scaling.possible, scaling
    assert scaling.batch_sizes == [8, 16] and scaling.largest_batch and scaling.largest_batch > 16
