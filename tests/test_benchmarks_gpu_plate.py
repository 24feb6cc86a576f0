"""The prepared GPU run (``benchmarks/gpu_plate.py``) works end to end: its CPU smoke run writes every section.

A GPU run is long and costly, so the script must not fail there for a reason the CPU could have shown:
the smoke run goes through every step (plates, segmentation, crops, engine table, both presets
in-process and on a one-worker cluster, projection) with a tiny model and tiny plates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_plate.py"
SECTIONS = ("meta", "plates", "segmentation", "crops", "engine", "end_to_end", "projection")
PRESETS = ("hpa", "jump-cellpainting")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-plate")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "1M-cell JUMP plate:" in done.stdout  # the summary printed last
    return json.loads((out / "gpu_plate.json").read_text())


def test_every_section_is_measured(report):
    assert tuple(report) == SECTIONS
    assert all("note" not in report[s] for s in SECTIONS), {s: report[s].get("note") for s in SECTIONS}
    assert report["meta"]["smoke"] and report["meta"]["device"] == "cpu" and report["meta"]["total_s"] > 0
    for geometry in ("jump", "hpa"):
        assert report["plates"][geometry]["fields"] == 4 and report["plates"][geometry]["disk_mb_per_field"] > 0


def test_segmentation_and_crops_per_preset(report):
    for preset in PRESETS:
        seg, crops = report["segmentation"][preset], report["crops"][preset]
        assert seg["segment_s_per_field"] > 0 and seg["kept_per_field"] > 0
        assert crops["cells"] > 0 and crops["device_ms_per_cell"] > 0
        assert crops["device_vs_numpy_max_abs_diff"] < 1e-5  # torch on the CPU cuts the numpy path's crops
    assert report["crops"]["hpa"]["passes"] == 1 and report["crops"]["jump-cellpainting"]["passes"] == 3
    assert report["segmentation"]["jump-cellpainting"]["plate_histogram_s_per_field"] > 0


def test_engine_table_rows(report):
    engine = report["engine"]
    rows = {r["row"]: r for r in engine["rows"]}
    assert engine["fidelity_inputs"] == "hpa cells"
    default = rows["engine default (SDPA auto, unfold)"]
    assert default["cells_per_s"] > 0 and default["cosine_worst"] > 0.99999  # fp32 on the CPU: the reference
    for label in ("SDPA flash", "SDPA math", "patch embedding conv", "patch embedding channels-last",
                  "reference-style (eager attention, all probabilities)"):
        assert rows[label]["cells_per_s"] > 0 and rows[label]["rel_fro"] < 1e-5, label
    for backend in ("cudnn", "efficient"):  # kernels the CPU lacks are named, not fatal
        assert rows[f"SDPA {backend}"]["note"].startswith(f"ConfigError: attention_backend='{backend}' cannot run on cpu")
    optional = [r for r in engine["rows"] if "compile" in r["row"] or r["row"].startswith("fp8")]
    assert len(optional) >= 3 and all(r["note"].startswith("skipped") for r in optional)
    assert engine["end_to_end_engine"]["row"] in rows


def test_end_to_end_both_presets_in_process_and_on_a_cluster(report):
    e2e = report["end_to_end"]
    for preset in PRESETS:
        entry = e2e[preset]
        assert entry["passes"] == (3 if preset == "jump-cellpainting" else 1)
        for mode in ("in_process", "cluster"):
            run = entry[mode]
            assert run["cells"] > 0 and run["cells_per_s"] > 0
            assert run["ratio_to_bare"] == pytest.approx(run["cells_per_s"] / entry["bare_cells_per_s"])
            assert run["gpu_busy_fraction"] is None  # no GPU to sample
        # the same small plate in-process and on the cluster: the same cells, bit-identical on the CPU
        assert entry["cluster_vs_in_process"] == {"same_cells": True, "max_abs_diff_first_rows": 0.0}


def test_projection_of_a_jump_plate(report):
    p, e2e = report["projection"], report["end_to_end"]["jump-cellpainting"]
    assert p["from"] == "cluster" and p["cells"] == 1_000_000
    assert p["steady_cells_per_s"] >= e2e["cluster"]["cells_per_s"]  # the run's histogram pass taken out
    assert p["one_gpu_s"] == pytest.approx(1_000_000 / p["steady_cells_per_s"])
    assert p["eight_gpus_s"] == pytest.approx(p["one_gpu_s"] / 8)
    assert p["fields"] == round(1_000_000 / p["kept_cells_per_field"])
    assert "CPU cores" in p["scaling"] and "scheduler" in p["scaling"] and "histogram" in p["scaling"]


PARSE = """
import json, runpy, shlex, sys
parse_args = runpy.run_path({script!r}, run_name="gpu_plate")["parse_args"]
for command in json.loads({commands!r}):
    parse_args(shlex.split(command))
print("parsed")
"""


def test_the_benchmarks_readme_runs_it_from_the_projects_own_install():
    """benchmarks/README.md installs the project as the top README does (same torch, an extra pyproject
    declares) and names only commands and flags the scripts take."""
    import re
    import tomllib

    text = (ROOT / "benchmarks" / "README.md").read_text()
    section = text[text.index("## The GPU plate run (`gpu_plate.py`)"):]
    pins = set(re.findall(r"pip install torch==([\w.+-]+)", section))
    assert pins and pins == set(re.findall(r"pip install torch==([\w.+-]+)", (ROOT / "README.md").read_text()))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installed = re.findall(r'pip install -e "\.\[([\w,]+)\]"', section)
    assert installed and all(set(e.split(",")) <= extras for e in installed) and "gpu" in installed[0].split(",")

    commands = [line.split("benchmarks/gpu_plate.py", 1)[1].split("2>&1")[0].split("#")[0].strip()
                for line in section.splitlines() if "python3 benchmarks/gpu_plate.py" in line]
    assert any("--out" in c for c in commands) and any("--smoke" in c for c in commands)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", PARSE.format(script=str(SCRIPT), commands=json.dumps(commands))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "parsed", done.stderr[-2000:]
    helps = "".join(subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--help"], env=env,
                                   capture_output=True, text=True, timeout=120, check=True).stdout
                    for name in ("gpu_plate.py", "gpu_engine.py"))
    unknown = sorted({flag for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", section) if flag not in helps})
    assert not unknown, f"flags the README names that neither script takes: {unknown}"
