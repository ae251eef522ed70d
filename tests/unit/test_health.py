"""Gradient statistics and the vanishing/exploding/non-finite/dead-ReLU diagnosis on models with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradcheck_service.checks.health.flow import analyze_gradients
from gradcheck_service.checks.loss import RandomProjection
from gradcheck_service.cli.render_health import render_gradient_flow
from gradcheck_service.options import HealthThresholds

WIDTH = 32


def _stack(depth: int, activation: type[nn.Module] | None, std: float | None = None) -> nn.Sequential:
    """``depth`` x (Linear(32, 32) [+ activation]); weights ~ N(0, std^2) and zero bias when ``std`` is given."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(WIDTH, WIDTH)
        if std is not None:
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if activation is not None:
            layers.append(activation())
    return nn.Sequential(*layers)


class PreNormBlock(nn.Module):
    """x + MLP(LayerNorm(x)): the transformer-style block whose skip path keeps the signal alive."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.up = nn.Linear(WIDTH, 2 * WIDTH)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


def _analyze(model: nn.Module, x: torch.Tensor, thresholds: HealthThresholds | None = None):
    return analyze_gradients(model, (x,), RandomProjection(0), thresholds or HealthThresholds(), seed=0)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(16, WIDTH, generator=torch.Generator().manual_seed(1))


def test_deep_sigmoid_stack_vanishes(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    norms, diagnosis = _analyze(_stack(20, nn.Sigmoid), batch)
    assert diagnosis.vanishing and not diagnosis.exploding
    assert diagnosis.signal_ratio is not None and diagnosis.signal_ratio < 1e-3
    finding = next(f for f in diagnosis.findings if f.kind == "vanishing")
    assert finding.where == "0" and finding.threshold == 1e-3
    assert "Sigmoid" in finding.suggestion and "residual" in finding.suggestion


def test_deep_small_init_tanh_stack_vanishes(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    _, diagnosis = _analyze(_stack(20, nn.Tanh, std=0.05), batch)
    assert diagnosis.vanishing and not diagnosis.exploding
    # gain per Linear ~ 0.05 * sqrt(32) = 0.28, so per listed layer (Linear, Tanh) about sqrt(0.28) = 0.53
    assert diagnosis.per_layer_factor is not None and 0.3 < diagnosis.per_layer_factor < 0.8


def test_deep_linear_large_init_explodes_while_weight_grads_stay_level(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    depth = 20
    norms, diagnosis = _analyze(_stack(depth, None, std=2 / math.sqrt(WIDTH)), batch)  # gain ~2 per layer
    assert diagnosis.exploding and not diagnosis.vanishing
    signal = [layer.grad_norm for layer in norms.layers]
    assert signal[0] / signal[-1] > 1e4  # ~2**19 growth going backward
    weight_norms = [p.l2_norm for p in norms.parameters if p.name.endswith("weight")]
    assert max(weight_norms) / min(weight_norms) < 10  # ... while dL/dW is level across depth
    finding = next(f for f in diagnosis.findings if f.kind == "exploding")
    assert "clip_grad_norm_" in finding.suggestion
    clip = float(finding.suggestion.split("max_norm=")[1].split(")")[0])
    assert 0 < clip <= norms.total_norm / diagnosis.signal_ratio


def test_pre_norm_residual_stack_is_healthy(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[PreNormBlock() for _ in range(12)], nn.Linear(WIDTH, 4))
    norms, diagnosis = _analyze(model, batch)
    assert not (diagnosis.vanishing or diagnosis.exploding or diagnosis.nonfinite or diagnosis.dead_relu)
    assert diagnosis.findings == []
    assert 1e-2 < diagnosis.signal_ratio < 1e2
    assert norms.layers[0].name == "0.norm" and norms.layers[-1].name == "12"


def test_shallow_relu_net_is_healthy(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 64), nn.ReLU(), nn.Linear(64, 4))
    norms, diagnosis = _analyze(model, batch)
    assert diagnosis.findings == [] and not diagnosis.dead_relu
    assert [layer.name for layer in norms.layers] == ["0", "1", "2"]
    assert norms.relus[0].units == 64 and norms.relus[0].dead_fraction < 0.5


def test_thresholds_are_configurable(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    _, diagnosis = _analyze(_stack(20, nn.Sigmoid), batch, HealthThresholds(vanishing_ratio=1e-30))
    assert not diagnosis.vanishing


def test_dead_relu_is_detected(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    first = nn.Linear(WIDTH, 64)
    with torch.no_grad():
        first.bias[:40] = -100.0  # 40 of 64 units can never switch on for these inputs
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(64, 4))
    norms, diagnosis = _analyze(model, batch)
    assert diagnosis.dead_relu
    assert norms.relus[0].dead_units == 40
    finding = next(f for f in diagnosis.findings if f.kind == "dead_relu")
    assert finding.where == "1" and finding.measured == pytest.approx(40 / 64)


def test_nan_weight_is_named_at_the_first_nonfinite_layer(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _stack(4, nn.Tanh)
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    norms, diagnosis = _analyze(model, batch)
    assert diagnosis.nonfinite and norms.loss is None
    forward = [f for f in diagnosis.findings if f.kind == "nonfinite" and f.where == "4"]
    assert forward and "first layer" in forward[0].explanation
    assert any(p.nan_count > 0 for p in norms.parameters)
    # the report stays valid JSON that reads back (no NaN/Inf numbers in it)
    assert type(norms).model_validate_json(norms.model_dump_json()) == norms
    assert type(diagnosis).model_validate_json(diagnosis.model_dump_json()) == diagnosis


class AbsSqrt(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.abs())


def test_nan_only_in_backward_is_named(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    zero = nn.Linear(WIDTH, 8)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)  # output exactly 0, where sqrt has an infinite derivative
    model = nn.Sequential(zero, AbsSqrt(), nn.Linear(8, 2))
    norms, diagnosis = _analyze(model, batch)
    assert norms.loss is not None  # forward is finite
    assert diagnosis.nonfinite
    finding = next(f for f in diagnosis.findings if f.kind == "nonfinite" and f.where == "0")
    assert "forward pass is finite" in finding.explanation


def test_parameter_statistics_match_a_hand_computed_gradient() -> None:
    linear = nn.Linear(3, 2)
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    norms, _ = analyze_gradients(linear, (x,), lambda out, *_: out.sum(), HealthThresholds(), seed=0)
    weight = next(p for p in norms.parameters if p.name == "weight")
    expected = x.sum(0).repeat(2, 1)  # d sum(xW^T + b) / dW = 1^T x for every output row
    assert weight.l2_norm == pytest.approx(float(expected.norm()))
    assert weight.max_abs == pytest.approx(2.0) and weight.mean_abs == pytest.approx(float(expected.abs().mean()))
    assert weight.grad_to_weight == pytest.approx(float(expected.norm() / linear.weight.detach().norm()))
    bias = next(p for p in norms.parameters if p.name == "bias")
    assert bias.l2_norm == pytest.approx(math.sqrt(2) * 2)
    assert norms.layers[0].grad_norm == pytest.approx(2.0)  # d sum / d output = ones(2, 2)


class SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(WIDTH, WIDTH)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.act(self.shared(x)))


def test_module_called_twice_gets_one_entry_per_call(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    norms, _ = _analyze(SharedTwice(), batch)
    assert [(layer.name, layer.call) for layer in norms.layers] == [("shared", 0), ("act", 0), ("shared", 1)]
    assert all(layer.grad_norm and layer.grad_norm > 0 for layer in norms.layers)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(WIDTH, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (_h, _c) = self.lstm(x)
        return self.head(out[:, -1])


def test_lstm_tuple_output_receives_a_signal() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, WIDTH)
    norms, _ = _analyze(Recurrent(), x)
    lstm = next(layer for layer in norms.layers if layer.name == "lstm")
    assert lstm.grad_norm is not None and lstm.grad_norm > 0
    assert lstm.output_numel == 4 * 5 * 16 + 2 * 4 * 16  # out, h and c all count


def test_model_is_exactly_unchanged(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4))
    model.train()
    model[4].eval()  # a mixed-mode model: every module's own flag must come back
    existing = torch.full_like(model[0].weight, 7.0)
    model[0].weight.grad = existing
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    _analyze(model, batch)
    assert model[0].weight.grad is existing and torch.equal(existing, torch.full_like(existing, 7.0))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_same_seed_gives_the_same_numbers_with_dropout(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 64), nn.Dropout(0.5), nn.Linear(64, 4))
    first, _ = _analyze(model, batch)
    second, _ = _analyze(model, batch)
    assert first.total_norm == second.total_norm


def test_render_shows_one_line_per_layer_with_a_log_bar(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    norms, diagnosis = _analyze(_stack(6, None, std=2 / math.sqrt(WIDTH)), batch)
    text = render_gradient_flow(norms, diagnosis)
    rows = [line for line in text.splitlines() if line.strip().split(" ")[0] in {str(i) for i in range(6)}]
    assert len(rows) == 6
    bars = [row.count("#") for row in rows]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1]  # signal grows going backward
    assert "exploding=YES" in text and "max_norm=" in text
