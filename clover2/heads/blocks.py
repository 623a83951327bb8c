"""Blocks more than one head is built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clover2.errors import Clover2Error


class ResBlock(nn.Module):
    """x + SiLU(W x + b) with W = 0 and b = 0 at init, so a fresh block is the identity."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size, size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


def check_heads(method: str, heads: int) -> None:
    if not isinstance(heads, int) or heads < 1:
        raise Clover2Error(f"{method} option heads: expected an integer >= 1, got {heads!r}")
