"""``run``: plates + platemap -> every output of the run directory, resumable, with one-line CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _shared import TINY

from subcell_scale.store import read_field_records
from subcell_scale._constants import Files, Keys
from subcell_scale.errors import ChannelMismatchError, ConfigError, PlatemapError, RunDirectoryError
from subcell_scale.io.demo import make_demo_plate
from subcell_scale.models import ModelSpec, SubCell
from subcell_scale.models.config import ModelConfig
from subcell_scale.profiles import profiling_steps
from subcell_scale.store import ResultsStore
from subcell_scale.runspec import load_config
from subcell_scale.workflow import run

FAST = {"out_size": 32, "null_size": 200}


@pytest.fixture(scope="module")
def demo(demo_plates) -> dict:
    return demo_plates(n_plates=2, n_wells=6, n_fields=1, field_size=256, cells_per_field=8, seed=1)


@pytest.fixture(scope="module")
def spec(tiny_spec) -> ModelSpec:
    return tiny_spec


@pytest.fixture(scope="module")
def client(local_client):
    return local_client


@pytest.fixture(scope="module")
def finished(demo, spec, client, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("run")
    result = run(demo["plates"], out=out, platemap=demo["platemap"], model=spec, client=client, progress=False,
                 **FAST)
    return out, result


@pytest.mark.processes
def test_run_writes_every_output_of_the_run_directory(finished):
    out, result = finished
    assert result.ok, result.lines()
    assert result.report == out / Files.REPORT
    for name in (Files.CELLS_ZARR, Files.PROFILES, Files.MANIFEST, Files.REPORT, Files.RUN):
        assert (out / name).exists(), name
    cells = ad.read_zarr(out / Files.CELLS_ZARR)
    assert cells.n_obs == result.n_cells > 0
    assert cells.X.shape[1] == 2 * TINY["hidden_size"]
    profiles = ad.read_h5ad(out / Files.PROFILES)
    # one profile per imaged well, carrying its platemap row and cell count
    wells = cells.obs.groupby(["plate", "well"], observed=True).size()
    assert profiles.n_obs == len(wells)
    assert int(profiles.obs[Keys.N_CELLS].sum()) == cells.n_obs
    assert {"compound", "moa", "control_type"} <= set(profiles.obs.columns)
    # the hpa preset: median per well, standardized per plate against DMSO
    steps = [s["step"] for s in profiling_steps(profiles)]
    assert steps[0] == "aggregate" and "normalize" in steps
    dmso = profiles[profiles.obs["control_type"] == "negcon"]
    for plate in dmso.obs["plate"].unique():
        x = np.asarray(dmso[dmso.obs["plate"] == plate].X)
        assert np.allclose(x.mean(axis=0), 0, atol=1e-4)


@pytest.mark.processes
def test_metrics_tables_and_figures_are_written(finished):
    out, result = finished
    summary = pd.read_csv(out / Files.METRICS / "summary.csv")
    assert set(summary["design"]) >= {"replicate", "moa", "moa_nn", "compound_nn"}
    rates = summary[summary["metric"] != "n_queries"]
    assert rates["value"].between(0, 1).all(), summary
    replicate = pd.read_csv(out / Files.METRICS / "replicate_map.csv")
    assert {"compound", "mean_average_precision", "p_value", "corrected_p_value"} <= set(replicate.columns)
    # p-values are on the grid of the null: (#null > mAP + 1) / (null_size + 1)
    k = replicate["p_value"] * (FAST["null_size"] + 1)
    assert np.allclose(k, np.round(k))
    figures = {p.name for p in (out / Files.FIGURES).glob("*.png")}
    assert {"cells_per_well.png", "umap_cells.png", "example_cells.png", "map_vs_q.png"} <= figures
    html = (out / Files.REPORT).read_text()
    assert html.count("data:image/png;base64,") >= len(figures)


@pytest.mark.processes
def test_manifest_records_options_steps_and_fields(finished, demo):
    out, result = finished
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert manifest["run"]["status"] == "done"
    assert set(manifest["run"]["timings"]) >= {"embed", "profiles", "metrics", "figures"}
    assert manifest["run"]["options"]["plates"] == demo["plates"]
    assert manifest["run"]["stages"] == ["embed", "profile", "evaluate", "report"]
    described = json.loads((out / Files.RUN).read_text())  # the run's description, as every stage used it
    assert described["parameters"]["overridden"] == ["design", "out_size"]
    assert described["parameters"]["out_size"] == 32 and described["parameters"]["design"]["null_size"] == 200
    records = read_field_records(out)
    statuses = {f["status"] for f in records.values()}
    assert statuses == {"done"}
    assert sum(f["n_cells"] for f in records.values()) == result.n_cells


@pytest.mark.processes
def test_rerun_resumes_without_recomputing_fields(finished, demo, spec, client):
    out, first = finished
    shards = sorted((out / Files.SHARDS).rglob("*.npz"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    again = run(demo["plates"], out=out, platemap=demo["platemap"], model=spec, client=client, progress=False,
                figures=False, **FAST)
    assert again.n_cells == first.n_cells
    assert {p: p.stat().st_mtime_ns for p in shards} == before
    assert ad.read_h5ad(out / Files.PROFILES).n_obs > 0


@pytest.mark.processes
def test_a_bad_platemap_fails_before_any_work(demo, spec, client, tmp_path):
    bad = pd.read_csv(demo["platemap"])
    bad.loc[0, "well"] = "P24"
    bad.to_csv(tmp_path / "platemap.csv", index=False)
    with pytest.raises(PlatemapError, match="P24"):
        run(demo["plates"], out=tmp_path / "out", platemap=tmp_path / "platemap.csv", model=spec, client=client)
    assert not (tmp_path / "out" / Files.SHARDS).exists()


@pytest.mark.processes
def test_a_second_run_into_a_locked_directory_is_refused(demo, spec, client, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / Files.LOCK).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RunDirectoryError, match="in use by another run"):
            run(demo["plates"], out=out, platemap=demo["platemap"], model=spec, client=client)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    with ResultsStore(out).lock():
        assert (out / Files.LOCK).exists()


def test_config_files_hold_the_commands_long_option_names(tmp_path):
    """Keys are the long options (with - or _), preset parameters under set; paths are read from the file's folder."""
    (tmp_path / "run.toml").write_text('plates = ["a.zarr"]\npreset = "hpa"\nno-figures = true\n[set]\nout_size = 224\n')
    assert load_config(tmp_path / "run.toml") == {"plates": [str(tmp_path / "a.zarr")], "preset": "hpa",
                                                  "no-figures": True, "set": {"out_size": 224}}
    (tmp_path / "run.yaml").write_text("plates: [a.zarr]\nbatch_size: 8\nworkers: 2\nlabel-name: nuclei\n"
                                       "out: run\nvariant: DNA-Protein_MAE-CellS-ProtS-Pool\n")
    assert load_config(tmp_path / "run.yaml") == {
        "plates": [str(tmp_path / "a.zarr")], "batch-size": 8, "workers": 2, "label-name": "nuclei",
        "out": str(tmp_path / "run"), "variant": "DNA-Protein_MAE-CellS-ProtS-Pool"}
    (tmp_path / "bad.yaml").write_text("plates: [a.zarr]\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batchsize'\] for `subcell-scale run`"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "param.yaml").write_text("out_size: 224\n")
    with pytest.raises(ConfigError, match="preset parameters \\(out_size\\) go under 'set'"):
        load_config(tmp_path / "param.yaml")
    (tmp_path / "broken.yaml").write_text("plates: [a.zarr\nout: x\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d+, column \d+"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "typed.yaml").write_text("workers: two\n")
    with pytest.raises(ConfigError, match="typed.yaml: workers must be a number, got 'two'"):
        load_config(tmp_path / "typed.yaml")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["subcell-scale", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.processes
def test_cli_run_from_a_config_file_with_checkpoint_files(demo, tmp_path, tiny_config):
    model = SubCell.random(tiny_config, seed=3, n_classifiers=1)
    torch.save(model.encoder_state_dict(), tmp_path / "encoder.pth")
    torch.save(model.classifiers[0].state_dict(), tmp_path / "classifier.pth")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"plates: {json.dumps(demo['plates'])}\nplatemap: {demo['platemap']}\nmodel: {tmp_path / 'encoder.pth'}\n"
        f"classifiers: [{tmp_path / 'classifier.pth'}]\ncluster: local\nworkers: 1\nnull-size: 100\n"
        "set: {out_size: 32}\nno-figures: true\n")
    done = _cli("run", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replicate" in done.stdout and "cells:" in done.stdout
    manifest = json.loads((tmp_path / "out" / Files.MANIFEST).read_text())
    described = json.loads((tmp_path / "out" / Files.RUN).read_text())
    assert described["parameters"]["design"]["null_size"] == 100 and described["parameters"]["out_size"] == 32
    assert manifest["run"]["options"]["n_workers"] == 1 and manifest["run"]["options"]["figures"] is False
    assert not (tmp_path / "out" / Files.REPORT).exists()
    assert manifest["embed"]["model"]["checkpoint_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "missing.zarr", "--out", "{tmp}/o"], "missing.zarr"),
        (["run", "--out", "{tmp}/o"], "no plate given"),
        (["run", "{plate}", "--out", "{tmp}/o", "--platemap", "{tmp}/nope.csv"], "nope.csv"),
        (["run", "{plate}", "--out", "{tmp}/o", "--preset", "nope"], "unknown preset"),
        (["run", "{plate}", "--out", "{tmp}/o", "--config", "{tmp}/c.ini"], "c.ini"),
    ],
)
def test_cli_errors_are_one_line(demo, tmp_path, args, expected):
    (tmp_path / "c.ini").write_text("x")
    args = [a.format(tmp=tmp_path, plate=demo["plates"][0]) for a in args]
    done = _cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("subcell-scale run: error:"), done.stderr
    assert expected in lines[0]


@pytest.mark.processes
def test_jump_cellpainting_run_end_to_end(client, tmp_path):
    plates = make_demo_plate(tmp_path / "plates", n_plates=2, n_wells=6, n_fields=1, field_size=192, seed=4,
                             cellpainting=True)
    config = ModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, num_channels=3,
                         pool_int_dim=16)
    spec = ModelSpec("random", config=config.to_dict(), seed=0, options={"channels": ["er", "nucleus", "protein"]})
    result = run(plates, out=tmp_path / "out", platemap=tmp_path / "plates" / Files.PLATEMAP, model=spec,
                 client=client, preset="jump-cellpainting", figures=False, progress=False, illumination="estimate",
                 **FAST)
    assert result.fields_failed == 0 and result.n_cells > 0
    cells = ad.read_zarr(tmp_path / "out" / Files.CELLS_ZARR)
    assert cells.X.shape[1] == 3 * 2 * config.hidden_size  # Mito | AGP | RNA passes
    profiles = ad.read_h5ad(tmp_path / "out" / Files.PROFILES)
    steps = profiling_steps(profiles)
    assert [s["step"] for s in steps] == ["aggregate", "postprocess", "normalize", "normalize"]
    assert steps[0]["per_field"] and steps[2]["method"] == "spherize" and steps[3]["method"] == "standardize"
    assert steps[2]["spherize_variant"] == "legacy"
    assert (tmp_path / "out" / "flatfield" / "demo-cp-plate-1.npy").exists()
    assert (tmp_path / "out" / Files.METRICS / "summary.csv").exists()


@pytest.mark.slow
def test_a_step_that_cannot_run_is_skipped_named_and_the_rest_written(tmp_path, capsys):
    """One well: the jump chain cannot be fitted and nothing can be evaluated; cells, profiles and the
    report are still written, the summary and the manifest name the skipped steps, exit status 4."""
    from subcell_scale.cli import ExitCode
    from subcell_scale.cli.run import report

    from subcell_scale.io import PlateWriter, open_plate, write_labels

    (demo,) = make_demo_plate(tmp_path / "demo", n_plates=1, n_wells=4, n_fields=1, field_size=192, seed=6,
                              cellpainting=True)
    source = open_plate(demo)
    plate = tmp_path / "one-well.zarr"
    with PlateWriter(plate, name="one-well", channel_names=source.channel_names, pixel_size=source.pixel_size) as w:
        w.write_field("B02", "0", source.read_field("A01", "0"))
    write_labels(open_plate(plate), "B02", "0", "cells", source.read_labels("A01", "0", "cells"))
    pd.DataFrame({"plate": ["one-well"], "well": ["B02"], "compound": ["DMSO"], "moa": [""],
                  "control_type": ["negcon"]}).to_csv(tmp_path / Files.PLATEMAP, index=False)
    config = ModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, num_channels=3,
                         pool_int_dim=16)
    spec = ModelSpec("random", config=config.to_dict(), seed=0, options={"channels": ["er", "nucleus", "protein"]})
    out = tmp_path / "out"
    result = run(plate, out=out, platemap=tmp_path / Files.PLATEMAP, model=spec, client=None,
                 preset="jump-cellpainting", progress=False, **FAST)
    assert result.fields_failed == 0 and result.n_cells > 0
    assert set(result.skipped) == {"postprocess", "metrics"}
    for name in (Files.CELLS_ZARR, Files.PROFILES, Files.PROFILES_PARQUET, Files.REPORT, Files.MANIFEST):
        assert (out / name).exists(), name
    assert [s["step"] for s in profiling_steps(ad.read_h5ad(out / Files.PROFILES))] == ["aggregate"]
    manifest = json.loads((out / Files.MANIFEST).read_text())
    assert manifest["run"]["status"] == "incomplete" and set(manifest["run"]["skipped"]) == {"postprocess", "metrics"}
    assert "Skipped steps" in (out / Files.REPORT).read_text()
    assert report(result) == ExitCode.STEPS_SKIPPED
    err = capsys.readouterr().err
    assert "step(s) skipped: postprocess:" in err and "metrics:" in err and "retry" not in err


@pytest.mark.processes
def test_evaluate_and_profile_on_a_run_reuse_its_description(finished, tmp_path):
    """`subcell-scale evaluate RUN` writes the run's own tables byte for byte; an explicit preset wins and
    is recorded with the tables; `profile RUN --out DIR` writes the run's profiles into a folder."""
    out, _ = finished
    assert _cli("evaluate", str(out), "--out", str(tmp_path / "again")).returncode == 0
    for table in sorted((out / Files.METRICS).glob("*.csv")):
        assert (tmp_path / "again" / table.name).read_bytes() == table.read_bytes(), table.name
    assert json.loads((tmp_path / "again" / Files.DESIGN).read_text())["null_size"] == FAST["null_size"]
    other = _cli("evaluate", str(out / Files.PROFILES), "--out", str(tmp_path / "jump"), "--preset",
                 "jump-cellpainting", "--null-size", "50")
    assert other.returncode == 0, other.stderr
    assert "evaluating as preset jump-cellpainting with overrides" in other.stdout
    design = json.loads((tmp_path / "jump" / Files.DESIGN).read_text())
    assert (design["null_size"], design["seed"], design["nn_match"]) == (50, 42, "identical")
    done = _cli("profile", str(out), "--out", str(tmp_path / "profiles"))
    assert done.returncode == 0, done.stderr
    mine = ad.read_h5ad(tmp_path / "profiles" / Files.PROFILES)
    theirs = ad.read_h5ad(out / Files.PROFILES)
    np.testing.assert_array_equal(mine.X, theirs.X)
    assert (tmp_path / "profiles" / Files.PROFILES_PARQUET).exists()
    assert "the run's description" in done.stdout


@pytest.mark.parametrize(("overrides", "platemap_change", "error", "message"), [
    ({"design": {"pert_col": "treatment"}}, None, PlatemapError, r"evaluation design: the platemap has no column \['treatment'\]"),
    ({"postprocess": [{"step": "normalize", "method": "standardize", "by": "batch"}]}, None, PlatemapError,
     r"postprocess step 0 \(normalize\): by=\['batch'\] is not a column of the platemap"),
    ({"design": {"negcon": "kind == 'dmso'"}}, None, PlatemapError, "evaluation design: negcon: cannot evaluate"),
    ({"channel_map": {"nucleus": "Hoechst"}}, None, ChannelMismatchError, "needs channel\\(s\\) \\['Hoechst'\\]"),
    ({}, "duplicate", PlatemapError, "more than one row for"),
    ({"design": {"no_such_field": 1}}, None, ConfigError, r"unknown parameter\(s\) \['no_such_field'\]"),
])
def test_a_mistake_is_named_before_the_first_field_and_writes_nothing(demo, spec, tmp_path, overrides,
                                                                      platemap_change, error, message):
    import time

    platemap = demo["platemap"]
    if platemap_change == "duplicate":
        frame = pd.read_csv(platemap)
        pd.concat([frame, frame.iloc[:1]]).to_csv(tmp_path / "platemap.csv", index=False)
        platemap = tmp_path / "platemap.csv"
    started = time.perf_counter()
    with pytest.raises(error, match=message):
        run(demo["plates"], out=tmp_path / "out", platemap=platemap, model=spec, client=None, progress=False,
            **{**FAST, **overrides})
    print(f"named after {time.perf_counter() - started:.2f} s")
    assert not (tmp_path / "out").exists()


@pytest.mark.processes
def test_an_input_error_or_an_interrupt_leaves_the_manifest_saying_what_happened(finished, demo, spec, tmp_path):
    out, _ = finished
    with pytest.raises(PlatemapError):
        run(demo["plates"], out=out, platemap=tmp_path / "nope.csv", model=spec, client=None, **FAST)
    assert json.loads((out / Files.MANIFEST).read_text())["run"]["status"] == "done"  # nothing ran: as it was
    from subcell_scale.runspec import describe_run
    from subcell_scale.stages import Run

    with pytest.raises(KeyboardInterrupt), Run.open(describe_run(demo["plates"], out=tmp_path / "stopped",
                                                                 model=spec)):
        raise KeyboardInterrupt
    record = json.loads((tmp_path / "stopped" / Files.MANIFEST).read_text())["run"]
    assert record["status"] == "interrupted" and record["ended"]
    with pytest.raises(RuntimeError), Run.open(describe_run(demo["plates"], out=tmp_path / "broken", model=spec)):
        raise RuntimeError("a stage broke")
    record = json.loads((tmp_path / "broken" / Files.MANIFEST).read_text())["run"]
    assert record["status"] == "failed" and record["error"] == "RuntimeError: a stage broke"


@pytest.mark.slow
def test_figures_leave_the_callers_matplotlib_backend_alone(demo, spec, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        result = run(demo["plates"][:1], out=tmp_path / "out", platemap=demo["platemap"], model=spec, client=None,
                     progress=False, **FAST)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "out" / Files.FIGURES / "cells_per_well.png").read_bytes()[:4] == b"\x89PNG"
    assert result.report is not None


def test_the_demo_banner_keeps_the_command_on_one_line(capsys):
    from subcell_scale.workflow import banner

    command = "subcell-scale download all_channels_MAE-CellS-ProtS-Pool"
    banner("No published SubCell weights in the model cache: the demo uses random weights. " * 2, command)
    lines = capsys.readouterr().err.splitlines()
    assert any(command in line for line in lines)
    assert len({len(line) for line in lines}) == 1  # a frame


@pytest.mark.slow
def test_random_weights_from_the_command_line(demo, tmp_path):
    done = _cli("embed", demo["plates"][0], "--out", str(tmp_path / "out"), "--model", "random", "--set", "out_size=32",
                "--no-progress")
    assert done.returncode == 0, done.stderr
    cells = ad.read_zarr(tmp_path / "out" / Files.CELLS_ZARR)
    assert cells.n_obs > 0 and cells.n_vars == 1536
    assert json.loads((tmp_path / "out" / Files.MANIFEST).read_text())["embed"]["model"]["source"] == "random"
