"""The sweep of :mod:`._sweep` on a torch device: the same ranks and neighbours from blocked tensors.

On a GPU the product is cheap and the CPU kernels' row-by-row loops are not; here each block's rule
masks come from the group codes by broadcasting, each positive's count of negatives above it from
one comparison pass per positive (or, with many positives, a ``searchsorted`` of the negatives' keys
into the sorted positive keys and a histogram), and the nearest neighbours from ``topk``. Memory is a few block-sized tensors.

Precision and near-ties: features stay float64 and the product is float64, then rounded to float32
ranking keys exactly as on the CPU (``float32(1) - float32(similarity)``, positives win exact ties).
The device's float64 product may differ from the CPU's BLAS in the last bit; that changes a float32
key only when a similarity sits within one float64 ulp of a float32 rounding boundary, and a rank only
when the flipped key then crosses another one, so a rare query's AP can differ from the CPU's
(``benchmarks/gpu_map.py`` reports the largest difference). Neighbours with exactly equal float64
similarities are ordered by ``topk``, which does not promise the CPU's lower-index-first order.
Similarities of non-product metrics (euclidean, callables, ...) are computed on the CPU and moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._similarity import Similarity, rows_per_block

if TYPE_CHECKING:  # pragma: no cover
    from ._sweep import NearestResult, NearestTask, RankResult, RankTask

_FEW = 16  # up to this many positives in a block, one comparison pass per positive

GPU_BLOCK_VALUES = 1 << 26
"""Similarity values per block on a device when the caller does not choose (512 MiB as float64)."""


def sweep_torch(sim: Similarity, queries: np.ndarray, ranks: RankTask | None, nearest: NearestTask | None,
                rank_out: RankResult | None, nn_out: NearestResult | None, batch_size: int | None,
                device: str) -> None:
    """Fill ``rank_out`` and ``nn_out`` for ``queries``, one block of rows at a time on ``device``."""
    import torch

    dev = torch.device(device)
    t = _Tensors(sim, ranks, nearest, dev)
    rows_per = rows_per_block(sim.n, GPU_BLOCK_VALUES if batch_size is None else batch_size)
    q_all = torch.as_tensor(np.asarray(queries, dtype=np.int64), device=dev)
    for start in range(0, len(queries), rows_per):
        part = slice(start, min(len(queries), start + rows_per))
        rows = q_all[part]
        block = t.block(rows)
        if ranks is not None:
            ap, n_pos, n_neg = t.ranks(block, rows)
            rank_out.ap[part] = ap.cpu().numpy()
            rank_out.n_pos[part] = n_pos.cpu().numpy()
            rank_out.n_neg[part] = n_neg.cpu().numpy()
        if nearest is not None:
            idx, shares, possible = t.nearest(block, rows)
            nn_out.nearest[part] = idx.cpu().numpy()
            nn_out.shares[part] = shares.cpu().numpy()
            nn_out.possible[part] = possible.cpu().numpy()


class _Tensors:
    """Features, codes and labels on the device, and the per-block steps."""

    def __init__(self, sim: Similarity, ranks: RankTask | None, nearest: NearestTask | None, dev) -> None:
        import torch

        self.torch = torch
        self.dev = dev
        self.sim = sim
        x = sim.product_rows
        self.x = None if x is None else torch.as_tensor(x, device=dev)
        self.abs = sim.distance == "abs_cosine"
        n = sim.n
        self.all = torch.arange(n, device=dev)
        if ranks is not None:
            self.group = torch.as_tensor(ranks.group_of, device=dev)
            self.pos_diff = torch.as_tensor(ranks.pos_diff, device=dev)
            self.neg_same = torch.as_tensor(ranks.neg_same, device=dev)
            self.neg_diff = torch.as_tensor(ranks.neg_diff, device=dev)
        if nearest is not None:
            self.kmax = nearest.kmax
            self.exclude = torch.as_tensor(nearest.exclude, device=dev)
            self.pool = torch.as_tensor(nearest.pool, device=dev)
            counts = np.diff(nearest.label_ptr)
            if (counts == 1).all():  # one label each: sharing is equality of codes
                self.label = torch.as_tensor(nearest.labels, device=dev)
                self.indicator = None
            else:
                ind = np.zeros((n, int(nearest.labels.max()) + 1), dtype=np.float32)
                ind[np.repeat(np.arange(n), counts), nearest.labels] = 1.0
                self.indicator = torch.as_tensor(ind, device=dev)

    def block(self, rows):
        if self.x is None:
            values = self.sim.block64(rows.cpu().numpy())
            return self.torch.as_tensor(values, device=self.dev)
        out = self.x[rows] @ self.x.T
        return out.abs_() if self.abs else out

    def _rule(self, rows, same, diff):
        """(rows, n) bool: shares ``same`` (one code), differs in every row of ``diff``, not itself."""
        mask = same[rows, None] == same[None, :] if same is not None else None
        for codes in diff:
            differ = codes[rows, None] != codes[None, :]
            mask = differ if mask is None else mask & differ
        if mask is None:
            mask = self.torch.ones((rows.numel(), self.all.numel()), dtype=self.torch.bool, device=self.dev)
        mask[self.torch.arange(rows.numel(), device=self.dev), rows] = False
        return mask

    def ranks(self, block, rows):
        torch = self.torch
        keys = 1.0 - block.to(torch.float32)
        inf = torch.tensor(float("inf"), device=self.dev)
        pos = self._rule(rows, self.group, self.pos_diff)
        neg = self._rule(rows, self.neg_same, self.neg_diff)
        n_pos = pos.sum(dim=1)
        n_neg = neg.sum(dim=1)
        width = int(n_pos.max())
        if width == 0:
            return torch.full((rows.numel(),), float("nan"), dtype=torch.float64), n_pos, n_neg
        pos_keys = torch.topk(torch.where(pos, keys, inf), width, dim=1, largest=False, sorted=True).values
        neg_keys = torch.where(neg, keys, inf)
        if width <= _FEW:  # a comparison per positive: no atomics
            above = torch.stack([(neg_keys < pos_keys[:, t:t + 1]).sum(dim=1) for t in range(width)], dim=1)
        else:  # a histogram over the sorted positive keys, cumulated
            slot = torch.searchsorted(pos_keys, neg_keys, right=True)
            slot += (torch.arange(rows.numel(), device=self.dev) * (width + 1))[:, None]
            hist = torch.bincount(slot.reshape(-1), minlength=rows.numel() * (width + 1))
            above = hist.reshape(rows.numel(), width + 1)[:, :width].cumsum(dim=1)
        k = torch.arange(1, width + 1, device=self.dev, dtype=torch.float64)
        terms = torch.where(k[None, :] <= n_pos[:, None], k / (k + above), 0.0)
        ap = terms.sum(dim=1) / n_pos
        return torch.where(n_pos > 0, ap, float("nan")), n_pos, n_neg

    def nearest(self, block, rows):
        torch = self.torch
        allowed = self._rule(rows, None, self.exclude) & self.pool[None, :]
        if self.indicator is None:
            share = self.label[rows, None] == self.label[None, :]
        else:
            share = (self.indicator[rows] @ self.indicator.T) > 0
        possible = (allowed & share).any(dim=1)
        values, idx = torch.topk(torch.where(allowed, block, -float("inf")), self.kmax, dim=1, sorted=True)
        valid = values > -float("inf")
        idx = torch.where(valid, idx, -1)
        shares = share.gather(1, idx.clamp(min=0)) & valid
        return idx, shares, possible
