"""One prepared GPU run: what a JUMP plate costs on one GPU, measured in one go, printed and saved as JSON.

On a CUDA machine with the project installed (``pip install -e ".[gpu]"``; see ``benchmarks/README.md``)
this script measures, in this order, all in one run:

1. plates: realistic synthetic plates without label images (``make_demo_plate(geometry="jump" | "hpa",
   labels=False, processes=<cores>)``), so segmentation runs inside the runs, as on a published JUMP plate;
2. segmentation: read, segment and filter seconds per field for each geometry with its preset's
   parameters (wall and CPU), and the client's plate-histogram pass the JUMP preset makes at planning;
3. crops: :func:`~subcell_scale.cells.extract_cells_torch` on the device on a realistic field of each
   geometry (ms per cell, host-to-device copy of the field and the cells table included), beside the
   numpy path on one core;
4. engine: bare-model cells/s (``SubCell`` forward on device tensors, bf16, 448 px, one batch size) for the
   reference-style forward (eager attention keeping every layer's probabilities, as SubCellPortable)
   and each engine option (SDPA kernel, patch embedding), with each row's fidelity to the fp32 engine on
   real cells (cosine median and worst, relative Frobenius error);
5. end to end: ``embed_plate`` cells/s for the ``hpa`` and ``jump-cellpainting`` presets, in-process and
   on a one-worker local cluster with the ``GPU`` resource (warmed up on a small plate first), using
   the fastest eager engine option; the ratio to the bare model at the preset's crop size (target >=
   0.8) and the GPU busy fraction while the run lasts (NVML utilisation sampled every 0.1 s);
6. engine, optional rows while ``--budget-s`` allows: ``torch.compile`` (default mode, and
   ``"reduce-overhead"`` with CUDA graphs and padded batches), and an fp8 row (torchao float8 dynamic
   activations and weights on the MLP and attention-output linears, compiled) when torchao imports;
7. projection: the wall time of one JUMP plate of 1M cells (3 passes at 478 px) on one GPU and on 8
   (linear over one worker per GPU), and what would break the linear scaling.

The JSON (``--out DIR``: ``DIR/gpu_plate.json``) is rewritten after every step, so a run cut short
keeps what it measured. Sizes are flags; the defaults take about 7 minutes on an H200 with 16 cores.
``--smoke`` runs everything on the CPU with a tiny model and tiny plates in well under a minute, to
check the script (the test suite does).

    python3 benchmarks/gpu_plate.py --out gpu-plate       # on a CUDA machine
    python3 benchmarks/gpu_plate.py --smoke --out /tmp/x  # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# worker processes of the local cluster import this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

SECTIONS = ("meta", "plates", "segmentation", "crops", "engine", "end_to_end", "projection")
"""Top-level keys of the JSON, each present (possibly with a ``note``) whatever happened."""

GEOMETRY = {"hpa": "hpa", "jump-cellpainting": "jump"}
"""Preset -> the ``make_demo_plate`` geometry of its realistic plates."""

VARIANT = {"hpa": "all_channels_MAE-CellS-ProtS-Pool", "jump-cellpainting": "ER-DNA-Protein_MAE-CellS-ProtS-Pool"}
"""Preset -> the published variant whose architecture and channels the (random-weight) model has."""

SMOKE_PLATES = {"jump": {"field_size": 270, "cells_per_field": 12}, "hpa": {"field_size": 1024, "cells_per_field": 4}}
SMOKE_OUT_SIZE = {"hpa": 64, "jump-cellpainting": 48}
JUMP_PLATE_CELLS = 1_000_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Report:
    """The run's results, one section per step, saved after each change so a cut-short run keeps them."""

    def __init__(self, out: str | None) -> None:
        self.data: dict[str, Any] = {name: {"note": "not reached"} for name in SECTIONS}
        self.path = Path(out) / "gpu_plate.json" if out else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def set(self, section: str, value: dict[str, Any]) -> None:
        self.data[section] = value
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_plain))
        tmp.replace(self.path)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class Clock:
    """Seconds since the start and whether an optional step of ``cost`` seconds still fits the budget."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, cost: float) -> bool:
        return self.elapsed() + cost <= self.budget_s


class GpuBusy:
    """Mean NVML utilisation of GPU 0 (share of time a kernel ran) while the ``with`` block lasts.

    Sampled every 0.1 s from a thread through pynvml when it imports, else from ``nvidia-smi``; on a
    machine without either (the CPU smoke run) :attr:`fraction` stays None.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuBusy:
        if not self.enabled:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(_visible_gpu_index())
            pynvml.nvmlDeviceGetUtilizationRates(handle)  # one reading now, so a failing binding falls back
            self.source = "pynvml"

            def sample() -> None:
                while not self._stop.wait(0.1):
                    try:
                        self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                    except Exception:  # noqa: BLE001 - a reading that fails ends the sampling, not the run
                        return

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        except Exception:  # noqa: BLE001 - no NVML bindings: fall back to nvidia-smi
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
                self._proc = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                     "-i", str(_visible_gpu_index())], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self._thread = threading.Thread(target=self._read_smi, daemon=True)
                self._thread.start()
        return self

    def _read_smi(self) -> None:
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(float(line.strip()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def fraction(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


def _visible_gpu_index() -> int:
    """NVML index of the GPU torch calls cuda:0 (the first of CUDA_VISIBLE_DEVICES, when it is a number)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- 1. plates
def write_plates(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Pristine plates per geometry: the cluster's timed run, and a smaller one for in-process and warm-up.

    Each run gets a fresh copy (a run writes its segmentation into the plate it reads).
    """
    from subcell_scale.io.demo import make_demo_plate

    sizes = {"jump": (args.jump_wells, args.jump_fields), "hpa": (args.hpa_wells, args.hpa_fields)}
    processes = 1 if args.smoke else args.cores  # spawning processes costs more than a smoke plate's few fields
    out: dict[str, Any] = {"processes": processes}
    for geometry, (wells, fields) in sizes.items():
        extra = SMOKE_PLATES[geometry] if args.smoke else {}
        t0 = time.perf_counter()
        (path,) = make_demo_plate(root / geometry, n_plates=1, n_wells=wells, n_fields=fields, geometry=geometry,
                                  labels=False, processes=processes, **extra)
        seconds = time.perf_counter() - t0
        small_fields = min(fields, args.small_fields)
        (small,) = make_demo_plate(root / f"{geometry}-small", n_plates=1, n_wells=4, n_fields=small_fields,
                                   geometry=geometry, labels=False, processes=processes, seed=1, **extra)
        n_fields = wells * fields
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out[geometry] = {"path": str(path), "small_path": str(small), "wells": wells, "fields": n_fields,
                         "small_fields": 4 * small_fields, "write_s": round(seconds, 2),
                         "fields_per_s": n_fields / seconds, "disk_mb_per_field": size / n_fields / 1e6}
        log(f"{geometry}: {wells} wells x {fields} fields written in {seconds:.1f} s "
            f"({size / n_fields / 1e6:.1f} MB per field on disk); small plate of {4 * small_fields} fields")
    return out


def fresh_copy(src: str, root: Path, name: str) -> Path:
    """A copy of a plate without labels, for one run."""
    target = root / name / Path(src).name
    if target.parent.exists():
        shutil.rmtree(target.parent)
    shutil.copytree(src, target)
    return target


# ---------------------------------------------------------------------------------------------------- 2. segmentation
def measure_segmentation(args: argparse.Namespace, plates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read / segment / filter seconds per field (wall and CPU of this process), and fields kept for crops."""
    import numpy as np

    from subcell_scale.intensity import plate_histogram
    from subcell_scale.io import open_plate
    from subcell_scale.params import RunParams
    from subcell_scale.segment import filter_cells, segment_field

    out: dict[str, Any] = {}
    kept_fields: dict[str, Any] = {}
    for preset, geometry in GEOMETRY.items():
        plate = open_plate(plates[geometry]["path"])
        params = RunParams.resolve(preset)
        sites = [(w, f) for w in plate.wells for f in plate.fields(w)][: args.seg_fields]
        rows, fields = [], []
        for well, field in sites:
            w0, c0 = time.perf_counter(), time.process_time()
            image = plate.read_field(well, field)
            w1, c1 = time.perf_counter(), time.process_time()
            labels = segment_field(image, plate.channel_names, plate.pixel_size, **params.segmentation.kwargs())
            w2, c2 = time.perf_counter(), time.process_time()
            filtered, _ = filter_cells(labels, plate.pixel_size, **params.cells.kwargs())
            w3, c3 = time.perf_counter(), time.process_time()
            rows.append({"read_wall": w1 - w0, "read_cpu": c1 - c0, "segment_wall": w2 - w1, "segment_cpu": c2 - c1,
                         "filter_wall": w3 - w2, "filter_cpu": c3 - c2, "cells": int(labels.max()),
                         "kept": int(np.count_nonzero(np.bincount(filtered.ravel())[1:]))})
            fields.append((image, filtered))
        median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        entry = {"fields": len(rows), "shape": list(fields[0][0].shape),
                 "segment_s_per_field": median["segment_wall"], "segment_cpu_s_per_field": median["segment_cpu"],
                 "read_s_per_field": median["read_wall"], "filter_s_per_field": median["filter_wall"],
                 "cpu_s_per_field_before_model": median["read_cpu"] + median["segment_cpu"] + median["filter_cpu"],
                 "cells_per_field": statistics.mean(r["cells"] for r in rows),
                 "kept_per_field": statistics.mean(r["kept"] for r in rows)}
        if params.crop.plate_upper_percentile is not None:
            t0 = time.perf_counter()
            histogram = plate_histogram(plate)
            seconds = time.perf_counter() - t0
            n_sites = sum(len(plate.fields(w)) for w in plate.wells)
            entry["plate_histogram_s_per_field"] = seconds / n_sites
            kept_fields[f"{preset}:histogram"] = histogram
        out[preset] = entry
        kept_fields[preset] = (plate, params, fields)
        log(f"{preset}: segment {entry['segment_s_per_field']:.2f} s/field wall "
            f"({entry['segment_cpu_s_per_field']:.2f} CPU), read {entry['read_s_per_field']:.2f} s, "
            f"{entry['kept_per_field']:.0f} of {entry['cells_per_field']:.0f} cells kept per field")
    return out, kept_fields


# ---------------------------------------------------------------------------------------------------- 3. crops
def measure_crops(args: argparse.Namespace, kept: dict[str, Any], device: str) -> tuple[dict[str, Any], Any]:
    """Device and numpy crop ms/cell on a realistic field per preset; returns real HPA crops for fidelity checks."""
    import numpy as np
    import torch

    from subcell_scale.cells import extract_cells, extract_cells_torch
    from subcell_scale.intensity import histogram_percentile
    from subcell_scale.models import get_variant
    from subcell_scale.params import RunParams

    out: dict[str, Any] = {"device": device}
    fidelity = None
    for preset in GEOMETRY:
        plate, _, fields = kept[preset]
        overrides = {"out_size": SMOKE_OUT_SIZE[preset]} if args.smoke else {}
        params = RunParams.resolve(preset, **overrides)
        plan = params.plan(plate, get_variant(VARIANT[preset]).channels)
        channels = plan.passes if plan.multi_pass else plan.passes[0]
        extra: dict[str, Any] = {"channels": channels}
        spec = params.crop
        if spec.plate_upper_percentile is not None:
            extra["plate_upper"] = histogram_percentile(kept[f"{preset}:histogram"], spec.plate_upper_percentile).tolist()
        image, labels = max(fields, key=lambda f: int(f[1].max()))  # the field with the most cells
        ref, table = extract_cells(image, labels, plate.pixel_size, spec, **extra)
        crops, _ = extract_cells_torch(image, labels, plate.pixel_size, spec, device=device, **extra)
        sync(device)
        error = float(np.abs(crops.float().cpu().numpy() - ref).max()) if len(table) else 0.0
        repeats = 2 if args.smoke else 10
        t0 = time.perf_counter()
        for _ in range(repeats):
            extract_cells_torch(image, labels, plate.pixel_size, spec, device=device, **extra)
        sync(device)
        device_ms = (time.perf_counter() - t0) * 1e3 / (repeats * max(1, len(table)))
        c0 = time.process_time()
        extract_cells(image, labels, plate.pixel_size, spec, **extra)
        numpy_ms = (time.process_time() - c0) * 1e3 / max(1, len(table))
        out[preset] = {"cells": len(table), "passes": len(plan.passes), "out_size": spec.size,
                       "device_ms_per_cell": device_ms, "numpy_cpu_ms_per_cell": numpy_ms,
                       "device_vs_numpy_max_abs_diff": error}
        log(f"{preset}: crops on {device} {device_ms:.3f} ms/cell, numpy {numpy_ms:.2f} CPU ms/cell "
            f"({len(table)} cells, {len(plan.passes)} pass(es) of {spec.size} px; max |diff| {error:.1e})")
        if preset == "hpa":
            parts = [extract_cells(img, lab, plate.pixel_size, spec, **extra)[0] for img, lab in fields]
            fidelity = np.concatenate(parts)[: 16 if args.smoke else 64]
            del parts
        del crops
        if device == "cuda":
            torch.cuda.empty_cache()
    return out, fidelity


# ---------------------------------------------------------------------------------------------------- 4. engine
class Engine:
    """Builds the engine-table models from one set of random weights and times them on device tensors."""

    def __init__(self, args: argparse.Namespace, device: str, fidelity: Any) -> None:
        import torch

        from subcell_scale.models import ModelConfig, SubCell

        self.args, self.device = args, device
        self.config = (ModelConfig(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128, pool_int_dim=32)
                       if args.smoke else ModelConfig())
        self.size = SMOKE_OUT_SIZE["hpa"] if args.smoke else args.size
        base = SubCell.random(self.config, seed=0, n_classifiers=1, device="cpu", precision="fp32")
        self.state = base.state_dict()
        self.x = torch.rand(args.batch, self.config.num_channels, self.size, self.size, device=device,
                            generator=torch.Generator(device).manual_seed(1))
        cells = torch.from_numpy(fidelity) if fidelity is not None and len(fidelity) else \
            torch.rand(16, self.config.num_channels, self.size, self.size, generator=torch.Generator().manual_seed(3))
        self.fidelity_source = "hpa cells" if fidelity is not None and len(fidelity) else "uniform noise"
        # the cells tiled to one timed batch: a compiled row sees no new shape (and compiles nothing more)
        self.fidelity_n = min(len(cells), args.batch)
        self.fidelity = cells.repeat(-(-args.batch // len(cells)), 1, 1, 1)[: args.batch].to(device)
        reference = self.build({"precision": "fp32"})
        self.reference = self.embed(reference)
        del reference

    def embed(self, model: Any) -> Any:
        """Embeddings of the fidelity cells, from one forward pass of the timed batch shape."""
        import torch

        with torch.inference_mode():
            return model(self.fidelity).embedding[: self.fidelity_n].float().cpu().numpy()

    def build(self, options: dict[str, Any]) -> Any:
        from subcell_scale.models import SubCell

        model = SubCell(self.config, n_classifiers=1, device=self.device, **options)
        model.load_state_dict(self.state)
        return model

    def row(self, label: str, options: dict[str, Any], *, reference: bool = False,
            prepare: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Cells/s of one configuration (bf16 unless ``options`` says), its peak memory and fidelity to fp32."""
        import torch

        options = {"precision": "bf16", **options}
        entry: dict[str, Any] = {"row": label, "options": {k: v for k, v in options.items()}, "batch": self.args.batch,
                                 "size": self.size, "cells_per_s": None, "note": ""}
        model = None
        try:
            model = self.build(options)
            if prepare is not None:
                prepare(model)
            if self.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(3):  # warm-up: kernels, compilation, CUDA-graph recording
                    model(self.x, return_attentions=reference)
                sync(self.device)
                entry["warmup_s"] = round(time.perf_counter() - t0, 2)
                n, t0 = 0, time.perf_counter()
                while True:
                    for _ in range(2):
                        model(self.x, return_attentions=reference)
                    n += 2
                    sync(self.device)
                    if time.perf_counter() - t0 >= self.args.min_seconds:
                        break
                elapsed = time.perf_counter() - t0
            entry["cells_per_s"] = n * self.x.shape[0] / elapsed
            if self.device == "cuda":
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            entry.update(fidelity(self.embed(model), self.reference))
            entry["fidelity_cells"] = self.fidelity_n
        except Exception as exc:  # noqa: BLE001 - a row that cannot run here is reported, the table goes on
            entry["note"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        finally:
            del model
            if "compile" in options or prepare is not None:
                torch._dynamo.reset()
            if self.device == "cuda":
                torch.cuda.empty_cache()
        rate = f"{entry['cells_per_s']:.0f} cells/s" if entry["cells_per_s"] else entry["note"]
        log(f"engine: {label}: {rate}")
        return entry


def fidelity(out: Any, ref: Any) -> dict[str, float]:
    """Cosine similarity per cell (median, worst) and relative Frobenius error of embeddings against fp32."""
    import numpy as np

    a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"cosine_median": float(np.median(cosine)), "cosine_worst": float(cosine.min()),
            "rel_fro": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


EAGER_ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("reference-style (eager attention, all probabilities)", {"attention": "eager"}, True),
    ("engine default (SDPA auto, unfold)", {}, False),
    ("engine default, fp32", {"precision": "fp32"}, False),
    ("SDPA cudnn", {"attention_backend": "cudnn"}, False),
    ("SDPA flash", {"attention_backend": "flash"}, False),
    ("SDPA efficient", {"attention_backend": "efficient"}, False),
    ("SDPA math", {"attention_backend": "math"}, False),
    ("patch embedding conv", {"patch_embedding": "conv"}, False),
    ("patch embedding channels-last", {"patch_embedding": "channels-last"}, False),
]


def best_eager(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest bf16 eager engine row with the SDPA path (the end-to-end runs use its options)."""
    candidates = [r for r in rows if r["cells_per_s"] and not r["row"].startswith("reference")
                  and r["options"].get("precision") == "bf16" and "compile" not in r["options"]]
    return max(candidates, key=lambda r: r["cells_per_s"]) if candidates else {"row": EAGER_ROWS[1][0], "options": {}}


def optional_rows(engine: Engine, clock: Clock, eager: list[dict[str, Any]], smoke_compile: bool) -> list[dict[str, Any]]:
    """torch.compile rows and the fp8 row, while ``--budget-s`` lasts (about a minute each on an H200).

    CUDA graphs first (most likely to help a launch-bound forward), then fp8, then the default compile
    mode with and without the fastest eager option.
    """
    rows = []
    best = best_eager(eager)["options"]
    tuned = {k: v for k, v in best.items() if k != "precision"}
    specs = [("torch.compile reduce-overhead (CUDA graphs)", {"compile": "reduce-overhead"}),
             ("fp8 (torchao float8 MLP + attention-output linears) + torch.compile", None),
             ("torch.compile default", {"compile": True})]
    if tuned:
        specs.append((f"torch.compile default + {', '.join(f'{k}={v}' for k, v in tuned.items())}",
                      {"compile": True, **tuned}))
    compile_ok = engine.device == "cuda" or smoke_compile
    for label, options in specs:
        prepare = None
        if options is None:  # the fp8 row
            options, prepare = {"compile": True, **tuned}, float8_linears
            try:
                import torchao  # noqa: F401
            except ImportError:
                rows.append({"row": label, "options": options, "cells_per_s": None,
                             "note": "skipped: torchao not importable"})
                continue
        if not compile_ok:
            rows.append({"row": label, "options": options, "cells_per_s": None, "note": "skipped: CPU smoke run"})
        elif not clock.fits(75):
            rows.append({"row": label, "options": options, "cells_per_s": None, "note": "skipped: time budget"})
        else:
            rows.append(engine.row(label, options, prepare=prepare))
    return rows


def float8_linears(model: Any) -> None:
    """torchao float8 (dynamic activations, per-row weights) on the MLP and attention-output linears.

    The query/key/value weights are concatenated in the forward pass (one product for q, k and v),
    which float8 weight tensors do not take part in, so they stay bf16: 3 of the 12 d x d products.
    """
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    model._match_precision()  # bf16 weights first, as the engine runs them
    quantize_(model.encoder, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear)
              and not fqn.endswith((".query", ".key", ".value")))


# ---------------------------------------------------------------------------------------------------- 5. end to end
def model_spec(args: argparse.Namespace, preset: str, options: dict[str, Any]) -> Any:
    """The run's model for workers: random weights with the preset variant's architecture and channels."""
    from subcell_scale.models import ModelConfig, ModelSpec, get_variant

    options = {k: v for k, v in options.items() if k != "precision"}
    if args.smoke:
        channels = get_variant(VARIANT[preset]).channels
        config = ModelConfig(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128,
                             num_channels=len(channels), pool_int_dim=32)
        return ModelSpec("random", config=config.to_dict(), n_classifiers=1,
                         options={"channels": list(channels), **options})
    return ModelSpec("random", variant=VARIANT[preset], n_classifiers=1, options=options)


def bare_rate(model: Any, plan_passes: int, size: int, batch: int, min_seconds: float) -> float:
    """Cells/s of ``model.embed`` on device crops shaped as the preset's (passes, channels, side), batched as a run."""
    import torch

    side = size // model.config.patch_size * model.config.patch_size  # what embed_crops gives the model
    per_batch = max(1, batch // plan_passes) * plan_passes
    cells = max(1, 4 * per_batch // plan_passes)
    x = torch.rand(cells, plan_passes, model.config.num_channels, side, side, device=model.device,
                   generator=torch.Generator(model.device).manual_seed(2))
    model.embed(x[: max(1, per_batch // plan_passes)], batch_size=per_batch, pool_attention=False)  # warm-up
    sync(model.device)
    n, t0 = 0, time.perf_counter()
    while True:
        model.embed(x, batch_size=per_batch, pool_attention=False)
        n += cells
        sync(model.device)
        if time.perf_counter() - t0 >= min_seconds:
            break
    return n / (time.perf_counter() - t0)


def end_to_end(args: argparse.Namespace, plates: dict[str, Any], root: Path, options: dict[str, Any],
               device: str, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """embed_plate cells/s per preset, in-process and on a one-worker GPU cluster, against the bare model.

    A preset that fails records its error and the other still runs; ``save`` is called after each step.
    """
    out: dict[str, Any] = {"engine_options": options, "batch_size": args.batch, "threads_per_worker": args.cores}
    cluster: dict[str, Any] = {"client": None}  # started by the first preset, closed here whatever happens
    try:
        for preset, geometry in GEOMETRY.items():
            entry: dict[str, Any] = {"fields": plates[geometry]["fields"],
                                     "in_process_fields": plates[geometry]["small_fields"]}
            out[preset] = entry
            try:
                _one_preset(args, preset, geometry, plates, root, options, device, entry, cluster, lambda: save(out))
            except Exception as exc:  # noqa: BLE001 - the other preset and the later steps still run
                entry["error"] = _error(exc)
                log(f"{preset}: end to end failed: {entry['error']}")
            save(out)
    finally:
        if cluster["client"] is not None:
            cluster["client"].close()
    return out


def _one_preset(args: argparse.Namespace, preset: str, geometry: str, plates: dict[str, Any], root: Path,
                options: dict[str, Any], device: str, entry: dict[str, Any], cluster: dict[str, Any],
                save: Callable[[], None]) -> None:
    """Bare rate, in-process run, cluster warm-up and timed cluster run of one preset (into ``entry``)."""
    import numpy as np
    import torch

    from subcell_scale.distributed import get_client
    from subcell_scale.io import open_plate
    from subcell_scale.models import get_variant
    from subcell_scale.params import RunParams
    from subcell_scale import embed_plate

    overrides = {"out_size": SMOKE_OUT_SIZE[preset]} if args.smoke else {}
    spec = model_spec(args, preset, options)
    model = spec.load(device)
    params = RunParams.resolve(preset, **overrides)
    plan = params.plan(open_plate(plates[geometry]["path"]), get_variant(VARIANT[preset]).channels)
    passes = len(plan.passes) if plan.multi_pass else 1
    entry["passes"] = passes
    entry["bare_cells_per_s"] = bare_rate(model, passes, params.crop.size, args.batch, args.min_seconds)
    log(f"{preset}: bare model {entry['bare_cells_per_s']:.0f} cells/s ({passes} pass(es) of "
        f"{params.crop.size} px, batch {args.batch})")

    plate = fresh_copy(plates[geometry]["small_path"], root, f"{geometry}-in-process")
    with GpuBusy(device == "cuda") as busy:
        t0 = time.perf_counter()
        local = embed_plate(plate, model, out=root / f"run-{geometry}-in-process", preset=preset,
                            batch_size=args.batch, progress=False, **overrides)
        seconds = time.perf_counter() - t0
    entry["in_process"] = {"cells": local.n_obs, "seconds": seconds, "cells_per_s": local.n_obs / seconds,
                           "ratio_to_bare": local.n_obs / seconds / entry["bare_cells_per_s"],
                           "gpu_busy_fraction": busy.fraction, "busy_source": busy.source}
    log(f"{preset}: in-process {local.n_obs} cells in {seconds:.1f} s = {local.n_obs / seconds:.0f} cells/s "
        f"(ratio {entry['in_process']['ratio_to_bare']:.2f}, GPU busy {_pct(busy.fraction)})")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    save()

    if cluster["client"] is None:
        t0 = time.perf_counter()
        cluster["client"] = get_client("local", n_workers=1, threads_per_worker=args.cores, dashboard=False)
        entry["cluster_start_s"] = time.perf_counter() - t0
    client = cluster["client"]
    warm = fresh_copy(plates[geometry]["small_path"], root, f"{geometry}-warm-run")
    t0 = time.perf_counter()
    warm_run = embed_plate(warm, spec, client=client, out=root / f"run-{geometry}-warm", preset=preset,
                           batch_size=args.batch, progress=False, **overrides)
    entry["cluster_warmup_s"] = time.perf_counter() - t0  # worker's model load, first kernels
    plate = fresh_copy(plates[geometry]["path"], root, f"{geometry}-cluster")
    with GpuBusy(device == "cuda") as busy:
        t0 = time.perf_counter()
        dist = embed_plate(plate, spec, client=client, out=root / f"run-{geometry}-cluster", preset=preset,
                           batch_size=args.batch, progress=False, **overrides)
        seconds = time.perf_counter() - t0
    entry["cluster"] = {"cells": dist.n_obs, "seconds": seconds, "cells_per_s": dist.n_obs / seconds,
                        "ratio_to_bare": dist.n_obs / seconds / entry["bare_cells_per_s"],
                        "gpu_busy_fraction": busy.fraction, "busy_source": busy.source}
    warm_cells = warm_run.n_obs  # the small plate, run in-process and on the cluster: the same cells
    rows = min(512, local.n_obs, warm_cells)
    same = list(local.obs_names[:rows]) == list(warm_run.obs_names[:rows])
    entry["cluster_vs_in_process"] = {
        "same_cells": bool(same and local.n_obs == warm_cells),
        "max_abs_diff_first_rows": float(np.abs(np.asarray(local.X[:rows]) - np.asarray(warm_run.X[:rows])).max())
        if same and rows else None}
    entry["kept_cells_per_field"] = dist.n_obs / max(1, entry["fields"])
    log(f"{preset}: 1-worker cluster {dist.n_obs} cells in {seconds:.1f} s = {dist.n_obs / seconds:.0f} cells/s "
        f"(ratio {entry['cluster']['ratio_to_bare']:.2f}, GPU busy {_pct(busy.fraction)}; warm-up run "
        f"{entry['cluster_warmup_s']:.1f} s)")
    del local, dist, warm_run


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


# ---------------------------------------------------------------------------------------------------- 7. projection
def projection(report: dict[str, Any], cores: int) -> dict[str, Any]:
    """Wall time of a 1M-cell JUMP plate on one GPU and on 8, from the measured end-to-end rate."""
    e2e = report["end_to_end"].get("jump-cellpainting", {})
    run = e2e.get("cluster") or e2e.get("in_process")
    seg = report["segmentation"].get("jump-cellpainting", {})
    plates = report["plates"].get("jump", {})
    if not run or not run.get("cells_per_s"):
        return {"note": "no end-to-end JUMP rate was measured"}
    per_field = e2e.get("kept_cells_per_field") or seg.get("kept_per_field") or 1
    hist_per_field = seg.get("plate_histogram_s_per_field", 0.0)
    # the measured run includes its own plate-histogram pass; a 1M-cell plate pays it once, added below
    run_hist = hist_per_field * (e2e.get("fields", 0) if run is e2e.get("cluster") else e2e.get("in_process_fields", 0))
    rate = run["cells"] / max(1e-9, run["seconds"] - run_hist)
    fields = JUMP_PLATE_CELLS / per_field
    histogram_s = hist_per_field * fields  # in the client, before any field runs
    one = JUMP_PLATE_CELLS / rate
    eight = one / 8
    fields_per_s = rate / per_field
    cpu_per_field = seg.get("cpu_s_per_field_before_model")
    cores_needed = fields_per_s * cpu_per_field if cpu_per_field else None
    engine_rows = [r for r in report["engine"].get("rows", []) if r.get("cells_per_s")]
    best = max(engine_rows, key=lambda r: r["cells_per_s"], default=None)
    used = report["engine"].get("end_to_end_engine", {})
    out = {
        "cells": JUMP_PLATE_CELLS, "passes": 3, "crop_px": 478, "from": "cluster" if e2e.get("cluster") else "in_process",
        "e2e_cells_per_s": run["cells_per_s"], "steady_cells_per_s": rate, "kept_cells_per_field": per_field, "fields": round(fields),
        "one_gpu_s": one, "one_gpu_min": one / 60, "one_gpu_target_min": 20, "one_gpu_meets_target": one / 60 < 20,
        "eight_gpus_s": eight, "eight_gpus_min": eight / 60, "eight_gpus_target_min": 5,
        "eight_gpus_meets_target": eight / 60 < 5,
        "plate_histogram_s": histogram_s,
        "one_gpu_with_histogram_min": (one + histogram_s) / 60, "eight_gpus_with_histogram_min": (eight + histogram_s) / 60,
        "engine_bound_one_gpu_min": JUMP_PLATE_CELLS / e2e["bare_cells_per_s"] / 60 if e2e.get("bare_cells_per_s") else None,
        "fields_per_s_per_gpu": fields_per_s, "cpu_s_per_field": cpu_per_field,
        "cores_needed_per_gpu": cores_needed, "cores_per_gpu_here": cores,
        "disk_mb_per_s_eight_gpus": 8 * fields_per_s * plates.get("disk_mb_per_field", 0.0),
        "scheduler_fields_per_s_eight_gpus": 8 * fields_per_s,
    }
    if best and used.get("cells_per_s") and e2e.get("bare_cells_per_s"):
        speedup = best["cells_per_s"] / used["cells_per_s"]
        out["with_fastest_engine_row"] = {"row": best["row"], "speedup_over_e2e_engine": speedup,
                                          "one_gpu_min_if_ratio_holds": one / speedup / 60}
    out["scaling"] = (
        f"linear over 8 GPUs (one worker each) holds while each GPU has >= {_num(cores_needed)} CPU cores for "
        f"reading and segmenting its {fields_per_s:.1f} fields/s (this machine: {cores}), storage delivers "
        f"{out['disk_mb_per_s_eight_gpus']:.0f} MB/s of compressed fields, and the one Dask scheduler keeps up "
        f"with {out['scheduler_fields_per_s_eight_gpus']:.0f} fields/s (a few tasks each); the JUMP preset's plate "
        f"histogram ({histogram_s:.0f} s over every field, in the client before any field runs) does not shrink "
        "with GPUs, nor do worker start-up and model loading")
    return out


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------------------------------------------- summary
def summary(report: dict[str, Any]) -> Iterator[str]:
    engine = report["engine"]
    yield f"\ndevice {report['meta'].get('device')}, torch {report['meta'].get('torch')}, total {report['meta'].get('total_s', 0):.0f} s"
    yield f"\n{'engine row':<64}{'cells/s':>9}{'vs default':>11}{'cos worst':>11}  note"
    default = next((r["cells_per_s"] for r in engine.get("rows", []) if r["row"].startswith("engine default (")), None)
    for r in engine.get("rows", []):
        cps = r.get("cells_per_s")
        rel = f"{cps / default:.2f}x" if cps and default else "-"
        cos = f"{r['cosine_worst']:.5f}" if "cosine_worst" in r else "-"
        yield f"{r['row'][:63]:<64}{(f'{cps:.0f}' if cps else '-'):>9}{rel:>11}{cos:>11}  {r.get('note', '')[:60]}"
    for preset in GEOMETRY:
        e = report["end_to_end"].get(preset)
        if not isinstance(e, dict) or "bare_cells_per_s" not in e:
            continue
        for mode in ("in_process", "cluster"):
            if mode in e:
                m = e[mode]
                yield (f"{preset:<18} {mode:<11} {m['cells_per_s']:8.0f} cells/s  ratio {m['ratio_to_bare']:.2f} "
                       f"(bare {e['bare_cells_per_s']:.0f})  GPU busy {_pct(m['gpu_busy_fraction'])}")
    for preset, c in report["crops"].items():
        if isinstance(c, dict) and "device_ms_per_cell" in c:
            yield f"crops {preset:<18} {c['device_ms_per_cell']:.3f} ms/cell on {report['crops']['device']}"
    for preset, s in report["segmentation"].items():
        if isinstance(s, dict) and "segment_s_per_field" in s:
            yield f"segmentation {preset:<18} {s['segment_s_per_field']:.2f} s/field ({s['kept_per_field']:.0f} cells kept)"
    p = report["projection"]
    if "one_gpu_min" in p:
        yield (f"1M-cell JUMP plate: {p['one_gpu_min']:.1f} min on one GPU (target 20), {p['eight_gpus_min']:.1f} min "
               f"on 8 (target 5); + {p['plate_histogram_s'] / 60:.1f} min plate histogram in the client")
        yield p["scaling"]


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and plates: checks the script")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke, also run the compile rows")
    parser.add_argument("--out", default=None, help="folder for gpu_plate.json (default: the summary is only printed)")
    parser.add_argument("--batch", type=int, default=None, help="crops per forward pass (default 256; smoke 8)")
    parser.add_argument("--size", type=int, default=448, help="engine-table crop side in px")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="processes writing plates and threads of the cluster's worker (default: every core)")
    parser.add_argument("--jump-wells", type=int, default=None, help="JUMP-geometry wells (default 11; smoke 4)")
    parser.add_argument("--jump-fields", type=int, default=None, help="fields per JUMP well (default 9; smoke 1)")
    parser.add_argument("--hpa-wells", type=int, default=None, help="HPA-geometry wells (default 16; smoke 4)")
    parser.add_argument("--hpa-fields", type=int, default=None, help="fields per HPA well (default 4; smoke 1)")
    parser.add_argument("--small-fields", type=int, default=None,
                        help="fields per well of the 4-well plates run in-process and warming the cluster up "
                             "(default 6; smoke 1)")
    parser.add_argument("--seg-fields", type=int, default=None, help="fields timed per geometry (default 6; smoke 2)")
    parser.add_argument("--min-seconds", type=float, default=None, help="timed seconds per engine row (default 3)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="optional engine rows (compile, fp8) are skipped past this many seconds")
    parser.add_argument("--e2e-engine", choices=("fastest-eager", "default"), default="fastest-eager",
                        help="engine options of the end-to-end runs")
    args = parser.parse_args(argv)
    defaults = ({"batch": 8, "jump_wells": 4, "jump_fields": 1, "hpa_wells": 4, "hpa_fields": 1, "small_fields": 1,
                 "seg_fields": 2, "min_seconds": 0.05} if args.smoke else
                {"batch": 256, "jump_wells": 11, "jump_fields": 9, "hpa_wells": 16, "hpa_fields": 4, "small_fields": 6,
                 "seg_fields": 6, "min_seconds": 3.0})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.cores = min(args.cores, 2)
    return args


def run_steps(args: argparse.Namespace, report: Report, clock: Clock, root: Path, device: str) -> None:
    """The steps in order; one that fails records its error and the steps that do not need it still run."""
    def attempt(section: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - one long run: keep every figure that can be had
            report.set(section, {"note": f"failed: {_error(exc)}"})
            log(f"{section} failed: {_error(exc)}")
            return None

    plates = attempt("plates", lambda: write_plates(args, root))
    kept, fidelity_crops = None, None
    if plates is not None:
        report.set("plates", plates)
        measured = attempt("segmentation", lambda: measure_segmentation(args, plates))
        if measured is not None:
            report.set("segmentation", measured[0])
            kept = measured[1]
    if kept is not None:
        fields = kept
        measured = attempt("crops", lambda: measure_crops(args, fields, device))
        if measured is not None:
            report.set("crops", measured[0])
            fidelity_crops = measured[1]
        kept = fields = None  # the fields' pixels are no longer needed

    engine = attempt("engine", lambda: Engine(args, device, fidelity_crops))
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {"row": EAGER_ROWS[1][0], "options": {}}  # the default engine
    if engine is not None:
        table = {"batch": args.batch, "size": engine.size, "fidelity_inputs": engine.fidelity_source,
                 "fidelity_reference": "fp32 engine default", "rows": rows}
        for label, options, reference in EAGER_ROWS:
            rows.append(engine.row(label, options, reference=reference))
            report.set("engine", table)
        if args.e2e_engine == "fastest-eager":
            chosen = best_eager(rows)
        table["end_to_end_engine"] = {"row": chosen["row"], "cells_per_s": next(
            (r["cells_per_s"] for r in rows if r["row"] == chosen["row"]), None), "options": chosen["options"]}
        report.set("engine", table)

    if plates is not None:
        attempt("end_to_end", lambda: end_to_end(args, plates, root, chosen["options"], device,
                                                 lambda partial: report.set("end_to_end", partial)))
    # projected now, in case the run is stopped during the optional rows; again once they are in
    attempt("projection", lambda: report.set("projection", projection(report.data, args.cores)))
    if engine is not None:
        rows.extend(optional_rows(engine, clock, rows, args.smoke_compile))
        report.save()
        attempt("projection", lambda: report.set("projection", projection(report.data, args.cores)))
    del engine


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; --smoke runs the script on the CPU")
    device = "cpu" if args.smoke else "cuda"
    report = Report(args.out)
    meta = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
            "cores": args.cores, "smoke": args.smoke, "args": vars(args)}
    with contextlib.suppress(ImportError):
        import torchao

        meta["torchao"] = torchao.__version__
    report.set("meta", meta)
    root = Path(tempfile.mkdtemp(prefix="gpu-plate-"))
    try:
        run_steps(args, report, clock, root, device)
    finally:
        report.data["meta"]["total_s"] = clock.elapsed()
        report.save()
        shutil.rmtree(root, ignore_errors=True)
    for line in summary(report.data):
        print(line)


if __name__ == "__main__":
    main()
