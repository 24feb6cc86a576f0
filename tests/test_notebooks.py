"""The user notebooks: 01 and 02 executed with nbclient on small data, 03 checked against the API.

01 and 02 run in a real Jupyter kernel, in a temporary working folder, with their parameters cell rewritten
(tiny model, 2 plates of 10 wells, one field each, 64-px crops; their own output folders); 02 reads the
cells that 01 wrote, and what they leave behind must be git-ignored where they are kept.
Their outputs are then checked against direct computations on the files they wrote: the well
profiles against numpy medians and DMSO standardisation, the replicate mAP against copairs, the MoA
nearest-neighbour accuracy against a numpy cosine search.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
from pathlib import Path

import anndata as ad
import nbformat
import numpy as np
import pandas as pd
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

from subcell_scale._constants import Files, Keys, Obs
from subcell_scale.models.registry import CLASS_NAMES
from subcell_scale.profiles import profiling_steps

pytestmark = [pytest.mark.notebooks]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = "01_quickstart.ipynb"
PROFILING = "02_profiling_and_evaluation.ipynb"
SCALING = "03_scaling_out.ipynb"
N_PLATES, N_WELLS = 2, 10  # 10 wells: the demo platemap then has two MoAs, so every design runs
CELL_TIMEOUT = 600


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    return code[0]


def _assigned_names(source: str) -> list[str]:
    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def _execute(name: str, parameters: dict, cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a python3 kernel with ``parameters`` as its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = _parameters_cell(nb)
    # every parameter the notebook reads is set here, and nothing it does not read
    assert sorted(_assigned_names(cell.source)) == sorted(parameters)
    cell.source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream" and o.name == "stdout")


def _n_images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _defaults(name: str) -> dict:
    """The values of a notebook's parameters cell, as saved."""
    namespace: dict = {}
    exec(compile(_parameters_cell(nbformat.read(NOTEBOOKS / name, as_version=4)).source, name, "exec"),  # noqa: S102
         namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """01 then 02, in one working folder, as a user runs them, writing where they write by default."""
    cwd = tmp_path_factory.mktemp("notebooks")
    out, run_dir = _defaults(QUICKSTART)["OUT"], _defaults(PROFILING)["RUN_DIR"]
    assert run_dir == f"{out}/run"  # 02 reads what 01 wrote
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # kernels and Dask workers on a shared machine
        quickstart = _execute(QUICKSTART, {
            "OUT": out, "N_PLATES": N_PLATES, "N_WELLS": N_WELLS, "N_FIELDS": 1, "FIELD_SIZE": 384,
            "MODEL_SIZE": "tiny", "PRETRAINED": None, "OUT_SIZE": 64, "CLUSTER": "local", "N_WORKERS": 1,
            "N_NEIGHBORS": 10, "NEIGHBORS_METHOD": "gauss", "SEED": 0}, cwd)
        profiling = _execute(PROFILING, {
            "RUN_DIR": run_dir, "NULL_SIZE": 2000, "SEED": 0, "N_PLATES": N_PLATES, "N_WELLS": N_WELLS,
            "N_FIELDS": 1, "FIELD_SIZE": 384, "MODEL_SIZE": "tiny", "OUT_SIZE": 64}, cwd)
    return {"run": cwd / run_dir, "plates": cwd / out / "plates", "cwd": cwd, "01": quickstart, "02": profiling}


def test_quickstart_embeds_every_field_into_the_cells_anndata(executed):
    run, nb = executed["run"], executed["01"]
    manifest = json.loads((run / Files.MANIFEST).read_text())
    summary = manifest["embed"]["summary"]
    assert summary["done"] == N_PLATES * N_WELLS and summary["failed"] == 0
    cells = ad.read_zarr(run / Files.CELLS_ZARR)
    assert cells.n_obs == summary["n_cells"] > N_PLATES * N_WELLS
    assert cells.X.shape[1] == 128  # the tiny config: 2 pooling heads x 64
    assert cells.obsm[Keys.LOCALIZATION].shape == (cells.n_obs, len(CLASS_NAMES))
    assert list(cells.uns[Keys.LOCALIZATION_CLASSES]) == list(CLASS_NAMES)
    platemap = pd.read_csv(executed["plates"] / Files.PLATEMAP).set_index(["plate", "well"])
    keys = list(zip(cells.obs[Obs.PLATE].astype(str), cells.obs[Obs.WELL].astype(str)))
    assert np.array_equal(cells.obs["moa"].astype(str), platemap.loc[keys, "moa"].to_numpy())

    text = _stdout(nb)
    assert re.search(r"Dask dashboard: http://\S+", text)
    # the gallery's crops, embedded again in the kernel, give exactly the run's embeddings (CPU)
    difference = re.search(r"largest difference to the run's embeddings: (\S+)", text)
    assert difference and float(difference.group(1)) == 0.0
    assert _n_images(nb) >= 3  # the field composite, the UMAP panels, the cell gallery


def _well_profiles_oracle(cells: ad.AnnData, features: list[str]) -> pd.DataFrame:
    """Median per well, then (x - mean) / std of the plate's DMSO wells (population std, as sklearn)."""
    frame = pd.DataFrame(np.asarray(cells.X, dtype=np.float64), columns=list(cells.var_names))[features]
    meta = cells.obs[[Obs.PLATE, Obs.WELL, "control_type"]].astype(str).reset_index(drop=True)
    medians = pd.concat([meta, frame], axis=1).groupby([Obs.PLATE, Obs.WELL, "control_type"]).median()
    out = []
    for _, plate in medians.groupby(level=Obs.PLATE):
        dmso = plate.xs("negcon", level="control_type")
        out.append((plate - dmso.mean()) / dmso.std(ddof=0))
    return pd.concat(out).droplevel("control_type")


def test_profiles_are_dmso_standardised_well_medians(executed):
    run = executed["run"]
    table = pd.read_parquet(run / "profiles.parquet")
    meta_cols = [c for c in table.columns if c.startswith("Metadata_")]
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    assert {"Metadata_plate", "Metadata_well", "Metadata_compound", "Metadata_moa", "Metadata_control_type",
            "Metadata_n_cells"} <= set(meta_cols)
    assert len(table) == N_PLATES * N_WELLS and 0 < len(features) < 128
    expected = _well_profiles_oracle(ad.read_zarr(run / Files.CELLS_ZARR), features)
    got = table.set_index(["Metadata_plate", "Metadata_well"])[features]
    expected = expected.loc[list(got.index)]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-3, atol=1e-3)
    profiles = ad.read_h5ad(run / Files.PROFILES)
    assert [s["step"] for s in profiling_steps(profiles)] == ["aggregate", "postprocess", "normalize", "feature_select"]
    consensus = pd.read_parquet(run / "consensus.parquet")
    assert sorted(consensus["Metadata_compound"]) == sorted(table["Metadata_compound"].unique())


def test_replicate_map_agrees_with_copairs(executed):
    """The hpa design: replicates of a compound against every other well (DMSO negatives, never queries)."""
    from copairs.map import average_precision, mean_average_precision

    run = executed["run"]
    table = pd.read_parquet(run / "profiles.parquet")
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    meta = table.filter(like="Metadata_").reset_index(drop=True)
    ap = average_precision(meta, table[features].to_numpy(), pos_sameby=["Metadata_compound"], pos_diffby=[],
                           neg_sameby=[], neg_diffby=["Metadata_compound"], progress_bar=False)
    ap = ap[ap["Metadata_control_type"] != "negcon"]
    expected = mean_average_precision(ap, ["Metadata_compound"], null_size=2000, threshold=0.05, seed=0,
                                      progress_bar=False).set_index("Metadata_compound")
    got = pd.read_csv(run / Files.METRICS / "replicate_map.csv").set_index("compound")
    assert sorted(got.index) == sorted(expected.index)
    np.testing.assert_allclose(got.loc[expected.index, "mean_average_precision"],
                               expected["mean_average_precision"], rtol=1e-5)
    np.testing.assert_allclose(got.loc[expected.index, "p_value"], expected["p_value"], rtol=1e-5)
    moa = pd.read_csv(run / Files.METRICS / "moa_map.csv")
    assert {"mean_average_precision", "p_value", "corrected_p_value"} <= set(moa.columns) and len(moa)
    summary = pd.read_csv(run / Files.METRICS / "summary.csv")
    assert {"replicate", "moa", "moa_nn", "compound_nn"} <= set(summary["design"])


def test_moa_nearest_neighbour_accuracy_matches_a_direct_search(executed):
    """k = 1: the nearest well of another compound (DMSO wells included, never matching) shares a MoA."""
    run = executed["run"]
    table = pd.read_parquet(run / "profiles.parquet")
    x = table[[c for c in table.columns if not c.startswith("Metadata_")]].to_numpy(dtype=np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    compound, moa = table["Metadata_compound"].to_numpy(), table["Metadata_moa"].astype(str).to_numpy()
    control = (table["Metadata_control_type"] == "negcon").to_numpy()
    compounds_per_moa = table[~control].groupby("Metadata_moa", observed=True)["Metadata_compound"].nunique()
    usable = set(compounds_per_moa[compounds_per_moa >= 2].index)
    similarity[compound[:, None] == compound[None, :]] = -np.inf  # not-same-compound (and not itself)
    queries = np.flatnonzero(~control & np.isin(moa, list(usable)))
    nearest = similarity[queries].argmax(axis=1)
    expected = float(np.mean((moa[nearest] == moa[queries]) & ~control[nearest]))

    nn = pd.read_csv(run / Files.METRICS / "moa_nn.csv")
    row = nn[nn["k"] == 1]
    assert len(row) == 1 and row["n_queries"].iloc[0] == len(queries)
    assert row["accuracy"].iloc[0] == pytest.approx(expected)
    assert _n_images(executed["02"]) >= 4  # cells per well, mAP vs q, fraction retrieved, NN accuracy


def test_running_the_notebooks_in_place_leaves_git_status_clean(executed):
    """Everything 01 and 02 write where they run, and where 03 writes by default, is git-ignored in notebooks/."""
    import shutil
    import subprocess

    repo = NOTEBOOKS.parent
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(repo), "rev-parse"],
                                                     capture_output=True).returncode:
        pytest.skip("not a git checkout")
    written = [p.name + ("/" if p.is_dir() else "") for p in sorted(executed["cwd"].iterdir())]
    assert written  # the runs, at least
    written.append(_defaults(SCALING)["OUT"].rstrip("/") + "/")
    tracked = [name for name in written if subprocess.run(
        ["git", "-C", str(repo), "check-ignore", "-q", "--no-index", f"notebooks/{name}"]).returncode != 0]
    assert not tracked, f"running the notebooks in notebooks/ leaves untracked {tracked}"


def _imports(tree: ast.AST) -> list[tuple[str, str]]:
    return [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            for alias in node.names]


def test_scaling_notebook_is_valid_and_matches_the_api():
    nb = nbformat.read(NOTEBOOKS / SCALING, as_version=4)
    nbformat.validate(nb)
    params = _parameters_cell(nb)
    names = set(_assigned_names(params.source))
    assert {"SLURM_CONFIG", "KUBERNETES_CONFIG", "SCHEDULER_ADDRESS", "PLATE_URL", "STORAGE_OPTIONS"} <= names
    namespace: dict = {}
    exec(compile(params.source, "parameters", "exec"), namespace)  # noqa: S102 - the notebook's own constants
    for key in ("SLURM_CONFIG", "KUBERNETES_CONFIG"):
        assert (NOTEBOOKS / namespace[key]).is_file(), f"{key} = {namespace[key]!r} does not exist"
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source, SCALING)  # every code cell compiles
    for module, name in _imports(tree):
        if module.startswith("subcell_scale"):
            assert hasattr(importlib.import_module(module), name), f"{module}.{name} does not exist"
    # every cluster is started inside an `if`, so the notebook runs top to bottom without one
    guarded = {id(call) for node in ast.walk(tree) if isinstance(node, ast.If)
               for call in ast.walk(node) if isinstance(call, ast.Call)}
    starts = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "get_client"]
    assert len(starts) >= 3 and all(id(call) in guarded for call in starts)


@pytest.mark.parametrize("name", [QUICKSTART, PROFILING, SCALING])
def test_notebooks_are_saved_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs before saving"
    for cell in code:  # as IPython compiles them (magics such as %matplotlib allowed)
        compile(TransformerManager().transform_cell(cell.source), name, "exec")
    _parameters_cell(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert os.path.getsize(NOTEBOOKS / name) < 100_000


def _public(module: str, name: str) -> bool:
    """``module.name`` is part of the public API: listed in ``__all__`` of a public module."""
    import subcell_scale

    parts = module.split(".")
    if parts[0] != "subcell_scale" or (len(parts) > 1 and parts[1] not in subcell_scale.__all__):
        return False
    return name in getattr(importlib.import_module(module), "__all__", ())


@pytest.mark.parametrize("name", [QUICKSTART, PROFILING, SCALING])
def test_notebooks_use_public_names_only(name):
    import subcell_scale

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    source = "\n".join(TransformerManager().transform_cell(c.source) for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source, name)
    used = [(m, n) for m, n in _imports(tree) if m.startswith("subcell_scale")]
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
               if a.name == "subcell_scale"}
    for node in ast.walk(tree):  # ss.name and ss.module.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.append(("subcell_scale", node.attr))
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id in aliases
                and isinstance(getattr(subcell_scale, node.value.attr, None), type(subcell_scale))):
            used.append((f"subcell_scale.{node.value.attr}", node.attr))
    private = sorted({f"{m}.{n}" for m, n in used if not _public(m, n)})
    assert used and not private, f"{name} uses names outside the public API: {private}"
