"""Wrong or unsafe weight files are refused with a CheckpointError naming the file, and nothing runs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from subcell_scale.errors import CheckpointError
from subcell_scale.models import SubCell
from subcell_scale.models.checkpoint import load_state_dict_file

TINY = Path(__file__).parent / "data" / "subcell" / "tiny_rybg"


@pytest.fixture(scope="module")
def encoder_sd() -> dict[str, torch.Tensor]:
    return torch.load(TINY / "encoder.pth", weights_only=True)


def load(path, classifiers=(), **kw) -> SubCell:
    return SubCell.from_checkpoint(path, classifiers, "cpu", num_heads=4, **kw)


def test_published_layout_loads_and_records_the_sha256():
    import hashlib

    model = load(TINY / "encoder.pth", str(TINY / "classifier_seed_0.pth"))  # one path, not a list
    assert model.n_classifiers == 1
    assert model.checkpoint_sha256 == hashlib.sha256((TINY / "encoder.pth").read_bytes()).hexdigest()
    assert model.classifier_sha256 == [hashlib.sha256((TINY / "classifier_seed_0.pth").read_bytes()).hexdigest()]


def test_another_variants_channel_count_is_refused(tmp_path, encoder_sd):
    sd = dict(encoder_sd)
    key = "encoder.embeddings.patch_embeddings.projection.weight"
    sd[key] = sd[key][:, :2].clone()  # a 2-channel (DNA-Protein) encoder
    path = tmp_path / "dna_protein.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"dna_protein\.pth.*2 input channels.*all_channels_ViT-ProtS-Pool needs 4"):
        load(path, variant="all_channels_ViT-ProtS-Pool")
    # without a variant it loads as a 2-channel model with the DNA-Protein slots
    assert load(path).channels == ("nucleus", "protein")


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_missing_extra_or_misshapen_keys_are_refused(tmp_path, encoder_sd, change):
    sd = dict(encoder_sd)
    if change == "missing":
        del sd["encoder.encoder.layer.1.attention.output.dense.bias"]
        pattern = r"missing key.*layer\.1\.attention\.output\.dense\.bias"
    elif change == "extra":
        sd["encoder.pooler.dense.weight"] = torch.zeros(48, 48)
        pattern = r"unexpected key.*encoder\.pooler\.dense\.weight"
    else:
        sd["pool_model.attention_u.1.bias"] = torch.zeros(33)
        pattern = r"wrong shape.*pool_model\.attention_u\.1\.bias \(33,\) \(expected \(32,\)\)"
    path = tmp_path / f"{change}.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=rf"{change}\.pth: does not match the SubCell encoder.*{pattern}"):
        load(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "truncated.pth"
    data = (TINY / "encoder.pth").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a loadable weights file"):
        load(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        load(tmp_path / "nope.pth")


@pytest.mark.parametrize(("obj", "pattern"), [
    ([torch.zeros(3)], r"expected a state_dict.*found list"),
    ({"state_dict": {"a": torch.zeros(1)}}, r"wrapped under the key 'state_dict'"),
    ({"a": torch.zeros(1), "epoch": 3}, r"not a state_dict: entries \['epoch'\]"),
    ({}, r"empty"),
])
def test_objects_that_are_not_state_dicts_are_refused(tmp_path, obj, pattern):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=rf"odd\.pth: .*{pattern}"):
        load_state_dict_file(path)


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"encoder.embeddings.cls_token": _Payload(str(marker))}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    # the payload works: plain pickle would run it
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()
    with pytest.raises(CheckpointError, match=r"evil\.pth: not a loadable weights file.*nothing in the file was executed"):
        load(path)
    assert not marker.exists()


def test_classifier_that_does_not_fit_the_encoder_is_refused(tmp_path):
    bad = tmp_path / "classifier_1536.pth"
    shutil.copy(Path(__file__).parent / "data" / "subcell" / "mlp_classifier" / "classifier_seed_7.pth", bad)
    with pytest.raises(CheckpointError, match=r"classifier_1536\.pth: classifier takes 1536-d embeddings.*gives 96-d"):
        load(TINY / "encoder.pth", [bad])


def test_encoder_given_as_classifier_is_refused():
    with pytest.raises(CheckpointError, match=r"encoder\.pth: not a SubCell MLP classifier"):
        load(TINY / "encoder.pth", [TINY / "encoder.pth"])


def test_heads_cannot_be_guessed_for_a_width_not_multiple_of_64():
    with pytest.raises(CheckpointError, match=r"encoder\.pth: hidden size 48 .* pass num_heads="):
        SubCell.from_checkpoint(TINY / "encoder.pth")
