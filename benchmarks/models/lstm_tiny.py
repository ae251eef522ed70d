"""Tiny LSTM classifier (embedding 50x16, LSTM 16->24), batch 4, sequence 10: a benchmark model for check cost."""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out[:, -1])


def build():
    torch.manual_seed(0)
    return Classifier(), (torch.randint(0, 50, (4, 10)),)
