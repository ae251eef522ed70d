"""Measured memory profile: exact static figures, saved-tensor bytes against independent counts, peak, checkpointing,
batch scaling and mixed precision, all on models with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcheck_service import check
from gradcheck_service.checks.memory.profile import optimizer_state_bytes, profile_memory
from gradcheck_service.cli.render_health import render_memory
from gradcheck_service.options import CheckOptions

N, IN, HIDDEN, OUT = 8, 10, 20, 3


def _sum_loss(output: torch.Tensor, *_inputs: torch.Tensor) -> torch.Tensor:
    return output.sum()  # saves nothing for backward, so only the model's own activations are counted


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)).to(dtype)


def _graph_saved_storage_bytes(loss: torch.Tensor, model: nn.Module) -> int:
    """Independent count: walk the autograd graph and read every node's ``_saved_*`` tensors."""
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            values = getattr(node, attr)
            for value in values if isinstance(values, tuple) else (values,):
                if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in params:
                    storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def test_static_bytes_are_exact() -> None:
    model = _mlp(torch.float64)
    model[0].bias.requires_grad_(False)
    profile = profile_memory(model, (torch.randn(N, IN, dtype=torch.float64),), _sum_loss, CheckOptions())
    count = IN * HIDDEN + HIDDEN + HIDDEN * OUT + OUT
    assert profile.parameter_bytes == 8 * count
    assert profile.trainable_parameter_bytes == profile.gradient_bytes == 8 * (count - HIDDEN)
    assert profile.dtype == "float64" and profile.batch_size == N


def test_optimizer_state_equals_what_torch_optimizers_allocate() -> None:
    model = _mlp()
    model(torch.randn(N, IN)).sum().backward()
    expected = optimizer_state_bytes(model)
    for optimizer, figure in ((torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), expected.sgd_momentum_bytes),
                              (torch.optim.Adam(model.parameters()), expected.adam_bytes)):
        optimizer.step()
        allocated = sum(t.untyped_storage().nbytes() for state in optimizer.state.values()
                        for t in state.values() if isinstance(t, torch.Tensor))
        assert allocated == figure


def test_mlp_activation_bytes_match_the_tensors_linear_and_relu_save() -> None:
    x = torch.randn(N, IN)
    profile = profile_memory(_mlp(), (x,), _sum_loss, CheckOptions())
    # Linear 0 saves its input x; ReLU saves its output, which Linear 2 saves again as its input (one storage).
    # Weights are parameters and are excluded.
    assert profile.activation_bytes == 4 * N * IN + 4 * N * HIDDEN
    assert profile.activation_input_bytes == 4 * N * IN
    by_module = {m.module: m.bytes for m in profile.activations_by_module}
    assert by_module == {"0": 4 * N * IN, "1": 4 * N * HIDDEN}


def _model_forward_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Independent count: distinct storages autograd saves while only the model's forward runs (no loss)."""
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in params:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(x)
    del output
    return sum(storages.values())


def test_default_loss_is_not_counted_as_the_models_activations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[layer for _ in range(4) for layer in (nn.Linear(256, 256), nn.ReLU())])
    x = torch.randn(32, 256)
    report = check(model, (x,), mode="fast")  # no loss_fn: the tool's own random projection
    assert report.memory is not None
    expected = _model_forward_saved_bytes(model, x)
    # x and the four ReLU outputs, float32: 5 x 32 x 256 x 4 bytes
    assert report.memory.activation_bytes == expected == 5 * 32 * 256 * 4
    # the projection weights (as large as the output) are what the loss keeps for backward
    assert report.memory.loss_saved_bytes == 32 * 256 * 4
    assert sum(m.bytes for m in report.memory.activations_by_module) == report.memory.activation_bytes
    assert "(loss)" not in {m.module for m in report.memory.activations_by_module}


def test_a_real_loss_keeps_its_saved_memory_visible() -> None:
    model, x = _mlp(), torch.randn(N, IN)
    target = torch.arange(N) % OUT

    def cross_entropy(output: torch.Tensor, *_inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    profile = profile_memory(model, (x,), cross_entropy, CheckOptions())
    assert profile.activation_bytes == _model_forward_saved_bytes(model, x) == 4 * N * IN + 4 * N * HIDDEN
    # log_softmax keeps its N x OUT result, nll_loss its int64 targets and a scalar total weight; the logits
    # themselves are not saved (log_softmax's backward needs only its output)
    assert profile.loss_saved_bytes == 4 * N * OUT + 8 * N + 4
    assert "loss saved" in render_memory(profile)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1)).softmax(-1)


def test_activation_bytes_equal_an_independent_graph_walk() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(4, 3, 8, 8)
    profile = profile_memory(model, (x,), _sum_loss, CheckOptions())
    torch.manual_seed(0)
    loss = _sum_loss(model(x))
    assert profile.activation_bytes == _graph_saved_storage_bytes(loss, model) > 0
    assert sum(m.bytes for m in profile.activations_by_module) == profile.activation_bytes


def test_peak_covers_parameters_activations_and_gradients() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(16, 3, 8, 8)
    profile = profile_memory(model, (x,), _sum_loss, CheckOptions())
    assert profile.peak_bytes >= profile.parameter_bytes + profile.activation_bytes
    assert profile.peak_increase_bytes >= profile.gradient_bytes
    assert profile.retained_after_forward_bytes >= profile.activation_bytes - profile.activation_input_bytes
    assert profile.forward_s > 0 and profile.backward_s > 0


def _deep_stack(blocks: int = 6, width: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[
        nn.Sequential(*[layer for _ in range(3) for layer in (nn.Linear(width, width), nn.Tanh())])
        for _ in range(blocks)
    ])


def test_checkpointing_lowers_activation_memory_and_keeps_gradients_identical() -> None:
    model, x = _deep_stack(), torch.randn(32, 64)
    profile = profile_memory(model, (x,), _sum_loss, CheckOptions(checkpointing=True))
    plan = profile.checkpointing
    assert plan is not None and len(plan.blocks) == 6
    # A block (Linear, Tanh) x 3 keeps its input and its three Tanh outputs. Checkpointed, it keeps only its input;
    # its last Tanh output is still kept as the next block's input, except in the last block.
    per_block = 2 * 32 * 64 * 4
    for candidate in plan.blocks:
        assert candidate.gradients_identical
        assert candidate.activation_saved_bytes == (per_block * 3 // 2 if candidate.block == "5" else per_block)
        assert candidate.activation_bytes < plan.baseline_activation_bytes
    assert profile.findings == []
    if plan.combined is not None:  # recommended when the time cost allows it on this machine
        assert plan.combined.activation_saved_bytes >= per_block and plan.combined.gradients_identical
    assert "Gradient checkpointing" in render_memory(profile)


class CountingBlock(nn.Module):
    """A block whose forward depends on how often it ran: its recomputation differs from the original."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.linear(x) * self.calls)


def test_checkpoint_gradient_mismatch_is_a_finding() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), CountingBlock(), nn.Linear(16, 2))
    profile = profile_memory(model, (torch.randn(4, 16),), _sum_loss, CheckOptions(checkpointing=["1"]))
    assert profile.checkpointing is not None and not profile.checkpointing.blocks[0].gradients_identical
    assert [f.kind for f in profile.findings] == ["checkpoint_mismatch"] and profile.findings[0].where == "1"
    assert profile.checkpointing.recommended == []


def test_unknown_checkpoint_block_is_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        profile_memory(_mlp(), (torch.randn(N, IN),), _sum_loss, CheckOptions(checkpointing=["nope"]))


def test_batch_scaling_fits_per_sample_activation_and_answers_the_budget() -> None:
    budget = 1 << 20
    profile = profile_memory(_mlp(), (torch.randn(N, IN),), _sum_loss, CheckOptions(memory_budget_bytes=budget))
    scaling = profile.batch_scaling
    assert scaling is not None and scaling.possible and scaling.batch_sizes == [N, 2 * N]
    assert scaling.activation_per_sample_bytes == 4 * (IN + HIDDEN) and scaling.activation_fixed_bytes == 0
    fixed, per = scaling.peak_fixed_bytes, scaling.peak_per_sample_bytes
    assert fixed + per * scaling.largest_batch <= budget < fixed + per * (scaling.largest_batch + 1)
    assert scaling.largest_batch_with_adam < scaling.largest_batch
    assert "largest batch in 1 MiB" in render_memory(profile)


def test_batch_scaling_explains_why_it_is_impossible() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x).sum() * y.sum()

    profile = profile_memory(Outer(), (torch.randn(3, 4), torch.randn(2, 5)), _sum_loss,
                             CheckOptions(batch_scaling=True))
    assert profile.batch_scaling is not None and not profile.batch_scaling.possible
    assert "dim 0" in profile.batch_scaling.reason


def test_bf16_autocast_is_precision_loss_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[layer for _ in range(4) for layer in (nn.Linear(32, 32), nn.Tanh())], nn.Linear(32, 4))
    profile = profile_memory(model, (torch.randn(16, 32),), _sum_loss, CheckOptions(precision="bf16"))
    precision = profile.precision
    assert precision is not None and precision.verdict == "precision loss only"
    assert 0 < precision.max_rel_error < precision.tolerance
    assert profile.findings == []


class HalfBug(torch.autograd.Function):
    """Identity whose backward doubles the gradient, but only for half-precision tensors."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 2 if grad.dtype in (torch.bfloat16, torch.float16) else grad


class HalfBugModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(HalfBug.apply(self.a(x)))


def test_autocast_specific_bug_is_told_apart_from_precision_loss() -> None:
    torch.manual_seed(0)
    profile = profile_memory(HalfBugModel(), (torch.randn(8, 16),), _sum_loss, CheckOptions(precision="bf16"))
    assert profile.precision is not None and profile.precision.verdict == "autocast-specific error"
    finding = next(f for f in profile.findings if f.kind == "precision")
    assert finding.where.startswith("a.") and finding.measured > finding.threshold


def test_fp16_underflow_is_counted() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    profile = profile_memory(model, (torch.randn(8, 16),), lambda out, *_: out.sum() * 1e-9,
                             CheckOptions(precision="fp16"))
    assert profile.precision is not None and profile.precision.underflow_count > 0
    assert any(f.kind == "underflow" for f in profile.findings)


def test_profile_leaves_the_model_exactly_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.Dropout(0.2), nn.ReLU(),
                          nn.Linear(HIDDEN, OUT))
    existing = torch.ones_like(model[4].bias)
    model[4].bias.grad = existing
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    x = torch.randn(N, IN)
    rng = torch.get_rng_state()
    forward_before = model[1].forward
    profile_memory(model, (x,), _sum_loss,
                   CheckOptions(checkpointing=True, batch_scaling=True, precision="bf16"))
    assert model[4].bias.grad is existing and model[0].weight.grad is None
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert "forward" not in model[1].__dict__ and model[1].forward == forward_before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
