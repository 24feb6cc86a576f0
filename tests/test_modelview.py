"""A user's model as a view: its crops and outputs equal the module on crops cut alike, stored beside X,
checked before work, and profiled and evaluated beside SubCell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from subcell_scale import embed_plate, read_cells
from subcell_scale._constants import Files, Keys
from subcell_scale.cells import CropSpec, extract_cells
from subcell_scale.errors import ChannelMismatchError, ConfigError, RunDirectoryError
from subcell_scale.io import open_plate
from subcell_scale.modelview import ModelView

SMALL = {"out_size": 32}


class MeanLinear(torch.nn.Module):
    """A small model: each channel's mean intensity, then a fixed linear map to 3 numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -2.0]]))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)


def _view(model=None, **options) -> ModelView:
    return ModelView("mine", MeanLinear() if model is None else model, channels=["dna", "protein"], size=16,
                     crop_um=40.0, mean=(0.5, 0.5), std=(0.25, 0.5), **options)


def test_the_view_is_the_module_on_crops_cut_alike(demo, tiny_model, tmp_path):
    adata = embed_plate(demo["plate"], tiny_model, out=tmp_path / "run", progress=False, views=[_view()], **SMALL)
    view = adata.obsm["mine"]
    assert isinstance(view, pd.DataFrame) and list(view.columns) == ["mine_0000", "mine_0001", "mine_0002"]
    assert list(view.index) == list(adata.obs_names)
    record = adata.uns[Keys.VIEWS]["mine"]
    assert record["kind"] == "model" and record["size"] == 16 and len(record["sha256"]) == 64
    # the oracle: the plate's field, the run's kept cells, crops from extract_cells, the module itself
    plate = open_plate(demo["plate"])
    rows = (adata.obs["well"].astype(str) == "A02").to_numpy()
    labels = adata.obs["label"].to_numpy()[rows]
    stored = np.asarray(plate.read_labels("A02", "0", "cells"))
    kept = np.where(np.isin(stored, labels), stored, 0)
    spec = CropSpec(crop_um=40.0, model_pixel_size=40.0 / 16, out_size=16, mask_mode="none",
                    normalization="per_channel")
    channels = [list(plate.channel_names).index("dna"), list(plate.channel_names).index("protein")]
    crops, table = extract_cells(np.asarray(plate.read_field("A02", "0")), kept, plate.pixel_size, spec,
                                 channels=[channels])
    x = (torch.from_numpy(crops[:, 0]) - 0.5) / torch.tensor([0.25, 0.5]).view(1, 2, 1, 1)
    expected = MeanLinear()(x).detach().numpy()
    assert list(table["label"]) == list(labels)
    np.testing.assert_allclose(view.to_numpy()[rows], expected, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(read_cells(tmp_path / "run").obsm["mine"], view)
    assert (tmp_path / "run" / "views" / f"mine-{record['sha256'][:12]}.pt").is_file()


def test_a_torchscript_file_gives_the_same_view_and_a_new_model_is_a_new_run(demo, tiny_model, tmp_path):
    path = tmp_path / "mine.pt"
    torch.jit.save(torch.jit.script(MeanLinear()), str(path))
    from_file = embed_plate(demo["plate"], tiny_model, progress=False, views=[_view(str(path))], **SMALL)
    from_module = embed_plate(demo["plate"], tiny_model, out=tmp_path / "run", progress=False, views=[_view()],
                              **SMALL)
    np.testing.assert_allclose(from_file.obsm["mine"].to_numpy(), from_module.obsm["mine"].to_numpy(), rtol=1e-6)
    other = MeanLinear()
    with torch.no_grad():
        other.linear.bias.fill_(1.0)
    with pytest.raises(RunDirectoryError):
        embed_plate(demo["plate"], tiny_model, out=tmp_path / "run", progress=False, views=[_view(other)], **SMALL)


def test_bad_views_are_named_before_any_work(demo, tiny_model):
    with pytest.raises(ChannelMismatchError, match="view 'mine' needs channel.*'golgi'"):
        embed_plate(demo["plate"], tiny_model, progress=False, **SMALL,
                    views=[ModelView("mine", MeanLinear(), channels=["dna", "golgi"], size=16)])
    with pytest.raises(ConfigError, match="reserved"):
        embed_plate(demo["plate"], tiny_model, progress=False, **SMALL,
                    views=[ModelView("cellprofiler", MeanLinear(), channels=["dna", "protein"], size=16)])
    with pytest.raises(ConfigError, match="mean has 1 values for 2 channels"):
        embed_plate(demo["plate"], tiny_model, progress=False, **SMALL,
                    views=[ModelView("mine", MeanLinear(), channels=["dna", "protein"], size=16, mean=(0.5,))])


@pytest.mark.processes
def test_a_run_evaluates_subcell_cellprofiler_and_the_users_model_side_by_side(demo_plates, tiny_spec, tmp_path):
    pytest.importorskip("cp_measure")
    from subcell_scale.workflow import run

    demo = demo_plates(n_plates=2, n_wells=6, n_fields=1, field_size=256, cells_per_field=8, seed=1)
    out = tmp_path / "run"
    result = run(demo["plates"], out=out, platemap=demo["platemap"], model=tiny_spec, client=None, progress=False,
                 out_size=32, null_size=200, cellprofiler=["sizeshape"], views=[_view()])
    assert result.ok, result.lines()
    summary = pd.read_csv(out / Files.METRICS / "summary.csv")
    assert list(dict.fromkeys(summary["view"])) == ["subcell", "cellprofiler", "mine", "subcell+cellprofiler+mine"]
    assert (out / Files.METRICS / "views" / "mine" / "replicate_map.csv").is_file()
