"""A character-level LSTM language model: predicts the next character at every position."""

from __future__ import annotations

import torch
from torch import nn

from ..data.text import VOCAB


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> Linear over the vocabulary at every position: ``[batch, positions, vocab]``."""

    def __init__(self, vocab_size: int = len(VOCAB), embed: int = 48, hidden: int = 256, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.head(hidden)
