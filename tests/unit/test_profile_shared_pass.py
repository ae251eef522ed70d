"""The gradient health and the memory profile taken from one shared pass equal the two taken separately."""

from __future__ import annotations

import torch
from torch import nn

from gradcheck_service.checks.health.flow import analyze_gradients
from gradcheck_service.checks.loss import RandomProjection
from gradcheck_service.checks.memory.profile import profile_memory, profile_training_step
from gradcheck_service.options import CheckOptions


def test_shared_pass_gives_the_same_figures_as_separate_passes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 4)).train()
    x = torch.randn(32, 16)
    loss = RandomProjection(0)
    options = CheckOptions()

    norms, diagnosis = analyze_gradients(model, (x,), loss, options.thresholds, options.seed)
    memory = profile_memory(model, (x,), loss, options)
    shared_memory, shared_norms, shared_diagnosis = profile_training_step(model, (x,), loss, options)

    assert shared_norms.total_norm == norms.total_norm  # same seed, same dropout mask, same numbers
    assert [p.l2_norm for p in shared_norms.parameters] == [p.l2_norm for p in norms.parameters]
    assert [s.grad_norm for s in shared_norms.layers] == [s.grad_norm for s in norms.layers]
    assert [r.dead_units for r in shared_norms.relus] == [r.dead_units for r in norms.relus]
    assert shared_diagnosis == diagnosis
    # The health hooks' own tensors are hidden from the allocation tracker: the memory figures do not move.
    assert shared_memory.activation_bytes == memory.activation_bytes
    assert shared_memory.peak_bytes == memory.peak_bytes
    assert shared_memory.retained_after_forward_bytes == memory.retained_after_forward_bytes
