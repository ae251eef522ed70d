"""512-1024-512-10 GELU MLP (1.06M parameters), batch 32, cross-entropy: a benchmark model for check cost."""

import torch
from torch import nn

LABELS = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512), nn.GELU(), nn.Linear(512, 10))
    return model, torch.randn(32, 512)


def loss_fn(output, x):
    return nn.functional.cross_entropy(output, LABELS)
