"""Which model a checkpoint is: published variant names in file names, variant=, --variant and --num-heads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from subcell_scale.errors import CheckpointError, ConfigError
from subcell_scale.models import VARIANTS, SubCell, resolve_model
from subcell_scale.models.registry import checkpoint_variant, default_channels, variant_from_path, variants_named_in

TINY = Path(__file__).parent / "data" / "subcell" / "tiny_rybg"  # 4 channels, width 48, 4 heads
ER = VARIANTS["ER-DNA-Protein_MAE-CellS-ProtS-Pool"]
MT = VARIANTS["MT-DNA-Protein_MAE-CellS-ProtS-Pool"]
BOTH_THREE = r"MT-DNA-Protein \(microtubules, nucleus, protein\) or ER-DNA-Protein \(er, nucleus, protein\)"


@pytest.fixture(scope="module")
def three_channel(tmp_path_factory) -> dict[str, Path]:
    """The tiny encoder cut to 3 input channels, saved under a neutral name, plus its two classifiers."""
    folder = tmp_path_factory.mktemp("three")
    sd = torch.load(TINY / "encoder.pth", weights_only=True)
    key = "encoder.embeddings.patch_embeddings.projection.weight"
    sd[key] = sd[key][:, 1:].clone()
    torch.save(sd, folder / "model.pth")
    return {"encoder": folder / "model.pth", "classifier": TINY / "classifier_seed_0.pth"}


def named_copy(source: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(source.read_bytes())
    return folder / name


# -- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_published_name_is_recognised_in_file_names(variant, tmp_path):
    names = [variant.encoder_filename, variant.encoder_filename.lower(), variant.encoder_filename.upper(),
             f"2024-11_{variant.name}_copy.pt", variant.name.replace("-", "_") + ".pth",
             variant.classifier_filename(3), f"finetuned {variant.name.lower()} v2.pth"]
    for name in names:
        assert variants_named_in(name) == [variant], name
        assert variant_from_path(tmp_path / name) == variant, name
    # the model cache layout <variant>/<file> and the reference tool's <letters>/<model_type>/encoder.pth
    assert variant_from_path(tmp_path / variant.name / "encoder.pth") == variant
    assert variant_from_path(tmp_path / "models" / variant.channel_letters / variant.model_type / "encoder.pth") == variant


@pytest.mark.parametrize("name", ["encoder.pth", "DNA-Protein.pth", "subcell_vit.pth", "ER-DNA-Protein_MAE.pth",
                                  "all_channels.pth", "mae_contrast_supcon_model.pth"])
def test_names_that_say_no_variant(name, tmp_path):
    assert variant_from_path(tmp_path / "weights" / name) is None


def test_a_name_holding_two_variants_is_refused(tmp_path):
    path = tmp_path / f"{MT.name}_vs_{ER.name}.pth"
    with pytest.raises(CheckpointError, match=rf"names several SubCell variants \({MT.name}, {ER.name}\).*variant="):
        variant_from_path(path)


def test_given_variant_against_the_name():
    assert checkpoint_variant(f"/w/{ER.encoder_filename}") == ER
    assert checkpoint_variant("/w/model.pth", MT.name.lower()) == MT  # names are case-insensitive
    assert checkpoint_variant(f"/w/{ER.encoder_filename}", ER.name) == ER
    with pytest.raises(CheckpointError, match=rf"its name says {ER.name} but variant={MT.name} was given"):
        checkpoint_variant(f"/w/{ER.encoder_filename}", MT.name)
    with pytest.raises(ConfigError, match="unknown SubCell variant 'ER-DNA'"):
        checkpoint_variant("/w/model.pth", "ER-DNA")


def test_three_channels_alone_name_no_slots():
    with pytest.raises(ConfigError, match=BOTH_THREE):
        default_channels(3)
    assert default_channels(2) == ("nucleus", "protein")


# -- loading ---------------------------------------------------------------------------------------
def test_a_three_channel_checkpoint_is_the_variant_its_name_says(three_channel, tmp_path, caplog):
    path = named_copy(three_channel["encoder"], tmp_path, ER.encoder_filename)
    with caplog.at_level(logging.INFO, logger="subcell_scale"):
        model = SubCell.from_checkpoint(path, [three_channel["classifier"]], "cpu", num_heads=4)
    assert model.variant == ER.name and model.channels == ("er", "nucleus", "protein")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.checkpoint_sha256 == digest
    # the log names the file actually loaded, its digest, the variant and where that came from, the channels
    assert (f"loaded {ER.encoder_filename} (sha256 {digest[:12]}..., variant {ER.name} from its name, "
            f"channels er, nucleus, protein; {model.config.num_layers} layers, 4 heads, 1 classifiers)") in caplog.messages
    mt = SubCell.from_checkpoint(named_copy(three_channel["encoder"], tmp_path / "mt", MT.encoder_filename.lower()),
                                 device="cpu", num_heads=4)
    assert mt.variant == MT.name and mt.channels == ("microtubules", "nucleus", "protein")


def test_a_three_channel_checkpoint_without_a_variant_stops_naming_both(three_channel):
    with pytest.raises(CheckpointError, match=rf"model\.pth: a 3-channel SubCell checkpoint whose name does not say "
                                              rf"which variant it is, {BOTH_THREE}; say which with variant= "
                                              r"\(--variant on the command line\)"):
        SubCell.from_checkpoint(three_channel["encoder"], device="cpu", num_heads=4)


def test_a_renamed_file_loads_with_variant(three_channel):
    model = SubCell.from_checkpoint(three_channel["encoder"], device="cpu", num_heads=4, variant=ER.name)
    assert model.variant == ER.name and model.channels == ("er", "nucleus", "protein")
    # channels= says the slots without a variant (a re-trained model)
    own = SubCell.from_checkpoint(three_channel["encoder"], device="cpu", num_heads=4,
                                  channels=("er", "nucleus", "protein"))
    assert own.variant is None and own.channels == ("er", "nucleus", "protein")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x).embedding, own(x).embedding)


def test_a_name_against_variant_or_against_the_channels_is_refused(three_channel, tmp_path):
    er_file = named_copy(three_channel["encoder"], tmp_path, ER.encoder_filename)
    with pytest.raises(CheckpointError, match=rf"its name says {ER.name} but variant={MT.name} was given"):
        SubCell.from_checkpoint(er_file, device="cpu", num_heads=4, variant=MT.name)
    # a 3-channel file named after a 4-channel variant (or told so) is another variant's file
    wrong = named_copy(three_channel["encoder"], tmp_path, "all_channels_ViT-ProtS-Pool.pth")
    with pytest.raises(CheckpointError, match=r"has 3 input channels but all_channels_ViT-ProtS-Pool needs 4 .*"
                                              r"its name says it is"):
        SubCell.from_checkpoint(wrong, device="cpu", num_heads=4)
    with pytest.raises(CheckpointError, match=r"has 3 input channels but DNA-Protein_ViT-ProtS-Pool needs 2 .*"
                                              r"variant= says it is"):
        SubCell.from_checkpoint(three_channel["encoder"], device="cpu", num_heads=4, variant="DNA-Protein_ViT-ProtS-Pool")


def test_a_classifier_named_for_another_variant_is_refused(three_channel, tmp_path):
    er_file = named_copy(three_channel["encoder"], tmp_path, ER.encoder_filename)
    mt_head = named_copy(three_channel["classifier"], tmp_path, MT.classifier_filename(0))
    with pytest.raises(CheckpointError, match=rf"{MT.classifier_filename(0)}: by its name a classifier of {MT.name}, "
                                              rf"but the encoder {ER.encoder_filename} is {ER.name}"):
        SubCell.from_checkpoint(er_file, [mt_head], device="cpu", num_heads=4)
    er_head = named_copy(three_channel["classifier"], tmp_path, ER.classifier_filename(0))
    assert SubCell.from_checkpoint(er_file, [er_head], device="cpu", num_heads=4).n_classifiers == 1


def test_non_standard_width_needs_num_heads_and_uses_it():
    """Width 48 is no multiple of 64: the heads cannot be read off the shapes; the right count matches the reference."""
    with pytest.raises(CheckpointError, match=r"hidden size 48 .* pass num_heads= \(--num-heads on the command line\)"):
        SubCell.from_checkpoint(TINY / "encoder.pth", device="cpu")
    x = torch.from_numpy(np.load(TINY / "input_64.npy"))
    four = SubCell.from_checkpoint(TINY / "encoder.pth", device="cpu", num_heads=4)
    np.testing.assert_allclose(four(x).embedding.numpy(), np.load(TINY / "out64_pool_op.npy"), atol=1e-5)
    two = SubCell.from_checkpoint(TINY / "encoder.pth", device="cpu", num_heads=2)
    assert two.config.num_heads == 2
    assert not np.allclose(two(x).embedding.numpy(), np.load(TINY / "out64_pool_op.npy"), atol=1e-3)
    with pytest.raises(CheckpointError, match=r"encoder\.pth: ModelConfig: hidden_size 48 is not divisible by num_heads 5"):
        SubCell.from_checkpoint(TINY / "encoder.pth", device="cpu", num_heads=5)


# -- through resolve_model, embed_plate and the command line ---------------------------------------
def test_resolve_model_carries_the_variant_and_heads(three_channel, tmp_path):
    path = named_copy(three_channel["encoder"], tmp_path, "weights.pth")
    resolved = resolve_model(path, variant=ER.name.lower(), num_heads=4)
    assert resolved.spec.options == {"variant": ER.name, "num_heads": 4}
    assert resolved.identity["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = resolved.with_channels("cpu")
    assert loaded.channels == ("er", "nucleus", "protein") and loaded.variant == ER.name
    # the preset's default variant says nothing about a checkpoint
    with pytest.raises(CheckpointError, match=BOTH_THREE):
        resolve_model(path, num_heads=4, default_variant=ER.name).with_channels("cpu")
    # a link keeps the name it was given: the name is what is read, not the target's
    link = tmp_path / ER.encoder_filename
    os.symlink(path, link)
    assert resolve_model(link, num_heads=4).with_channels("cpu").variant == ER.name
    with pytest.raises(CheckpointError, match=rf"its name says {ER.name} but variant={MT.name} was given"):
        resolve_model(link, variant=MT.name)
    with pytest.raises(ConfigError, match=rf"variant={MT.name} was given, but model '{ER.name}' is {ER.name}"):
        resolve_model(ER.name, variant=MT.name)


@pytest.fixture(scope="module")
def cell_painting(demo_plates) -> str:
    """A Cell Painting plate (DNA, ER, RNA, AGP, Mito): no microtubule channel."""
    return demo_plates(n_plates=1, n_wells=4, n_fields=1, field_size=192, seed=1, cellpainting=True)["plate"]


@pytest.fixture(scope="module")
def er_model(tmp_path_factory) -> dict:
    """A small 3-channel model with standard width (64 = one head), saved under a neutral name."""
    from subcell_scale.models.config import ModelConfig

    config = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, num_channels=3,
                         pool_int_dim=16)
    model = SubCell.random(config, seed=5, n_classifiers=0, channels=ER.channels, device="cpu")
    folder = tmp_path_factory.mktemp("er")
    torch.save(model.encoder_state_dict(), folder / "model.pth")
    return {"model": model, "path": folder / "model.pth"}


JUMP = {"preset": "jump-cellpainting", "out_size": 32, "progress": False}


@pytest.fixture(scope="module")
def reference_cells(cell_painting, er_model):
    """The plate embedded with the instance, which knows its channels (the oracle of the runs below)."""
    from subcell_scale import embed_plate

    return embed_plate(cell_painting, er_model["model"], **JUMP)


@pytest.mark.slow
def test_an_er_checkpoint_named_so_runs_on_a_cell_painting_plate(cell_painting, er_model, reference_cells,
                                                                   tmp_path, caplog):
    from subcell_scale import embed_plate

    named = named_copy(er_model["path"], tmp_path, ER.encoder_filename)
    with caplog.at_level(logging.INFO, logger="subcell_scale"):
        cells = embed_plate(cell_painting, named, out=tmp_path / "run", **JUMP)
    digest = hashlib.sha256(named.read_bytes()).hexdigest()
    assert (f"model: checkpoint {ER.encoder_filename}, sha256 {digest[:12]}..., variant {ER.name}, "
            "channels er, nucleus, protein") in caplog.messages
    assert cells.n_obs == reference_cells.n_obs > 0
    np.testing.assert_array_equal(np.asarray(cells.X), reference_cells.X)
    prov = cells.uns["subcell_scale"]
    assert prov["variant"] == ER.name and list(prov["model_channels"]) == ["er", "nucleus", "protein"]
    assert prov["checkpoint_sha256"] == digest


def test_an_unnamed_three_channel_checkpoint_stops_before_any_work(cell_painting, er_model, tmp_path):
    from subcell_scale import embed_plate

    with pytest.raises(CheckpointError, match=rf"model\.pth: a 3-channel SubCell checkpoint .*{BOTH_THREE}"):
        embed_plate(cell_painting, er_model["path"], out=tmp_path / "run", **JUMP)
    assert not (tmp_path / "run").exists()


def _cli(*args: str, sets: tuple[str, ...] = ()) -> list[str]:
    return ["embed", *args, "--preset", "jump-cellpainting", "--no-progress", "--set", "out_size=32", *sets]


@pytest.mark.slow
@pytest.mark.parametrize("say", [{"args": ("--variant", ER.name)}, {"sets": (f"variant={ER.name}",)}],
                         ids=["variant", "set"])
def test_the_command_line_says_which_variant_a_renamed_file_is(cell_painting, er_model, reference_cells, tmp_path,
                                                                say, capsys):
    import anndata as ad

    from subcell_scale.cli import main

    out = tmp_path / "run"
    args = _cli(cell_painting, "--out", str(out), "--model", str(er_model["path"]), *say.get("args", ()),
                sets=say.get("sets", ()))
    assert main(args) == 0, capsys.readouterr().err
    cells = ad.read_zarr(out / "cells.zarr")
    np.testing.assert_array_equal(cells.X, reference_cells.X)
    assert cells.uns["subcell_scale"]["variant"] == ER.name


def test_the_command_line_refuses_what_it_cannot_tell_or_that_disagrees(cell_painting, er_model, tmp_path, capsys):
    from subcell_scale.cli import main

    base = _cli(cell_painting, "--out", str(tmp_path / "run"))
    assert main(base + ["--model", str(er_model["path"])]) == 1
    assert re.search(rf"a 3-channel SubCell checkpoint .*{BOTH_THREE}; say which with variant= \(--variant",
                     capsys.readouterr().err)
    named = named_copy(er_model["path"], tmp_path, ER.encoder_filename)
    assert main(base + ["--model", str(named), "--variant", MT.name]) == 1
    assert f"its name says {ER.name} but variant={MT.name} was given" in capsys.readouterr().err
    assert main(_cli(cell_painting, "--out", str(tmp_path / "run"), "--model", str(named), "--variant", ER.name,
                     sets=(f"variant={MT.name}",))) == 2  # a usage error: two options that contradict each other
    assert f"--variant {ER.name} and --set variant={MT.name} disagree" in capsys.readouterr().err
    assert main(base + ["--model", MT.name, "--variant", ER.name]) == 1
    assert f"variant={ER.name} was given, but model '{MT.name}' is {MT.name}" in capsys.readouterr().err
    assert main(base + ["--model", ER.name, "--num-heads", "4"]) == 1
    assert "--num-heads (num_heads=) applies to a checkpoint --model" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_num_heads_on_the_command_line_for_a_non_standard_width(demo_plates, tmp_path, capsys):
    """The tiny fixture is 48 wide with 4 heads: --num-heads 4 gives the embeddings of that model."""
    import anndata as ad

    from subcell_scale.cli import main
    from subcell_scale import embed_plate

    plate = demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)["plate"]
    args = ["embed", plate, "--model", str(TINY / "encoder.pth"), "--set", "out_size=32", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "no")]) == 1
    assert "pass num_heads= (--num-heads on the command line)" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "run"), "--num-heads", "4"]) == 0, capsys.readouterr().err
    cells = ad.read_zarr(tmp_path / "run" / "cells.zarr")
    model = SubCell.from_checkpoint(TINY / "encoder.pth", device="cpu", num_heads=4)
    expected = embed_plate(plate, model, out_size=32, progress=False)
    assert cells.n_obs == expected.n_obs > 0
    np.testing.assert_array_equal(cells.X, expected.X)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["embed"]["model"]["options"] == {"num_heads": 4}
