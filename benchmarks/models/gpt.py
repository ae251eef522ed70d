"""GPT-2 from transformers (random init), its own LM loss. Size from GRADCHECK_BENCH_GPT:
``tiny`` (default): 2 layers, 32 wide, batch 2, sequence 16; ``small``: the GPT-2-small shape (124M parameters,
12 layers, 768 wide), batch 1, sequence 64; ``medium``: 6 layers, 384 wide, GPT-2's vocabulary (30M), batch 1,
sequence 64."""

import os

import torch
from torch import nn


class LM(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=ids, labels=ids).loss


def build():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    size = os.environ.get("GRADCHECK_BENCH_GPT", "tiny")
    if size == "small":
        config, shape = GPT2Config(n_positions=64), (1, 64)
    elif size == "medium":
        config, shape = GPT2Config(n_positions=64, n_layer=6, n_embd=384, n_head=6), (1, 64)
    else:
        config, shape = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16), (2, 16)
    return LM(GPT2LMHeadModel(config)), (torch.randint(0, config.vocab_size, shape),)
