"""The inference engine: deterministic random weights, the batch helper, memory-budget splitting, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from subcell_scale.errors import ChannelMismatchError, ConfigError
from subcell_scale.models import CLASS_COLORS, CLASS_NAMES, VARIANTS, ModelConfig, SubCell, get_variant
from subcell_scale.models.preprocessing import min_max_normalize

TINY = ModelConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, num_channels=4, pool_int_dim=32)


@pytest.fixture(scope="module")
def model() -> SubCell:
    return SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu")


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65535, (21, 4, 64, 64), dtype=np.uint16)


def test_random_weights_are_deterministic_and_seeded():
    a = SubCell.random(TINY, device="cpu", seed=7)
    b = SubCell.random(TINY, device="cpu", seed=7)
    c = SubCell.random(TINY, device="cpu", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.checkpoint_sha256 == b.checkpoint_sha256 != c.checkpoint_sha256
    assert not torch.equal(sa["encoder.embeddings.cls_token"], sc["encoder.embeddings.cls_token"])
    # the values come from numpy's PCG64 stream (machine independent): recompute one tensor here
    import zlib

    name = "pool_model.attention.weight"
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, zlib.crc32(name.encode())])))
    u = rng.random((2, 32), dtype=np.float32)
    expected = u * np.float32(2 * np.sqrt(3) * 0.02) - np.float32(np.sqrt(3) * 0.02)
    np.testing.assert_array_equal(sa[name].numpy(), expected)
    # LayerNorms start as identity, biases at zero
    assert torch.equal(sa["encoder.layernorm.weight"], torch.ones(48))
    assert torch.equal(sa["encoder.encoder.layer.0.output.dense.bias"], torch.zeros(48))


def test_random_checkpoint_sha256_is_a_hash_of_the_weights():
    import hashlib

    m = SubCell.random(TINY, device="cpu", seed=1, n_classifiers=0)
    digest = hashlib.sha256(b"subcell-scale random seed=1")
    for k, v in m.state_dict().items():
        digest.update(k.encode())
        digest.update(v.numpy().tobytes())
    assert m.checkpoint_sha256 == digest.hexdigest()


def test_attributes(model):
    assert model.channels == ("microtubules", "er", "nucleus", "protein")
    assert model.embedding_dim == 96 and model.variant is None and model.device == torch.device("cpu")
    assert model.config == TINY and not any(p.requires_grad for p in model.parameters())
    assert SubCell(TINY, device="cpu", variant="all_channels_ViT-ProtS-Pool", n_classifiers=0).variant == "all_channels_ViT-ProtS-Pool"


def test_embed_normalises_integer_crops_like_the_reference(model, crops):
    out = model.embed(crops, batch_size=16)
    floats = min_max_normalize(crops)  # per crop, over all channels, eps 1e-6
    with torch.inference_mode():
        direct = model(torch.from_numpy(floats))
    np.testing.assert_array_equal(out["embedding"], direct.embedding.numpy())
    np.testing.assert_array_equal(out["probabilities"], direct.probabilities.numpy())
    np.testing.assert_array_equal(out["pool_attention"], direct.pool_attention.numpy())
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (21, 96)
    assert out["probabilities"].shape == (21, 31) and out["pool_attention"].shape == (21, 2, 4, 4)
    # float crops pass through untouched
    again = model.embed(floats, batch_size=16)
    np.testing.assert_array_equal(again["embedding"], out["embedding"])
    # uint8 is normalised too
    small = (crops >> 8).astype(np.uint8)
    np.testing.assert_array_equal(model.embed(small)["embedding"], model.embed(min_max_normalize(small))["embedding"])


def test_results_do_not_depend_on_the_batch_size(model, crops):
    whole = model.embed(crops, batch_size=64)
    for batch_size, n in ((1, 6), (3, 21), (16, 21)):
        split = model.embed(crops[:n], batch_size=batch_size)
        for key in whole:
            np.testing.assert_array_equal(split[key], whole[key][:n], err_msg=f"{key} at batch {batch_size}")


def test_memory_budget_halves_the_batch_and_gives_identical_results(crops, caplog):
    m = SubCell.random(TINY, device="cpu", seed=3, n_classifiers=3)
    whole = m.embed(crops, batch_size=64)
    m.max_batch_bytes = m.estimate_batch_bytes(5, 64, 64)
    with pytest.raises(torch.OutOfMemoryError, match="max_batch_bytes"):
        m(torch.rand(6, 4, 64, 64))
    assert issubclass(torch.OutOfMemoryError, torch.cuda.OutOfMemoryError) or torch.OutOfMemoryError is torch.cuda.OutOfMemoryError
    with caplog.at_level(logging.WARNING, logger="subcell_scale.models.subcell"):
        split = m.embed(crops, batch_size=21)
    retries = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    # 21 -> 10 -> 5 fits; the smaller batch is kept for the rest (no new failures at 10)
    assert [r.split(" (")[0] + r.rsplit(")", 1)[1] for r in retries] == [
        "out of memory with a batch of 21 crops; retrying with 10",
        "out of memory with a batch of 10 crops; retrying with 5",
    ]
    for key in whole:
        np.testing.assert_array_equal(split[key], whole[key])
    m.max_batch_bytes = m.estimate_batch_bytes(1, 64, 64) - 1  # not even one crop fits
    with pytest.raises(torch.OutOfMemoryError):
        m.embed(crops[:2])


def test_activation_estimate_grows_with_eager_attention(model):
    eager = SubCell(TINY, device="cpu", attention="eager", n_classifiers=0)
    assert eager.estimate_batch_bytes(2, 448, 448) > model.estimate_batch_bytes(2, 448, 448)
    assert model.estimate_batch_bytes(4, 64, 64) == 4 * model.estimate_batch_bytes(1, 64, 64)


def test_multi_pass_crops_concatenate_the_pass_embeddings(model, crops):
    passes = crops.reshape(7, 3, 4, 64, 64)
    out = model.embed(passes)
    single = model.embed(crops)
    assert out["embedding"].shape == (7, 3 * 96)
    np.testing.assert_array_equal(out["embedding"].reshape(7, 3, 96), single["embedding"].reshape(7, 3, 96))
    assert out["probabilities"].shape == (7, 3, 31) and out["pool_attention"].shape == (7, 3, 2, 4, 4)


def test_no_classifiers_gives_no_probabilities():
    m = SubCell.random(TINY, device="cpu", n_classifiers=0)
    out = m.embed(np.random.default_rng(0).random((2, 4, 32, 48), dtype=np.float32))
    assert out["probabilities"] is None and out["pool_attention"].shape == (2, 2, 2, 3)
    assert m(torch.rand(1, 4, 32, 32)).probabilities is None


def test_out_of_range_floats_are_reported(model, caplog):
    with caplog.at_level(logging.WARNING, logger="subcell_scale.models.subcell"):
        model.embed(np.full((1, 4, 32, 32), 3.0, np.float32))
    assert "outside [0, 1]" in caplog.text


def test_bad_input_is_a_clear_error(model):
    with pytest.raises(ChannelMismatchError, match=r"expects \(B, 4, H, W\) input with channels \(microtubules, er, nucleus, protein\), got shape \(1, 3, 64, 64\)"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="multiples of 16, got 60 x 64"):
        model(torch.rand(1, 4, 60, 64))
    with pytest.raises(ChannelMismatchError, match="crops"):
        model.embed(np.zeros((4, 64, 64), np.uint16))
    with pytest.raises(ConfigError, match="n_classifiers"):
        SubCell(TINY, device="cpu", n_classifiers=11)
    with pytest.raises(ConfigError, match="hidden_size 50 is not divisible by num_heads 4"):
        ModelConfig(hidden_size=50, num_heads=4)
    with pytest.raises(ConfigError, match="probability_mode"):
        SubCell(TINY, device="cpu", probability_mode="logits")


def test_cpu_runs_in_fp32_even_with_bf16_requested():
    m = SubCell.random(TINY, device="cpu", seed=3, n_classifiers=1, precision="bf16")
    ref = SubCell.random(TINY, device="cpu", seed=3, n_classifiers=1, precision="fp32")
    x = torch.rand(2, 4, 64, 64)
    assert torch.equal(m(x).embedding, ref(x).embedding)


def test_registry():
    assert len(VARIANTS) == 8 and len(CLASS_NAMES) == 31 and len(CLASS_COLORS) == 31
    assert CLASS_NAMES[30] == "Negative" and CLASS_NAMES[8] == "Endoplasmic reticulum"
    v = get_variant("mt-dna-protein_vit-prots-pool")
    assert v.name == "MT-DNA-Protein_ViT-ProtS-Pool" and v.channels == ("microtubules", "nucleus", "protein")
    assert v.channel_letters == "rbg" and v.model_type == "vit_supcon_model"
    assert v.encoder_url() == "https://czi-subcell-public.s3.amazonaws.com/models/MT-DNA-Protein_ViT-ProtS-Pool.pth"
    assert v.classifier_url(3) == ("https://czi-subcell-public.s3.amazonaws.com/models/MT-DNA-Protein_ViT_MLP_classifier/"
                                   "MT-DNA-Protein_ViT_MLP_classifier_seed_3.pth")
    assert get_variant("DNA-Protein_MAE-CellS-ProtS-Pool").channel_letters == "bg"
    with pytest.raises(ConfigError, match="unknown SubCell variant 'rybg'.*all_channels_ViT-ProtS-Pool"):
        get_variant("rybg")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu_in_fp32_and_bf16_stays_close(crops):
    cpu = SubCell.random(TINY, seed=3, n_classifiers=2, device="cpu")
    gpu32 = SubCell.random(TINY, seed=3, n_classifiers=2, device="cuda", precision="fp32")
    gpu16 = SubCell.random(TINY, seed=3, n_classifiers=2, device="cuda", precision="bf16")
    assert gpu16.compute_dtype == torch.bfloat16 and gpu32.compute_dtype == torch.float32
    ref = cpu.embed(crops)
    out32 = gpu32.embed(crops, batch_size=8)
    out16 = gpu16.embed(crops, batch_size=8)
    np.testing.assert_allclose(out32["embedding"], ref["embedding"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out32["probabilities"], ref["probabilities"], atol=1e-5, rtol=0)
    scale = np.abs(ref["embedding"]).max()
    assert np.abs(out16["embedding"] - ref["embedding"]).max() < 3e-2 * scale
