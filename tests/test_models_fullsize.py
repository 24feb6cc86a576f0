"""The full-size ViT-B/16 has exactly the published encoder layout, and one 448-px forward runs on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subcell_scale.models import ModelConfig, SubCell
from subcell_scale.models.checkpoint import expected_encoder_shapes


def published_layout(channels: int) -> dict[str, tuple[int, ...]]:
    """The 204-key table of subcell-model.md section 3.2, written out independently of the code."""
    d, ff = 768, 3072
    keys = {
        "encoder.embeddings.cls_token": (1, 1, d),
        "encoder.embeddings.position_embeddings": (1, 785, d),
        "encoder.embeddings.patch_embeddings.projection.weight": (d, channels, 16, 16),
        "encoder.embeddings.patch_embeddings.projection.bias": (d,),
    }
    for i in range(12):
        p = f"encoder.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            keys[f"{p}attention.attention.{name}.weight"] = (d, d)
            keys[f"{p}attention.attention.{name}.bias"] = (d,)
        keys[f"{p}attention.output.dense.weight"] = (d, d)
        keys[f"{p}attention.output.dense.bias"] = (d,)
        keys[f"{p}intermediate.dense.weight"] = (ff, d)
        keys[f"{p}intermediate.dense.bias"] = (ff,)
        keys[f"{p}output.dense.weight"] = (d, ff)
        keys[f"{p}output.dense.bias"] = (d,)
        for norm in ("layernorm_before", "layernorm_after"):
            keys[f"{p}{norm}.weight"] = (d,)
            keys[f"{p}{norm}.bias"] = (d,)
    keys["encoder.layernorm.weight"] = (d,)
    keys["encoder.layernorm.bias"] = (d,)
    keys["pool_model.attention_v.1.weight"] = (512, d)
    keys["pool_model.attention_v.1.bias"] = (512,)
    keys["pool_model.attention_u.1.weight"] = (512, d)
    keys["pool_model.attention_u.1.bias"] = (512,)
    keys["pool_model.attention.weight"] = (2, 512)
    keys["pool_model.attention.bias"] = (2,)
    return keys


@pytest.mark.parametrize(("channels", "n_params"), [(4, 87_235_330), (3, None), (2, 86_842_114)])
def test_full_size_layout_equals_the_published_204_keys(channels, n_params):
    shapes = expected_encoder_shapes(ModelConfig(num_channels=channels))
    layout = published_layout(channels)
    assert len(layout) == 204
    assert list(shapes) == list(layout)  # same names, same order as the published files
    assert {k: tuple(v) for k, v in shapes.items()} == layout
    total = sum(int(np.prod(s)) for s in layout.values())
    if n_params is not None:  # counted from the full-size fixtures (model doc, section 2.2)
        assert total == n_params


@pytest.mark.slow
def test_one_full_size_forward_on_cpu():
    model = SubCell.random("DNA-Protein_MAE-CellS-ProtS-Pool", seed=0, n_classifiers=2, device="cpu")
    assert model.channels == ("nucleus", "protein")
    assert {k: tuple(v.shape) for k, v in model.encoder_state_dict().items()} == published_layout(2)
    x = torch.rand(1, 2, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
    assert out.embedding.shape == (1, 1536) and out.embedding.dtype == torch.float32
    assert out.probabilities.shape == (1, 31)
    assert out.pool_attention.shape == (1, 2, 28, 28)
    assert torch.isfinite(out.embedding).all()
    # each pooling head's weights over the 785 tokens sum to 1; the patch part is what is left after CLS
    assert (out.pool_attention.sum(dim=(-1, -2)) <= 1 + 1e-5).all()
    assert out.attentions is None
