"""``subcell-scale evaluate``: the evaluation of well profiles (replicate and MoA mAP, k-NN accuracy), as described.

Given a run directory (or its profiles), the run's recorded description (``run.json``) is the design,
so ``subcell-scale evaluate RUN --out DIR`` writes the run's own tables; ``--preset``, ``--set`` (e.g.
``design.null_size=1000``), ``--null-size`` and ``--seed`` change it, and ``DIR/design.json``
records the design the tables were computed with.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._options import add_run_options, given_options, require_out

NAME = "evaluate"
HELP = ("evaluate profiles as the run (or a preset) describes: replicate and MoA mAP with p/q-values, MoA and "
        "compound k-NN accuracy, per cell type (metrics/*.csv)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", metavar="PROFILES|RUN",
                        help="a run directory, or a profiles AnnData (.h5ad) or parquet (Metadata_ columns)")
    add_run_options(parser, NAME, helps={
        "out": "folder for the metrics/*.csv tables and design.json",
        "preset": "evaluate as this preset's design does (hpa, jump-cellpainting); default: the run's recorded "
                  "description, else hpa",
        "set": "preset parameters, or evaluation design fields by name, e.g. null_size=1000 nn_match=any (see "
               "subcell_scale.metrics.EvaluationDesign; values as JSON)"})


def description(location: Path, preset: str | None, overrides: dict[str, Any]) -> tuple[Any, str]:
    """The parameters to use for a run's files, and where they come from (for the user to read).

    An explicit ``preset`` wins; else the description recorded by the run ``location`` belongs to;
    else the default preset. ``overrides`` change whichever it is.
    """
    from ..params import RunParams
    from ..runspec import read_description

    if preset is not None:
        return RunParams.resolve(preset, **overrides), f"preset {preset}" + (" with overrides" if overrides else "")
    recorded = read_description(location)
    if recorded is not None:
        params = recorded.params.replace(**overrides) if overrides else recorded.params
        where = recorded.root / "run.json"
        return params, f"the run's description ({where})" + (" with overrides" if overrides else "")
    params = RunParams.resolve(None, **overrides)
    return params, f"preset {params.preset} (no run description found)" + (" with overrides" if overrides else "")


def design_keywords(keywords: dict[str, Any]) -> dict[str, Any]:
    """``--set null_size=1000`` as ``design.null_size``: for this command, a design field may go by its name."""
    import dataclasses

    from ..metrics import EvaluationDesign
    from ..runspec import preset_keys

    fields = {f.name for f in dataclasses.fields(EvaluationDesign)}
    keys = preset_keys()
    return {f"design.{k}" if k in fields and k not in keys else k: v for k, v in keywords.items()}


def run(args: argparse.Namespace) -> int:
    from .._constants import Files
    from ..errors import ProfilingError
    from ..profiles import read_profiles
    from ..runspec import option_keywords
    from ..stages import evaluate_profiles_for

    options = given_options(args, NAME)
    out = Path(require_out(options, NAME))
    path = Path(args.profiles)
    if path.is_dir() and (path / Files.PROFILES).exists():
        path = path / Files.PROFILES
    if not path.exists():
        msg = f"{path}: no such profiles file or run directory"
        raise ProfilingError(msg)
    keywords = design_keywords(option_keywords({k: v for k, v in options.items() if k != "out"}))
    params, source = description(Path(args.profiles), keywords.pop("preset", None), keywords)
    print(f"evaluating as {source}")
    tables, why = evaluate_profiles_for(read_profiles(path), params.design, out)
    if why or tables["summary"].empty:
        msg = f"{path}: nothing could be evaluated ({why or 'see the warnings above'})"
        raise ProfilingError(msg)
    for row in tables["summary"].itertuples():
        print(f"{row.cell_type:<10} {row.design:<12} {row.metric:<20} {row.value:.4f}  (n={row.n_groups})")
    print(f"tables written to {out}")
    return 0
