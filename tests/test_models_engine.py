"""The inference engine: deterministic random weights, the batch helper, memory-budget splitting, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from subcell_scale.errors import ChannelMismatchError, ConfigError
from subcell_scale.models import CLASS_COLORS, CLASS_NAMES, VARIANTS, ModelConfig, SubCell, get_variant
from subcell_scale.models.preprocessing import min_max_normalize
from subcell_scale.models.subcell import CPU_ROWS

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


# ---------------------------------------------------------------------------------------------------- engine options
# Each option changes how the backbone computes, never what: the default path is the oracle.


def _ops(model: SubCell, x: torch.Tensor) -> set[str]:
    """Names of the torch operators one forward pass runs (from the profiler), on an inference tensor as embed's."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        x = x.clone()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    return {event.key for event in prof.key_averages()}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "flash", "math"])
def test_attention_backend_runs_its_kernel_and_gives_the_default_embeddings(model, crops, backend):
    pinned = SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu", attention_backend=backend)
    out, ref = pinned.embed(crops, batch_size=8), model.embed(crops, batch_size=8)
    scale = np.abs(ref["embedding"]).max()
    np.testing.assert_allclose(out["embedding"], ref["embedding"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=0, atol=1e-6)
    ops = _ops(pinned, torch.rand(2, 4, 64, 64))
    # the CPU's fused kernel is the flash one, which torch also picks itself for these inputs
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu" in ops) == (backend != "math")
    assert ("aten::_scaled_dot_product_attention_math" in ops) == (backend == "math")


@pytest.mark.parametrize("backend", ["cudnn", "efficient"])
def test_attention_backend_the_device_lacks_is_a_clear_error(backend):
    pinned = SubCell.random(TINY, seed=3, n_classifiers=0, device="cpu", attention_backend=backend)
    with pytest.raises(ConfigError, match=rf"attention_backend='{backend}' cannot run on cpu in float32 with "
                                          r"12-d heads .*'auto' lets torch choose"):
        pinned.embed(np.ones((2, 4, 32, 32), np.float32))


def test_engine_options_are_checked():
    with pytest.raises(ConfigError, match="attention_backend must be one of 'auto', 'cudnn', 'flash', 'efficient', "
                                          "'math', got 'fast'"):
        SubCell(TINY, device="cpu", attention_backend="fast")
    with pytest.raises(ConfigError, match="patch_embedding must be one of 'unfold', 'conv', 'channels-last', got 'nhwc'"):
        SubCell(TINY, device="cpu", patch_embedding="nhwc")
    for bad in (0, 2.5, True, -8):
        with pytest.raises(ConfigError, match="pad_batches must be a whole number of rows >= 1"):
            SubCell(TINY, device="cpu", pad_batches=bad)
    assert SubCell(TINY, device="cpu").pad_batches is None


@pytest.mark.parametrize("mode", ["conv", "channels-last"])
def test_patch_embedding_modes_compute_the_published_convolution(model, crops, mode):
    other = SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu", patch_embedding=mode)
    patches = other.encoder.embeddings.patch_embeddings
    # oracle: the published Conv2d module itself, on a side that leaves a partial patch (ignored by it)
    x = torch.rand(3, 4, 70, 53)
    with torch.inference_mode():
        conv = patches.projection(x) - patches.projection.bias[:, None, None]
        expected = conv.flatten(2).transpose(1, 2)
        tokens = patches(x)
        default = model.encoder.embeddings.patch_embeddings(x)
    assert tokens.shape == expected.shape == (3, 4 * 3, 48)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(default, expected, rtol=0, atol=1e-5)
    out, ref = other.embed(crops, batch_size=8), model.embed(crops, batch_size=8)
    np.testing.assert_allclose(out["embedding"], ref["embedding"], rtol=0, atol=1e-5 * np.abs(ref["embedding"]).max())
    np.testing.assert_allclose(out["pool_attention"], ref["pool_attention"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_padded_batches_run_few_shapes_and_give_identical_results(model, crops):
    padded = SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu", pad_batches=8)
    shapes: list[int] = []
    padded.register_forward_pre_hook(lambda _module, args: shapes.append(args[0].shape[0]))  # the batches run
    encoder: list[int] = []
    padded.encoder.register_forward_pre_hook(lambda _module, args: encoder.append(args[0].shape[0]))
    for batch_size, n in ((5, 21), (16, 21), (16, 3), (24, 21)):
        shapes.clear()
        out = padded.embed(crops[:n], batch_size=batch_size)
        ref = model.embed(crops[:n], batch_size=batch_size)
        for key in ref:  # the blank rows change no cell's results, and none of them comes back
            assert out[key].shape[0] == n
            np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{key} at batch {batch_size}")
        # up to a multiple of 8, never past the batch size
        assert shapes == {5: [5] * 5, 16: [16, 8], 24: [24]}[batch_size] if n == 21 else shapes == [8]
    assert set(encoder) == {CPU_ROWS}  # on the CPU the encoder sees one shape whatever the batches
    # multi-pass crops pad the flat batch the same way
    passes = padded.embed(crops.reshape(7, 3, 4, 64, 64), batch_size=9)
    np.testing.assert_array_equal(passes["embedding"], model.embed(crops.reshape(7, 3, 4, 64, 64))["embedding"])


def test_padding_shrinks_with_a_batch_halved_for_memory(crops, caplog):
    m = SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu", pad_batches=16)
    whole = m.embed(crops, batch_size=64)
    m.max_batch_bytes = m.estimate_batch_bytes(5, 64, 64)
    with caplog.at_level(logging.WARNING, logger="subcell_scale.models.subcell"):
        split = m.embed(crops, batch_size=16)  # 16 -> 8 -> 4, each time padded no further than the batch
    assert "retrying with 4" in caplog.text
    for key in whole:
        np.testing.assert_array_equal(split[key], whole[key])


@pytest.mark.slow
def test_cuda_graph_compile_mode_pads_to_one_shape_and_keeps_the_attention_kernel(model, crops):
    """compile="reduce-overhead" on the CPU (inductor, no graphs there): one compiled shape, same embeddings."""
    torch._dynamo.reset()
    compiled = SubCell.random(TINY, seed=3, n_classifiers=3, device="cpu", compile="reduce-overhead",
                              attention_backend="math")
    assert compiled.graphs and compiled.pad_batches == 32
    first = compiled.embed(crops, batch_size=16)  # 16 + 5 -> 16 + 16: one shape compiled
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new shape would recompile
        again = compiled.embed(crops[:3], batch_size=16)
        ops = _ops(compiled, torch.rand(16, 4, 64, 64))
    ref = model.embed(crops, batch_size=16)
    scale = np.abs(ref["embedding"]).max()
    np.testing.assert_allclose(first["embedding"], ref["embedding"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(again["embedding"], ref["embedding"][:3], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(first["probabilities"], ref["probabilities"], rtol=0, atol=1e-6)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in ops  # the pinned kernel, compiled too
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_engine_options_stay_within_the_bf16_tolerance_of_fp32(crops):
    """Every kernel and layout option in bf16 against fp32 on the GPU, as the default bf16 path is checked above.

    The bounds are the tiny model's bf16 ones (the full model stays within 1e-2 relative, cosine >= 0.9999);
    a wrong kernel or layout would miss them by orders of magnitude.
    """
    config = ModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, num_channels=4,
                         pool_int_dim=32)  # 64-d heads, which every fused kernel takes
    ref = SubCell.random(config, seed=3, n_classifiers=1, device="cuda", precision="fp32").embed(crops)["embedding"]
    options = [{"attention_backend": b} for b in ("cudnn", "flash", "efficient", "math")]
    options += [{"patch_embedding": "conv"}, {"patch_embedding": "channels-last"},
                {"compile": "reduce-overhead"}, {"pad_batches": 8}]
    for option in options:
        model = SubCell.random(config, seed=3, n_classifiers=1, device="cuda", precision="bf16", **option)
        out = model.embed(crops, batch_size=16)["embedding"]
        again = model.embed(crops[:5], batch_size=16)["embedding"]  # another batch shape, replayed graphs reused
        cosine = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        assert np.abs(out - ref).max() < 3e-2 * np.abs(ref).max(), option
        assert cosine.min() >= 0.999, option
        assert np.abs(again - out[:5]).max() < 3e-2 * np.abs(ref).max(), option


def test_a_random_spec_with_a_config_stands_in_for_a_named_variant():
    from subcell_scale.models import ModelSpec

    config = {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64, "num_channels": 3,
              "pool_int_dim": 16}
    model = ModelSpec("random", variant="ER-DNA-Protein_MAE-CellS-ProtS-Pool", config=config).load("cpu")
    assert model.variant == "ER-DNA-Protein_MAE-CellS-ProtS-Pool" and model.channels == ("er", "nucleus", "protein")
