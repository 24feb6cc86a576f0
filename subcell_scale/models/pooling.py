"""Gated attention-MIL pooling of all ViT tokens (CLS included) into the SubCell embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class GatedAttentionPooler(nn.Module):
    """``pool_model`` of the published checkpoints.

    Each head weights the tokens by ``softmax(W_a (tanh(W_v h) * gelu(W_u h)))`` over tokens and sums
    them; the heads' sums are concatenated into a ``pool_heads * hidden`` embedding. The gate is GELU,
    not sigmoid, and the CLS token takes part, as in the reference. Index 0 of ``attention_v`` and
    ``attention_u`` held a Dropout at training, so the Linear layers sit at index 1 (the key names say
    ``attention_v.1.weight``); at inference the slot is an Identity.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_v = nn.Sequential(nn.Identity(), nn.Linear(config.hidden_size, config.pool_int_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Identity(), nn.Linear(config.hidden_size, config.pool_int_dim))
        self.attention = nn.Linear(config.pool_int_dim, config.pool_heads)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``h`` ``(B, T, D)``.

        Returns
        -------
        embedding
            ``(B, heads * D)``, head 0's weighted sum then head 1's.
        weights
            ``(B, heads, T)`` softmax weights over tokens (token 0 is CLS).
        """
        gate = self.attention_v(h) * F.gelu(self.attention_u(h))
        weights = self.attention(gate).transpose(1, 2).float().softmax(dim=-1)
        pooled = torch.bmm(weights.to(h.dtype), h)
        return pooled.reshape(h.shape[0], -1), weights
