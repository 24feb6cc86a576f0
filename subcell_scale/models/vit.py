"""Plain-torch ViT backbone with the parameter names of transformers 4.x ``ViTModel``.

The published SubCell encoders are raw state_dicts of ``ViTModel(add_pooling_layer=False)``; keeping
the module tree identical (``embeddings``, ``encoder.layer.{i}.attention.attention.query``, ...) lets a
checkpoint load with one strict ``load_state_dict`` and without a transformers dependency, whose key
names changed in 5.x.

Attention runs through ``scaled_dot_product_attention`` unless its probabilities are requested: then
only the layers whose probabilities are returned run the eager softmax. ``attention="eager"`` runs every
layer eagerly and keeps all probabilities, as the reference tool does (used by the benchmarks).

Two engine options change how, never what, is computed (the same function, summed in another order:
equal within floating-point rounding): ``attention_backend`` pins the fused attention kernel torch
uses (cuDNN, flash, memory-efficient or the plain math one) instead of letting it choose, and
``patch_embedding`` runs the patch projection as an unfolded matrix product (default), as the published
strided convolution, or as that convolution in channels-last memory layout.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ConfigError
from .config import ModelConfig

PosInterpolation = Literal["size", "legacy"]
AttentionImpl = Literal["sdpa", "eager"]
OutputAttentions = Literal["none", "last", "all"]
AttentionBackend = Literal["auto", "cudnn", "flash", "efficient", "math"]
PatchEmbedding = Literal["unfold", "conv", "channels-last"]

ATTENTION_BACKENDS: dict[str, SDPBackend | None] = {
    "auto": None,  # torch picks per call, as without the option
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
"""``attention_backend`` names and the one SDPA kernel each allows (``None``: torch's own choice)."""

PATCH_EMBEDDINGS = ("unfold", "conv", "channels-last")


class PatchEmbeddings(nn.Module):
    """Non-overlapping patches -> tokens, row-major (y, then x).

    The weights are the published ``Conv2d(C, hidden, 16, stride 16)``. ``mode`` says how the
    projection runs, each the same arithmetic summed in another order:

    - ``"unfold"`` (default): one matrix product over unfolded patches, which on GPUs avoids the
      layout conversions a strided convolution costs (about 9 % of a ViT-B forward pass in NCHW);
    - ``"conv"``: the published strided convolution, NCHW;
    - ``"channels-last"``: that convolution with input and weight in channels-last (NHWC) memory, the
      layout cuDNN's convolutions run in natively; its output is already token-major, so the tokens
      need no transposing copy.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.mode: PatchEmbedding = "unfold"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, N, hidden)`` without the bias (added with the position embeddings)."""
        p = self.patch_size
        weight = self.projection.weight
        if self.mode != "unfold":
            if self.mode == "channels-last":
                x = x.contiguous(memory_format=torch.channels_last)
                weight = weight.contiguous(memory_format=torch.channels_last)
            # a stride-p convolution ignores a partial last patch, as the unfolded product below does
            return F.conv2d(x, weight, stride=p).flatten(2).transpose(1, 2)
        batch, channels, height, width = x.shape
        gh, gw = height // p, width // p
        x = x[:, :, : gh * p, : gw * p]  # the strided convolution ignores a partial last patch
        patches = x.reshape(batch, channels, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, gh * gw, channels * p * p)
        weight = weight.reshape(self.projection.out_channels, -1).t()
        if x.device.type == "cpu":  # one product per crop: a CPU product of few rows and long inputs is split
            return torch.bmm(patches, weight.expand(batch, -1, -1))  # over the threads along them otherwise
        return torch.matmul(patches, weight)


class Embeddings(nn.Module):
    """Patch tokens, a prepended CLS token and (interpolated) position embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)
        self.pos_interpolation: PosInterpolation = "size"

    def interpolate_pos_encoding(self, n_patches: int, height: int, width: int) -> torch.Tensor:
        """Position table for an input of ``height`` x ``width`` pixels.

        ``pos_interpolation="size"`` follows transformers >= 4.45 (bicubic to the exact patch grid,
        skipped for the square training size); ``"legacy"`` follows <= 4.44 (``scale_factor`` with the
        +0.1 offset), which gives slightly different tables for sizes other than the training one.
        """
        pos = self.position_embeddings
        n_table = pos.shape[1] - 1
        if n_patches == n_table and height == width:
            return pos
        dim = pos.shape[-1]
        side = int(math.sqrt(n_table))
        new_h, new_w = height // self.config.patch_size, width // self.config.patch_size
        patch = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        if self.pos_interpolation == "legacy":
            patch = F.interpolate(patch, scale_factor=((new_h + 0.1) / side, (new_w + 0.1) / side),
                                  mode="bicubic", align_corners=False)
            if patch.shape[-2:] != (new_h, new_w):
                msg = f"legacy position interpolation gave a {tuple(patch.shape[-2:])} grid for {(new_h, new_w)}"
                raise ConfigError(msg)
        else:
            patch = F.interpolate(patch, size=(new_h, new_w), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((pos[:, :1], patch), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        tokens = self.patch_embeddings(x)
        pos = self.interpolate_pos_encoding(tokens.shape[1], height, width).to(tokens.dtype)
        bias = self.patch_embeddings.projection.bias.to(tokens.dtype)
        # write [CLS | patches] straight into one buffer instead of concatenating
        h = tokens.new_empty(batch, tokens.shape[1] + 1, tokens.shape[2])
        torch.add(tokens, pos[:, 1:] + bias, out=h[:, 1:])
        h[:, 0] = (self.cls_token + pos[:, :1]).to(tokens.dtype)[:, 0]
        return h


class SelfAttention(nn.Module):
    """Multi-head self-attention; separate query/key/value projections as published."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, h: torch.Tensor, *, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, dim = h.shape
        # one product for q, k and v: the input is read once
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))
        qkv = F.linear(h, weight, bias).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if eager:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            probs = scores.softmax(dim=-1)
            ctx = torch.matmul(probs, v)
        else:
            probs = None
            ctx = F.scaled_dot_product_attention(q, k, v)
        return ctx.transpose(1, 2).reshape(batch, tokens, dim), probs


class SelfOutput(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = SelfOutput(config)

    def forward(self, h: torch.Tensor, *, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx, probs = self.attention(h, eager=eager)
        return self.output(ctx), probs


class Intermediate(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, as transformers' "gelu"


class Output(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Layer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor, *, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, probs = self.attention(self.layernorm_before(h), eager=eager)
        h = h + attn
        h = h + self.output(self.intermediate(self.layernorm_after(h)))
        return h, probs


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_layers))


class ViT(nn.Module):
    """The SubCell backbone: ``forward(x) -> (last_hidden_state, attentions)``.

    Parameters
    ----------
    config
        Sizes; see :class:`ModelConfig`.
    attention
        ``"sdpa"`` (default, fused kernels, no probabilities kept) or ``"eager"`` (every layer computes
        and returns its probabilities, like the reference; only for comparisons).
    pos_interpolation
        ``"size"`` (transformers >= 4.45, default) or ``"legacy"`` (<= 4.44).
    attention_backend
        The SDPA kernel: ``"auto"`` (default, torch chooses per call), or one kernel only,
        ``"cudnn"``, ``"flash"``, ``"efficient"`` (memory-efficient) or ``"math"``; which is fastest
        depends on the GPU (cuDNN attention is often fastest on Hopper). The CPU has ``"flash"`` and
        ``"math"``; a kernel that cannot run on the device or dtype is a :class:`ConfigError` at the
        first forward pass. Layers that return their probabilities run eager attention whatever it is.
    patch_embedding
        ``"unfold"`` (default), ``"conv"`` or ``"channels-last"``: see :class:`PatchEmbeddings`.
    """

    def __init__(self, config: ModelConfig, *, attention: AttentionImpl = "sdpa",
                 pos_interpolation: PosInterpolation = "size", attention_backend: AttentionBackend = "auto",
                 patch_embedding: PatchEmbedding = "unfold") -> None:
        super().__init__()
        if attention not in ("sdpa", "eager"):
            msg = f"attention must be 'sdpa' or 'eager', got {attention!r}"
            raise ConfigError(msg)
        if pos_interpolation not in ("size", "legacy"):
            msg = f"pos_interpolation must be 'size' (transformers >= 4.45) or 'legacy' (<= 4.44), got {pos_interpolation!r}"
            raise ConfigError(msg)
        if attention_backend not in ATTENTION_BACKENDS:
            msg = f"attention_backend must be one of {', '.join(map(repr, ATTENTION_BACKENDS))}, got {attention_backend!r}"
            raise ConfigError(msg)
        if patch_embedding not in PATCH_EMBEDDINGS:
            msg = f"patch_embedding must be one of {', '.join(map(repr, PATCH_EMBEDDINGS))}, got {patch_embedding!r}"
            raise ConfigError(msg)
        self.config = config
        self.attention_impl: AttentionImpl = attention
        self.attention_backend: AttentionBackend = attention_backend
        self.embeddings = Embeddings(config)
        self.embeddings.pos_interpolation = pos_interpolation
        self.embeddings.patch_embeddings.mode = patch_embedding
        self.encoder = Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, *, output_attentions: OutputAttentions = "none",
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Run the backbone.

        Returns
        -------
        last_hidden_state
            ``(B, 1 + N, hidden)`` after the final LayerNorm; token 0 is CLS.
        attentions
            ``None`` for ``output_attentions="none"`` under SDPA; otherwise the probabilities
            ``(B, heads, 1 + N, 1 + N)`` of the last layer (``"last"``) or of every layer (``"all"``
            or ``attention="eager"``).
        """
        h = self.embeddings(x)
        eager_all = self.attention_impl == "eager" or output_attentions == "all"
        last = len(self.encoder.layer) - 1
        kept: list[torch.Tensor] = []
        backend = ATTENTION_BACKENDS[self.attention_backend]
        with contextlib.nullcontext() if backend is None else sdpa_kernel(backend):
            for i, layer in enumerate(self.encoder.layer):
                eager = eager_all or (output_attentions == "last" and i == last)
                h, probs = layer(h, eager=eager)
                if probs is not None:
                    kept.append(probs)
        h = self.layernorm(h)
        return h, (kept or None)
