"""A single-file HTML report of a run directory: what ran, on what, what came out, what went wrong.

:func:`build_report` reads the run directory (``manifest.json``, the cells AnnData, ``profiles.h5ad``,
``metrics/*.csv``, ``figures/*.png``) and writes ``report.html`` next to them, with every figure
embedded as a base64 PNG so the file can be mailed or attached to a notebook as is. Nothing is
required: a part that is missing is listed under "Missing parts" with the reason, so a report of a
half-finished or failed run still says how far it got.

The cells AnnData is opened lazily (only ``obs``, ``uns`` and the shape of ``X`` are read), so a report
of a million-cell run costs seconds.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._constants import Files, Keys, Obs, Status
from ._version import __version__
from .errors import RunDirectoryError
from .rundir import FieldId

logger = logging.getLogger(__name__)

MAX_TABLE_ROWS = 50
"""Rows shown per table; longer tables are cut with a note (the CSV has them all)."""

_MAP_COLUMNS = ("mean_average_precision", "corrected_p_value")
_NN_COLUMNS = ("k", "accuracy")


@dataclass
class _Cells:
    path: Path
    n_obs: int
    n_vars: int
    obs: pd.DataFrame
    uns: dict[str, Any]


@dataclass
class _Run:
    root: Path
    manifest: dict[str, Any] | None = None
    cells: _Cells | None = None
    profiles: Any = None
    description: dict[str, Any] | None = None
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# reading the run directory


def fields_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """One row per field of a manifest: plate, well, field, status, cells, drops per reason, seconds.

    Columns ``dropped_<reason>`` hold the cells removed per reason (border, too small, ...),
    ``n_dropped`` their sum, ``failed`` is True for fields that ended in error. Use it with
    :func:`subcell_scale.pl.plate_heatmap` for per-well QC.
    """
    rows = []
    for key, info in (manifest.get("fields") or {}).items():
        fid = FieldId.from_key(key)
        row = {Obs.PLATE: fid.plate, Obs.WELL: fid.well, Obs.FIELD: fid.field, "status": info.get("status", "unknown"),
               "n_cells": info.get("n_cells"), "seconds": info.get("seconds"), "attempts": info.get("attempts"),
               "error": info.get("error")}
        for reason, count in (info.get("dropped") or {}).items():
            row[f"dropped_{reason}"] = count
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else [Obs.PLATE, Obs.WELL, Obs.FIELD, "status", "n_cells",
                                                           "seconds", "attempts", "error"])
    dropped = [c for c in table.columns if c.startswith("dropped_")]
    table[dropped] = table[dropped].fillna(0).astype(int)
    table["n_dropped"] = table[dropped].sum(axis=1).astype(int) if dropped else 0
    table["failed"] = table["status"] == Status.FAILED
    return table


def _read_manifest(run: _Run) -> None:
    path = run.root / Files.MANIFEST
    if not path.exists():
        run.missing.append(f"{Files.MANIFEST}: not found (no field status, parameters or timings)")
        return
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        run.missing.append(f"{Files.MANIFEST}: unreadable ({exc})")
        return
    if not isinstance(manifest, dict):
        run.missing.append(f"{Files.MANIFEST}: not a JSON object")
        return
    run.manifest = manifest


def _read_description(run: _Run) -> None:
    path = run.root / Files.RUN
    if not path.exists():
        run.missing.append(f"{Files.RUN}: not found (no run description)")
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        run.missing.append(f"{Files.RUN}: unreadable ({exc})")
        return
    if isinstance(record, dict):
        run.description = record
    else:
        run.missing.append(f"{Files.RUN}: not a JSON object")


def _read_cells(run: _Run) -> None:
    from anndata.io import read_elem

    for name in (Files.CELLS_ZARR, Files.CELLS_H5AD):
        path = run.root / name
        if not path.exists():
            continue
        try:
            if name.endswith(".zarr"):
                import zarr

                group = zarr.open_group(str(path), mode="r")
                shape = _x_shape(group["X"])
                obs, uns = read_elem(group["obs"]), read_elem(group["uns"]) if "uns" in group else {}
            else:
                import h5py

                with h5py.File(path, "r") as group:
                    shape = _x_shape(group["X"])
                    obs, uns = read_elem(group["obs"]), read_elem(group["uns"]) if "uns" in group else {}
        except Exception as exc:  # a damaged store should not stop the rest of the report
            run.missing.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
            return
        run.cells = _Cells(path=path, n_obs=int(shape[0]), n_vars=int(shape[1]), obs=obs, uns=dict(uns))
        return
    run.missing.append(f"{Files.CELLS_ZARR} / {Files.CELLS_H5AD}: not found (no cell counts or provenance)")


def _x_shape(node: Any) -> tuple[int, int]:
    shape = getattr(node, "shape", None) or node.attrs.get("shape")
    return int(shape[0]), int(shape[1])


def _read_profiles(run: _Run) -> None:
    path = run.root / Files.PROFILES
    if not path.exists():
        run.missing.append(f"{Files.PROFILES}: not found (no well profiles)")
        return
    import anndata as ad

    try:
        run.profiles = ad.read_h5ad(path)
    except Exception as exc:  # a damaged file should not stop the rest of the report
        run.missing.append(f"{Files.PROFILES}: unreadable ({type(exc).__name__}: {exc})")


def _read_metrics(run: _Run) -> None:
    folder = run.root / Files.METRICS
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        run.missing.append(f"{Files.METRICS}/*.csv: none found (no retrieval or NN accuracy tables)")
    for path in files:
        try:
            run.metrics[path.stem] = pd.read_csv(path)
        except Exception as exc:  # one bad table should not hide the others
            run.missing.append(f"{Files.METRICS}/{path.name}: unreadable ({type(exc).__name__}: {exc})")


def _read_figures(run: _Run) -> None:
    folder = run.root / Files.FIGURES
    run.figures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not run.figures:
        run.missing.append(f"{Files.FIGURES}/*.png: none found")


# --------------------------------------------------------------------------------------------------
# HTML pieces

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 10px;
border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 20px 0 6px; }
.sub { color: #666; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: white; border: 1px solid #e2e2e2; border-radius: 6px; padding: 10px 16px; min-width: 120px; }
.card .v { font-size: 22px; font-weight: 600; } .card .k { font-size: 12px; color: #666; }
.card.bad .v { color: #c62828; } .card.ok .v { color: #2e7d32; }
table { border-collapse: collapse; font-size: 13px; background: white; margin: 6px 0 4px; }
th, td { border: 1px solid #e2e2e2; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 16px 0; background: white; border: 1px solid #e2e2e2; padding: 8px; display: inline-block; }
figure img { max-width: 100%; height: auto; } figcaption { font-size: 13px; color: #444; margin-top: 4px; }
.missing li { color: #8a4b00; } .note { font-size: 12px; color: #666; }
code { background: #f0f0f0; padding: 1px 4px; border-radius: 3px; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _table(frame: pd.DataFrame, *, max_rows: int = MAX_TABLE_ROWS, index: bool = False) -> str:
    if index:
        frame = frame.reset_index()
    shown = frame.head(max_rows)
    head = "".join(f"<th>{_e(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            cells.append(f'<td class="num">{_e(_fmt(value))}</td>' if numeric else f"<td>{_e(_fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = (f'<p class="note">first {max_rows} of {len(frame)} rows</p>' if len(frame) > max_rows else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in items.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _card(label: str, value: Any, cls: str = "") -> str:
    return f'<div class="card {cls}"><div class="v">{_e(_fmt(value))}</div><div class="k">{_e(label)}</div></div>'


def _png(data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _caption(path: Path) -> str:
    text = path.stem.replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------------------
# sections


def _summary(run: _Run, fields: pd.DataFrame | None) -> str:
    cards = []
    if fields is not None and len(fields):
        done = int((fields["status"] == Status.DONE).sum())
        failed = int(fields["failed"].sum())
        pending = len(fields) - done - failed
        cards += [_card("fields done", f"{done}/{len(fields)}", "ok" if done == len(fields) else ""),
                  _card("fields failed", failed, "bad" if failed else "ok")]
        if pending:
            cards.append(_card("fields not finished", pending, "bad"))
        cards.append(_card("cells dropped", int(fields["n_dropped"].sum())))
    if run.cells is not None:
        obs = run.cells.obs
        cards.append(_card("cells", run.cells.n_obs))
        if Obs.PLATE in obs:
            cards.append(_card("plates", obs[Obs.PLATE].nunique()))
        if Obs.WELL in obs:
            wells = obs[[c for c in (Obs.PLATE, Obs.WELL) if c in obs]].drop_duplicates()
            cards.append(_card("wells with cells", len(wells)))
        cards.append(_card("embedding dims", run.cells.n_vars))
    if run.profiles is not None:
        cards.append(_card("profiles", run.profiles.n_obs))
    for name, table in run.metrics.items():
        if all(c in table for c in _MAP_COLUMNS):
            q = table["corrected_p_value"].to_numpy(dtype=float)
            cards.append(_card(f"{name}: mAP", float(np.nanmean(table["mean_average_precision"]))))
            cards.append(_card(f"{name}: fraction retrieved", float(np.mean(q[np.isfinite(q)] < 0.05))
                               if np.isfinite(q).any() else float("nan")))
    if not cards:
        return "<p>Nothing to summarise: the run directory holds none of the expected outputs.</p>"
    return f'<div class="cards">{"".join(cards)}</div>'


def _run_section(record: Mapping[str, Any], embed_summary: Mapping[str, Any]) -> str:
    """How the run went: its status and stages, stage timings and skipped steps (manifest ``run``)."""
    parts = []
    if record.get("status"):
        stages = ", ".join(record.get("stages") or [])
        error = f": {record['error']}" if record.get("error") else ""
        parts.append(f"<p>Status: <b>{_e(record['status'])}</b>{_e(error)}"
                     + (f" (stages {_e(stages)})" if stages else "") + "</p>")
    timings = dict(record.get("timings") or {})
    if not timings and embed_summary.get("seconds") is not None:
        timings["embed"] = embed_summary["seconds"]
    if timings:
        rows = [{"stage": k, "seconds": float(v)} for k, v in timings.items() if isinstance(v, (int, float))]
        rows.append({"stage": "total", "seconds": float(sum(r["seconds"] for r in rows))})
        parts.append("<h3>Timings</h3>" + _table(pd.DataFrame(rows)))
    skipped = record.get("skipped") or {}
    if skipped:
        items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in skipped.items())
        parts.append(f'<h3>Skipped steps</h3><ul class="missing">{items}</ul>')
    return "".join(parts) or "<p>No run record in the manifest.</p>"


def _parameters(run: _Run) -> str:
    parts = []
    manifest = run.manifest or {}
    embed = manifest.get("embed") or {}
    for title, key in (("Inputs", "inputs"), ("Parameters", "parameters"), ("Model", "model"),
                       ("Versions", "versions")):
        section = embed.get(key)
        if isinstance(section, Mapping) and section:
            parts.append(f"<h3>{title}</h3>{_kv_table(section)}")
    if run.cells is not None:
        provenance = run.cells.uns.get(Keys.PROVENANCE)
        if isinstance(provenance, Mapping) and provenance:
            flat = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in provenance.items()}
            parts.append(f"<h3>Provenance of the cells (<code>uns['{Keys.PROVENANCE}']</code>)</h3>{_kv_table(flat)}")
    extra = {k: v for k, v in manifest.items() if k not in {"fields", "embed", "format", "run"}}
    if extra:
        parts.append(f"<h3>Other manifest entries</h3>{_kv_table(extra)}")
    return "".join(parts) or "<p>No parameters recorded (no manifest).</p>"


def _description_section(record: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """The run's description (``run.json``): the protocol in words, then the effective values per plate.

    Lines repeated for every plate are shown once; plates that share every value share one column.
    """
    parts = []
    lines = list(dict.fromkeys(str(line) for line in record.get("lines") or []))
    if lines:
        parts.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>")
    if labels:
        items = "".join(f"<li>plate <b>{_e(k)}</b>: <code>{_e(v)}</code></li>" for k, v in labels.items())
        parts.append(f"<p>Plates that could not take their segmentation labels keep them in the run directory:</p>"
                     f"<ul>{items}</ul>")
    params = record.get("parameters") if isinstance(record.get("parameters"), Mapping) else {}
    values = {k: _fmt(v) for k, v in params.items() if k not in {"description", "crop"}}
    columns: dict[str, dict[str, str]] = {}
    for i, plan in enumerate(record.get("plates") or [{}]):
        plan = plan if isinstance(plan, Mapping) else {}
        name = str(plan.get("name") or f"#{i + 1}")
        columns[name] = {**values, **{f"plate: {k}": _fmt(v) for k, v in plan.items() if k not in ("name",)}}
    if values:
        table = pd.DataFrame(columns)
        if len(columns) > 1 and table.nunique(axis=1, dropna=False).le(1).all():
            table = table.iloc[:, :1].set_axis([f"all {len(columns)} plates"], axis=1)
        parts.append("<h3>Effective parameters</h3>" + _table(table.rename_axis("parameter"), index=True,
                                                            max_rows=200))
    options = record.get("options") if isinstance(record.get("options"), Mapping) else {}
    if options:
        parts.append("<h3>Options</h3>" + _kv_table({k: v for k, v in options.items() if v not in (None, {}, [])}))
    return "".join(parts) or "<p>The run description is empty.</p>"


def protocol_sections(preset: str) -> str:
    """The part of the protocols page (``subcell_scale/protocols.md``, also ``docs/protocols.md``) about
    a preset, with the notes that hold for every preset, as markdown: what the run reproduces, from
    which reference code, and what still differs."""
    from importlib.resources import files

    page = files("subcell_scale").joinpath("protocols.md").read_text(encoding="utf-8")
    sections = ["\n## " + part for part in page.split("\n## ")[1:]]
    wanted = [s for s in sections if s.startswith(f"\n## `{preset}`") or "(all presets)" in s.splitlines()[1]]
    return "".join(wanted).strip()


def _protocol_section(preset: str) -> str:
    from markdown_it import MarkdownIt

    text = protocol_sections(preset)
    if not text:
        return f"<p>The protocols page has no section on the preset {_e(preset)!r}.</p>"
    demoted = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)  # the report's sections are h2
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(demoted)
    return f'<div class="protocol">{body}</div>'


def _fields_section(fields: pd.DataFrame) -> str:
    from . import pl

    parts = []
    failed = fields[fields["failed"]]
    if len(failed):
        parts.append(f"<h3>Failed fields ({len(failed)})</h3>"
                     + _table(failed[[Obs.PLATE, Obs.WELL, Obs.FIELD, "attempts", "error"]]))
    pending = fields[~fields["status"].isin([Status.DONE, Status.FAILED])]
    if len(pending):
        parts.append(f"<h3>Fields not finished ({len(pending)})</h3>"
                     "<p>Run the same command again with the same output directory to finish them.</p>"
                     + _table(pending[[Obs.PLATE, Obs.WELL, Obs.FIELD, "status"]]))
    dropped = [c for c in fields.columns if c.startswith("dropped_")]
    if dropped:
        totals = fields[dropped].sum().rename(lambda c: c.removeprefix("dropped_"))
        table = pd.DataFrame({"reason": totals.index, "cells dropped": totals.to_numpy()})
        parts.append("<h3>Cells dropped per reason</h3>" + _table(table))
    seconds = pd.to_numeric(fields["seconds"], errors="coerce").dropna()
    if len(seconds):
        timing = {"fields timed": len(seconds), "total seconds (sum over fields)": float(seconds.sum()),
                  "median seconds per field": float(seconds.median()), "slowest field seconds": float(seconds.max())}
        parts.append("<h3>Timings</h3>" + _kv_table(timing))
    done = fields[fields["status"] == Status.DONE]
    for title, table, value, label, cmap in (
            ("Failed fields per well", fields, "failed", "failed fields", "Reds"),
            ("Dropped cells per well (finished fields)", done, "n_dropped", "cells dropped", "Oranges")):
        if len(table) and table[value].astype(float).sum() > 0 and table[Obs.WELL].astype(bool).all():
            try:
                fig = pl.plate_heatmap(table, value, title=title, label=label, cmap=cmap)
            except ValueError as exc:  # well names outside a standard plate: the tables above still say it
                logger.warning("report: no %s heatmap (%s)", value, exc)
                continue
            parts.append(_png(_figure_png(fig), title))
    return "".join(parts) or "<p>Every field finished; no cells were dropped.</p>"


def _cells_section(cells: _Cells, fields: pd.DataFrame | None) -> str:
    """Cell counts; per well from the manifest when there is one, so imaged wells without cells show 0."""
    from . import pl

    parts = [f"<p><code>{_e(cells.path.name)}</code>: {cells.n_obs:,} cells x {cells.n_vars:,} features.</p>"]
    obs = cells.obs
    done = fields[fields["status"] == Status.DONE] if fields is not None else None
    if Obs.WELL in obs and len(obs):
        try:
            if done is not None and len(done):
                fig = pl.plate_heatmap(done, "n_cells", title="Cells per well", label="cells")
            else:
                fig = pl.cells_per_well(obs)
            parts.append(_png(_figure_png(fig), "Cells per well"))
        except ValueError as exc:
            logger.warning("report: no cells-per-well heatmap (%s)", exc)
        per_plate = obs.groupby(Obs.PLATE, observed=True).size() if Obs.PLATE in obs else None
        if per_plate is not None:
            parts.append(_table(per_plate.rename("cells").reset_index()))
    return "".join(parts)


def _profiles_section(profiles: Any) -> str:
    parts = [f"<p><code>{_e(Files.PROFILES)}</code>: {profiles.n_obs:,} profiles x {profiles.n_vars:,} features.</p>"]
    from .profiles import profiling_steps

    rows = []
    for i, step in enumerate(profiling_steps(profiles), start=1):
        dropped = step.pop("dropped_features", [])
        name = step.pop("step", f"step {i}")
        rows.append({"#": i, "step": name, "parameters": json.dumps(step, default=str),
                     "features dropped": len(dropped)})
    if rows:
        parts.append("<h3>Steps applied</h3>" + _table(pd.DataFrame(rows)))
    if Keys.N_CELLS in profiles.obs:
        n = profiles.obs[Keys.N_CELLS].astype(float)
        parts.append(_kv_table({"cells per profile (median)": float(n.median()), "min": float(n.min()),
                                "max": float(n.max())}))
    return "".join(parts)


def _metrics_section(metrics: Mapping[str, pd.DataFrame]) -> str:
    """Tables in reading order: the summary, mAP per group, NN accuracy, then per-profile tables."""

    def rank(item: tuple[str, pd.DataFrame]) -> tuple[int, str]:
        name, table = item
        if name == "summary":
            return 0, name
        if all(c in table for c in _MAP_COLUMNS):
            return 1, name
        if all(c in table for c in _NN_COLUMNS):
            return 2, name
        return 3, name

    parts = []
    summary = metrics.get("summary")
    if summary is not None and "view" in summary.columns and len(summary):
        from .views import side_by_side

        parts.append(f"<h3>Views side by side <span class='note'>({Files.METRICS}/summary.csv; each view's tables "
                     f"in {Files.METRICS}/views/)</span></h3>" + _table(side_by_side(summary).round(3), index=True))
    for name, table in sorted(metrics.items(), key=rank):
        header = f"<h3>{_e(name)} <span class='note'>({Files.METRICS}/{_e(name)}.csv)</span></h3>"
        lead = ""
        if all(c in table for c in _MAP_COLUMNS):
            q = table["corrected_p_value"].to_numpy(dtype=float)
            ok = np.isfinite(q)
            retrieved = int((q[ok] < 0.05).sum())
            lead = (f"<p>mean mAP {float(np.nanmean(table['mean_average_precision'])):.3f}; fraction retrieved "
                    f"(q &lt; 0.05) {retrieved / max(int(ok.sum()), 1):.2f} ({retrieved}/{int(ok.sum())} groups)</p>")
            table = table.sort_values("mean_average_precision", ascending=False)
        elif all(c in table for c in _NN_COLUMNS):
            best = table.loc[table["accuracy"].idxmax()] if len(table) else None
            if best is not None:
                lead = f"<p>best accuracy {float(best['accuracy']):.3f} at k = {int(best['k'])}</p>"
        parts.append(header + lead + _table(table.drop(columns=[c for c in ("indices",) if c in table])))
    return "".join(parts)


# --------------------------------------------------------------------------------------------------


def build_report(run_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``report.html`` for a run directory and return its path.

    Parameters
    ----------
    run_dir
        The directory ``subcell-scale run`` / ``demo`` wrote (or any directory holding some of its
        parts: ``manifest.json``, ``cells.zarr`` or ``cells.h5ad``, ``profiles.h5ad``,
        ``metrics/*.csv``, ``figures/*.png``).
    out
        Where to write the report; ``<run_dir>/report.html`` by default.

    Returns
    -------
    The path of the HTML file: self-contained (inline CSS, figures as base64 PNG).

    Raises
    ------
    RunDirectoryError
        ``run_dir`` is not a directory, or the report cannot be written.
    """
    root = Path(run_dir)
    if not root.is_dir():
        msg = f"run directory {root} {'is a file, not a folder' if root.exists() else 'does not exist'}"
        raise RunDirectoryError(msg)
    run = _Run(root=root)
    _read_manifest(run)
    _read_description(run)
    _read_cells(run)
    _read_profiles(run)
    _read_metrics(run)
    _read_figures(run)
    fields = fields_table(run.manifest) if run.manifest and run.manifest.get("fields") else None

    sections = [("Summary", _summary(run, fields))]
    manifest = run.manifest or {}
    if run.description is not None:
        labels = (manifest.get("run") or {}).get("labels") or {}
        sections.append(("Run description", _description_section(run.description, labels)))
        name = (run.description.get("parameters") or {}).get("preset")
        if name:
            sections.append((f"Protocol: {name}", _protocol_section(str(name))))
    if manifest.get("run") or (manifest.get("embed") or {}).get("summary"):
        sections.append(("Run", _run_section(manifest.get("run") or {}, (manifest.get("embed") or {}).get("summary")
                                             or {})))
    sections.append(("Parameters", _parameters(run)))
    if fields is not None:
        sections.append(("Fields", _fields_section(fields)))
    if run.cells is not None:
        sections.append(("Cells", _cells_section(run.cells, fields)))
    if run.profiles is not None:
        sections.append(("Profiles", _profiles_section(run.profiles)))
    if run.metrics:
        sections.append(("Metrics", _metrics_section(run.metrics)))
    if run.figures:
        sections.append(("Figures", "".join(_png(p.read_bytes(), _caption(p)) for p in run.figures)))
    if run.missing:
        items = "".join(f"<li>{_e(m)}</li>" for m in run.missing)
        sections.append(("Missing parts", f'<ul class="missing">{items}</ul>'))

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f'<section id="{re.sub(r"[^a-z0-9]+", "-", t.lower()).strip("-")}"><h2>{_e(t)}</h2>{c}</section>'
                   for t, c in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>subcell-scale report: '
            f"{_e(root.name)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>subcell-scale report</h1><p class='sub'>{_e(root.resolve())} &middot; written {now} "
            f"by subcell-scale {_e(__version__)}</p>{body}</main></body></html>")
    target = Path(out) if out is not None else root / Files.REPORT
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        msg = f"cannot write the report {target}: {exc}"
        raise RunDirectoryError(msg) from exc
    logger.info("report written to %s (%d figures, %d missing parts)", target, len(run.figures), len(run.missing))
    return target
