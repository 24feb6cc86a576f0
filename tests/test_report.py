"""The HTML report: built from a synthetic run directory, self-contained, numbers from the inputs, robust."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from subcell_scale import report
from subcell_scale._constants import Files, Keys
from subcell_scale.errors import RunDirectoryError
from subcell_scale.io.consolidated import quiet_consolidation
from subcell_scale.models.registry import CLASS_NAMES
from subcell_scale.profiles._steps import record_step


class _Collector(HTMLParser):
    """Collects tags, image sources, section ids and summary cards of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.unbalanced = 0
        self.images: list[str] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.cards: dict[str, str] = {}
        self._card: list[str] | None = None
        self._cls: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in {"meta", "img", "br", "link"}:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in {"link", "script"} or (tag == "a" and attrs.get("href", "").startswith("http")):
            self.links.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        if tag == "div" and "card" in (attrs.get("class") or "").split():
            self._card = []
        if tag == "div" and self._card is not None:
            self._cls = attrs.get("class")

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.unbalanced += 1

    def handle_data(self, data):
        if self._card is not None and self._cls in {"v", "k"}:
            self._card.append(data)
            if self._cls == "k":
                value, label = self._card
                self.cards[label] = value
                self._card = None


def _parse(path) -> _Collector:
    page = _Collector()
    page.feed(path.read_text())
    page.close()
    return page


FIELDS = {
    "P1/B03/0": {"status": "done", "n_cells": 12, "dropped": {"border": 2, "too_small": 1}, "seconds": 1.5,
                 "shard": "shards/P1/B03_0.npz", "attempts": 1, "error": None},
    "P1/B03/1": {"status": "done", "n_cells": 8, "dropped": {"border": 3}, "seconds": 2.5,
                 "shard": "shards/P1/B03_1.npz", "attempts": 1, "error": None},
    "P1/C04/0": {"status": "failed", "n_cells": None, "dropped": {}, "seconds": 0.2, "shard": None, "attempts": 3,
                 "error": "plate P1.zarr C04/0: chunk 0.0.0 unreadable <truncated>"},
    "P2/B03/0": {"status": "done", "n_cells": 10, "dropped": {"too_large": 4}, "seconds": 4.0,
                 "shard": "shards/P2/B03_0.npz", "attempts": 1, "error": None},
    "P2/C04/0": {"status": "pending"},
}


def _cells(n: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({
        "plate": ["P1"] * 20 + ["P2"] * (n - 20), "well": (["B03"] * 12 + ["B03"] * 8 + ["B03"] * 10)[:n],
        "field": (["0"] * 12 + ["1"] * 8 + ["0"] * 10)[:n], "label": np.arange(1, n + 1),
        "compound": "taxol", "moa": "microtubule",
    })
    obs.index = [f"{r.plate}_{r.well}_{r.field}_{r.label}" for r in obs.itertuples()]
    adata = ad.AnnData(X=rng.normal(size=(n, 16)).astype(np.float32), obs=obs)
    adata.obsm[Keys.LOCALIZATION] = rng.random((n, 31)).astype(np.float32)
    adata.uns[Keys.LOCALIZATION_CLASSES] = list(CLASS_NAMES)
    adata.uns[Keys.PROVENANCE] = {"variant": "all_channels_MAE-CellS-ProtS-Pool", "checkpoint_sha256": "ab12cd",
                                  "crop_size": 448}
    return adata


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "run"
    (root / Files.METRICS).mkdir(parents=True)
    (root / Files.FIGURES).mkdir()
    manifest = {
        "format": 1, "created": "2026-11-26T06:00:00Z",
        "embed": {"digest": "0123456789abcdef", "inputs": {"plates": ["P1.zarr", "P2.zarr"]},
                  "parameters": {"preset": "hpa", "batch_size": 64},
                  "model": {"variant": "all_channels_MAE-CellS-ProtS-Pool"}, "versions": {"torch": "2.13.0"}},
        "fields": FIELDS,
        "run": {"status": "done", "stages": ["embed", "profile", "evaluate", "report"],
                "timings": {"embed": 12.5, "profiles": 1.25, "metrics": 3.0, "figures": 2.0},
                "skipped": {"moa": "no moa column in the platemap"}, "labels": {"P2": "labels/P2"}},
    }
    (root / Files.MANIFEST).write_text(json.dumps(manifest))
    (root / Files.RUN).write_text(json.dumps({
        "format": 1, "options": {"cluster": "auto", "n_workers": 1000},
        "parameters": {"preset": "hpa", "crop_um": 71.68, "overridden": ["dilation"], "dilation": 5},
        "plates": [{"name": "P1", "pixel_size": [0.32, 0.32]}],
        "lines": ["preset hpa: SubCell at its HPA training geometry", "overridden: dilation"],
    }))
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False), quiet_consolidation():
        _cells().write_zarr(root / Files.CELLS_ZARR)
    profiles = ad.AnnData(X=np.ones((2, 16), np.float32),
                          obs=pd.DataFrame({"plate": ["P1", "P2"], "well": ["B03", "B03"], "n_cells": [20, 10]},
                                           index=["0", "1"]))
    record_step(profiles, "aggregate", operation="median")
    record_step(profiles, "normalize", method="standardize", by="plate")
    record_step(profiles, "feature_select", dropped_features=["subcell_0003", "subcell_0007"])
    profiles.write_h5ad(root / Files.PROFILES)
    pd.DataFrame({"compound": ["a", "b", "c", "d"], "mean_average_precision": [0.9, 0.2, 0.6, 0.4],
                  "corrected_p_value": [0.001, 0.5, 0.04, 0.2]}).to_csv(root / Files.METRICS / "replicate_map.csv",
                                                                          index=False)
    pd.DataFrame({"k": [1, 3, 5], "accuracy": [0.5, 0.75, 0.6], "n_queries": 4, "n_hits": [2, 3, 2]}).to_csv(
        root / Files.METRICS / "nn_accuracy.csv", index=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2), dpi=50)
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(root / Files.FIGURES / "umap_cells.png")
    return root


def test_full_report(run_dir):
    path = report.build_report(run_dir)
    assert path == run_dir / Files.REPORT
    page = _parse(path)
    text = path.read_text()
    assert page.unbalanced == 0 and not page.stack
    assert page.links == []  # self-contained: no external CSS, scripts or links
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.sections == ["summary", "run-description", "protocol-hpa", "run", "parameters", "fields", "cells",
                             "profiles", "metrics", "figures"]
    # the saved figure is embedded byte for byte
    figure_bytes = (run_dir / Files.FIGURES / "umap_cells.png").read_bytes()
    assert any(base64.b64decode(src.split(",", 1)[1]) == figure_bytes for src in page.images)
    # plus the QC heatmaps drawn from the manifest: failed fields, dropped cells, cells per well
    assert len(page.images) == 4
    assert re.search(r'alt="Cells per well"', text)
    # numbers come from the inputs
    assert page.cards["fields done"] == "3/5"
    assert page.cards["fields failed"] == "1"
    assert page.cards["fields not finished"] == "1"
    assert page.cards["cells dropped"] == "10"
    assert page.cards["cells"] == "30"
    assert page.cards["plates"] == "2"
    assert page.cards["embedding dims"] == "16"
    assert page.cards["profiles"] == "2"
    assert page.cards["replicate_map: mAP"] == "0.525"
    assert page.cards["replicate_map: fraction retrieved"] == "0.5"
    assert "fraction retrieved (q &lt; 0.05) 0.50 (2/4 groups)" in text
    assert "best accuracy 0.750 at k = 3" in text
    assert text.index("replicate_map.csv") < text.index("nn_accuracy.csv")  # mAP first, then NN accuracy
    # dropped cells per reason, summed over fields
    for reason, total in {"border": 5, "too_small": 1, "too_large": 4}.items():
        assert re.search(rf"<td>{reason}</td><td class=\"num\">{total}</td>", text)
    # stage timings and skipped steps of the run
    assert re.search(r"<td>embed</td><td class=\"num\">12.5</td>", text)
    assert re.search(r"<td>total</td><td class=\"num\">18.75</td>", text)
    assert "<b>moa</b>: no moa column in the platemap" in text
    assert re.search(r"<th>n_workers</th><td>1,000</td>", text)
    assert "Status: <b>done</b>" in text and "plate <b>P2</b>: <code>labels/P2</code>" in text
    # per-field timings from the manifest
    assert re.search(r"total seconds \(sum over fields\)</th><td>8.2<", text)
    # the failed field's error is shown, escaped
    assert "chunk 0.0.0 unreadable &lt;truncated&gt;" in text
    # parameters, provenance, preset and profiling steps
    assert "all_channels_MAE-CellS-ProtS-Pool" in text and "ab12cd" in text
    assert "overridden: dilation" in text
    assert re.search(r"<th>parameter</th><th>P1</th></tr></thead><tbody><tr><td>preset</td><td>hpa</td>", text)
    assert re.search(r"<td>plate: pixel_size</td><td>\[0.32, 0.32\]</td>", text)
    assert "<td>normalize</td>" in text and "standardize" in text
    assert re.search(r"<td>feature_select</td><td>\{\}</td><td class=\"num\">2</td>", text)
    assert "Missing parts" not in text  # every part is there


def test_fields_table_matches_manifest():
    table = report.fields_table({"fields": FIELDS})
    assert list(table["plate"]) == ["P1", "P1", "P1", "P2", "P2"]
    assert list(table["well"]) == ["B03", "B03", "C04", "B03", "C04"]
    assert list(table["n_dropped"]) == [3, 3, 0, 4, 0]
    assert list(table["dropped_border"]) == [2, 3, 0, 0, 0]
    assert list(table["failed"]) == [False, False, True, False, False]


def test_report_of_an_empty_directory_lists_what_is_missing(tmp_path):
    path = report.build_report(tmp_path)
    page = _parse(path)
    assert page.sections == ["summary", "parameters", "missing-parts"]
    text = path.read_text()
    for name in (Files.MANIFEST, Files.CELLS_ZARR, Files.PROFILES, Files.METRICS, Files.FIGURES, Files.RUN):
        assert name in text.split("Missing parts")[1]
    assert page.images == []


def test_h5ad_cells_damaged_manifest_and_custom_output(tmp_path):
    _cells(20).write_h5ad(tmp_path / Files.CELLS_H5AD)
    (tmp_path / Files.MANIFEST).write_text("{not json")
    (tmp_path / Files.METRICS).mkdir()
    (tmp_path / Files.METRICS / "broken.csv").write_bytes(b"\x00\x01")
    out = tmp_path / "elsewhere.html"
    path = report.build_report(tmp_path, out=out)
    assert path == out and not (tmp_path / Files.REPORT).exists()
    page = _parse(path)
    assert page.cards["cells"] == "20"
    assert len(page.images) == 1  # cells per well from the cells' obs, as there is no manifest
    missing = path.read_text().split("Missing parts")[1]
    assert f"{Files.MANIFEST}: unreadable" in missing


def test_not_a_directory(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        report.build_report(tmp_path / "nope")


def test_the_report_shows_the_protocol_the_run_reproduced(tmp_path):
    import json

    from subcell_scale._constants import Files
    from subcell_scale.report import build_report, protocol_sections
    from subcell_scale.runspec import describe_run, record_description

    record_description(describe_run("plate.zarr", preset="jump-cellpainting"), [], tmp_path)
    html = build_report(tmp_path).read_text()
    assert "Protocol: jump-cellpainting" in html
    assert "BEST_POSTPROC_CONFIGS.yaml" in html and "<table>" in html  # the page's reference table, rendered
    assert "Degenerate features" in html  # the notes that hold for every preset
    assert "jump-recipe" not in protocol_sections("hpa").split("\n")[0]
    assert json.loads((tmp_path / Files.RUN).read_text())["parameters"]["preset"] == "jump-cellpainting"
