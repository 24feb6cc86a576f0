"""The engine reproduces the reference SubCell code's outputs on the shipped fixtures.

Fixtures (tests/data/subcell, see its README): outputs of SubCellPortable's ``vit_model.py`` with
transformers 4.45.1 on deterministic random weights in the published file layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from subcell_scale.models import SubCell
from subcell_scale.models.classifier import MLPClassifier
from subcell_scale.models.checkpoint import load_state_dict_file

DATA = Path(__file__).parent / "data" / "subcell"
TINY = DATA / "tiny_rybg"
TOL_HIDDEN = 1e-4  # fixture README: pool_op and last_hidden_state
TOL_PROB = 1e-6  # probabilities
TOL_ATTN = 1e-5  # attention maps


def ref(name: str) -> np.ndarray:
    return np.load(TINY / name)


@pytest.fixture(scope="module")
def tiny() -> SubCell:
    return SubCell.from_checkpoint(TINY / "encoder.pth", [TINY / "classifier_seed_0.pth", TINY / "classifier_seed_1.pth"],
                                   "cpu", num_heads=4)


@pytest.fixture(scope="module", params=[64, 96])
def size_and_output(request, tiny):
    size = request.param
    x = torch.from_numpy(ref(f"input_{size}.npy"))
    return size, tiny(x, return_attentions=True, return_hidden_state=True)


def test_tiny_config_is_inferred_from_the_checkpoint(tiny):
    c = tiny.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size) == (48, 2, 4, 96)
    assert (c.num_channels, c.patch_size, c.image_size, c.pool_int_dim, c.pool_heads) == (4, 16, 64, 32, 2)
    assert tiny.embedding_dim == 96
    assert tiny.channels == ("microtubules", "er", "nucleus", "protein")
    assert tiny.n_classifiers == 2


def test_embedding_and_hidden_state_match_the_reference(size_and_output):
    size, out = size_and_output
    np.testing.assert_allclose(out.embedding.numpy(), ref(f"out{size}_pool_op.npy"), atol=TOL_HIDDEN, rtol=0)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), ref(f"out{size}_last_hidden_state.npy"),
                               atol=TOL_HIDDEN, rtol=0)


def test_attention_maps_match_the_reference(size_and_output, tiny):
    size, out = size_and_output
    grid = size // 16
    assert out.pool_attention.shape == (ref(f"input_{size}.npy").shape[0], 2, grid, grid)
    np.testing.assert_allclose(out.pool_attention.numpy(), ref(f"out{size}_pool_attn.npy"), atol=TOL_ATTN, rtol=0)
    np.testing.assert_allclose(out.attentions.numpy(), ref(f"out{size}_attentions_cls_last.npy"), atol=TOL_ATTN, rtol=0)
    _, full = tiny.pool_model(out.last_hidden_state)
    np.testing.assert_allclose(full.numpy(), ref(f"out{size}_pool_attn_full.npy"), atol=TOL_ATTN, rtol=0)


def test_both_classifier_seeds_and_their_mean_match(size_and_output):
    size, out = size_and_output
    for k in (0, 1):
        np.testing.assert_allclose(out.logits[:, k].numpy(), ref(f"out{size}_classifier_seed_{k}_logits.npy"),
                                   atol=TOL_HIDDEN, rtol=0)
    np.testing.assert_allclose(out.probabilities.numpy(), ref(f"out{size}_probabilities.npy"), atol=TOL_PROB, rtol=0)
    # independent: the mean of the two seeds' sigmoids computed from the reference logits
    expected = (1 / (1 + np.exp(-ref(f"out{size}_classifier_seed_0_logits.npy").astype(np.float64)))
                + 1 / (1 + np.exp(-ref(f"out{size}_classifier_seed_1_logits.npy").astype(np.float64)))) / 2
    np.testing.assert_allclose(out.probabilities.numpy(), expected, atol=TOL_PROB, rtol=0)


@pytest.mark.parametrize("size", [64, 96])
def test_softmax_compatibility_mode_matches_portable_2025(size):
    model = SubCell.from_checkpoint(TINY / "encoder.pth", [TINY / "classifier_seed_0.pth", TINY / "classifier_seed_1.pth"],
                                    "cpu", num_heads=4, probability_mode="softmax")
    out = model(torch.from_numpy(ref(f"input_{size}.npy")))
    expected = ref(f"out{size}_probabilities_softmax_portable2025.npy")
    np.testing.assert_allclose(out.probabilities.numpy(), expected, atol=TOL_PROB, rtol=0)
    np.testing.assert_allclose(out.probabilities.sum(-1).numpy(), 1.0, atol=1e-6)


def test_sdpa_and_eager_attention_agree(tiny):
    x = torch.from_numpy(ref("input_96.npy"))
    eager = SubCell.from_checkpoint(TINY / "encoder.pth", (), "cpu", num_heads=4, attention="eager")
    hidden_e, attn_e = eager.encoder(x)
    hidden_s, attn_s = tiny.encoder(x)
    assert attn_s is None  # SDPA keeps no probabilities unless asked
    assert len(attn_e) == 2 and attn_e[0].shape == (1, 4, 37, 37)  # reference-style: every layer kept
    np.testing.assert_allclose(hidden_s.numpy(), hidden_e.numpy(), atol=1e-5, rtol=0)
    _, last_only = tiny.encoder(x, output_attentions="last")
    assert len(last_only) == 1
    np.testing.assert_allclose(last_only[0].numpy(), attn_e[-1].numpy(), atol=1e-6, rtol=0)


def test_attentions_are_only_returned_when_asked(tiny):
    out = tiny(torch.from_numpy(ref("input_64.npy")))
    assert out.attentions is None and out.last_hidden_state is None


def test_legacy_position_interpolation_is_transformers_4_44(tiny):
    legacy = SubCell.from_checkpoint(TINY / "encoder.pth", (), "cpu", num_heads=4, pos_interpolation="legacy")
    pos = legacy.encoder.embeddings.position_embeddings
    table = pos[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    # transformers <= 4.44: scale_factor with the +0.1 offset instead of size=
    expected = F.interpolate(table, scale_factor=(6.1 / 4, 6.1 / 4), mode="bicubic", align_corners=False)
    expected = torch.cat((pos[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 36, 48)), dim=1)
    got = legacy.encoder.embeddings.interpolate_pos_encoding(36, 96, 96)
    assert torch.equal(got, expected)
    modern = tiny.encoder.embeddings.interpolate_pos_encoding(36, 96, 96)
    assert (got - modern).abs().max() > 1e-4  # the two modes really differ at 96 px
    # at the training size both use the table unchanged
    assert torch.equal(legacy.encoder.embeddings.interpolate_pos_encoding(16, 64, 64), pos)
    x = torch.from_numpy(ref("input_64.npy"))
    assert torch.equal(legacy(x).embedding, tiny(x).embedding)


def test_non_square_input_interpolates_to_the_exact_grid(tiny):
    x = torch.rand(1, 4, 64, 96)
    out = tiny(x)
    assert out.pool_attention.shape == (1, 2, 4, 6)
    pos = tiny.encoder.embeddings.position_embeddings
    table = pos[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(4, 6), mode="bicubic", align_corners=False)
    got = tiny.encoder.embeddings.interpolate_pos_encoding(24, 64, 96)
    assert torch.equal(got[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 24, 48))


def test_full_size_mlp_classifier_fixture():
    mlp = MLPClassifier(1536)
    mlp.load_state_dict(load_state_dict_file(DATA / "mlp_classifier" / "classifier_seed_7.pth"), strict=True)
    x = torch.from_numpy(np.load(DATA / "mlp_classifier" / "input_embedding.npy"))
    with torch.inference_mode():
        logits = mlp(x)
    np.testing.assert_allclose(logits.numpy(), np.load(DATA / "mlp_classifier" / "out_logits.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), np.load(DATA / "mlp_classifier" / "out_sigmoid.npy"),
                               atol=TOL_PROB, rtol=0)
