"""CPU cost per cell of everything around the model: read, decode, labels, filter, crop, mask, normalise.

Writes a small HPA-like (or, with ``--preset jump-cellpainting``, Cell Painting) demo plate, then for each
output size times, on one core, the per-field work a pipeline worker does before the model sees a batch,
and reports milliseconds per cell. The numpy path (:func:`extract_cells`) and the torch path on the CPU
(:func:`extract_cells_torch`) are timed on the same fields in the same run, and with ``--baseline REV``
the torch path of ``subcell_scale/cells.py`` as it was at git revision REV too (geometry only: the
preset's intensity keys are not passed to it); segmentation (only needed when a plate has no labels) is
timed per field. Times are CPU seconds of this single-threaded process (``time.process_time``), i.e. per
core, so a busy machine inflates them less than wall-clock times; wall-clock figures are printed beside
them.

    python3 benchmarks/bench_cells.py [--wells 4] [--fields 2] [--field-size 1024] [--cells-per-field 40]
        [--sizes 64 448] [--preset hpa|jump-cellpainting] [--baseline REV] [--save-field FIELD.npz]
    python3 benchmarks/bench_cells.py --field FIELD.npz --device cuda   # crops only, CPU numpy vs device
    python3 benchmarks/bench_cells.py --quality 12                      # segmentation vs ground truth
    python3 benchmarks/bench_cells.py --hpa-real DIR [--set cell_threshold=li]  # real HPA vs its masks

With ``--field`` no plate is written (for a GPU machine without the I/O stack): one saved field is cropped
``--copies`` times by the numpy path on one core and by the torch path on ``--device``, host-to-device
transfer of the raw field included, synchronised before the clock stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, so the figures are per core

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=4)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--field-size", type=int, default=1024)
    parser.add_argument("--cells-per-field", type=int, default=40,
                        help="cells asked of the demo generator (HPA fields hold 20-60 at 2048 px, 0.08 um/px)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 448])
    parser.add_argument("--preset", default=None, help="crop spec of this preset (default: CropSpec() defaults)")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also time extract_cells_torch of subcell_scale/cells.py at this git revision")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes over the plate")
    parser.add_argument("--save-field", default=None, metavar="NPZ", help="also save the first field for --field")
    parser.add_argument("--field", default=None, metavar="NPZ", help="time crops on this saved field only")
    parser.add_argument("--device", default="cpu", help="torch device for extract_cells_torch with --field")
    parser.add_argument("--copies", type=int, default=8, help="passes over the saved field with --field")
    parser.add_argument("--quality", type=int, default=0, metavar="WELLS",
                        help="only score segment_field against the demo's ground truth on plates of this many "
                             "wells x --fields fields (default-layout HPA and Cell Painting demo plates, 512 px)")
    parser.add_argument("--hpa-real", default=None, metavar="DIR",
                        help="only score segment_field on real HPA fields (images/*_{red,yellow,blue,green}.png) "
                             "against their masks/*_predictedmask.png, at 0.0800885 um/px")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="segmentation parameter for --hpa-real")
    args = parser.parse_args()
    if args.hpa_real:
        real_hpa_agreement(args)
        return
    if args.field:
        crops_only(args)
        return
    if args.quality:
        segmentation_quality(args)
        return

    import torch

    torch.set_num_threads(1)
    from subcell_scale.cells import extract_cells, extract_cells_torch
    from subcell_scale.io import make_demo_plate, open_plate
    from subcell_scale.segment import filter_cells, segment_field

    baseline = load_baseline(args.baseline) if args.baseline else None
    cellpainting = args.preset == "jump-cellpainting"
    with tempfile.TemporaryDirectory() as tmp:
        path = make_demo_plate(tmp, n_plates=1, n_wells=args.wells, n_fields=args.fields,
                               field_size=args.field_size, cells_per_field=args.cells_per_field,
                               cellpainting=cellpainting)[0]
        plate = open_plate(path)
        sites = [(w, f) for w in plate.wells for f in plate.fields(w)]
        pixel_size = plate.pixel_size
        if args.save_field:  # with the preset's passes and plate bounds, for --field --preset on a GPU machine
            w, f = sites[0]
            _, extra = crop_setup(args.preset, args.sizes[0], plate, Path(tmp))
            np.savez(args.save_field, image=plate.read_field(w, f), labels=plate.read_labels(w, f, "cells"),
                     pixel_size=np.asarray(pixel_size), **{k: np.asarray(v) for k, v in extra.items()})
        print(f"plate {plate.name}: {len(sites)} fields of {args.field_size} px at {pixel_size[0]} um/px, "
              f"channels {plate.channel_names}; preset {args.preset or 'none'}; 1 thread")

        def prepare(well: str, field: str) -> tuple[np.ndarray, np.ndarray]:
            image = plate.read_field(well, field)
            labels, _ = filter_cells(plate.read_labels(well, field, "cells"), pixel_size)
            return image, labels

        for w, f in sites:  # warm-up: imports, metadata and the OS file cache
            prepare(w, f)
        cpu, wall = time.process_time(), time.perf_counter()
        n_read = 0
        for w, f in sites:
            _, labels = prepare(w, f)
            n_read += int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
        cpu, wall = (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
        print(f"cells kept after filter_cells: {n_read}; read + decode + labels + filter alone: "
              f"{cpu / n_read:.2f} ms/cell CPU ({wall / n_read:.2f} wall)")

        results = {}
        for size in args.sizes:
            spec, kwargs = crop_setup(args.preset, size, plate, Path(tmp))
            paths = [("numpy", extract_cells, spec, kwargs), ("torch-cpu", extract_cells_torch, spec, kwargs)]
            if baseline is not None:
                paths.append(("baseline", baseline.extract_cells_torch, baseline_spec(baseline, spec),
                              {"channels": kwargs.get("channels")}))
            for name, fn, fn_spec, fn_kwargs in paths:
                fn(*prepare(*sites[0]), pixel_size, fn_spec, **fn_kwargs)  # warm-up
                best, best_wall = np.inf, np.inf
                for _ in range(args.repeats):
                    cpu, wall = time.process_time(), time.perf_counter()
                    n_cells = 0
                    for w, f in sites:
                        image, labels = prepare(w, f)
                        _, table = fn(image, labels, pixel_size, fn_spec, **fn_kwargs)
                        n_cells += len(table)
                    best = min(best, (time.process_time() - cpu) * 1e3 / n_cells)
                    best_wall = min(best_wall, (time.perf_counter() - wall) * 1e3 / n_cells)
                results[(size, name)] = best
                print(f"out {size:4d} px, window {spec.window(pixel_size)[0]} px, {name:9s}: "
                      f"{best:6.2f} ms/cell CPU ({best_wall:6.2f} wall) end to end (read..normalise), {n_cells} cells")
        for size in args.sizes:
            ratio = results[(size, "torch-cpu")] / results[(size, "numpy")]
            line = f"out {size} px: torch-cpu / numpy time = {ratio:.2f}"
            if baseline is not None:
                line += f"; torch-cpu / baseline torch-cpu ({args.baseline}) = " \
                        f"{results[(size, 'torch-cpu')] / results[(size, 'baseline')]:.2f}"
            print(line)
        if len(args.sizes) > 1:
            lo, hi = min(args.sizes), max(args.sizes)
            print(f"numpy {hi} px / {lo} px time = {results[(hi, 'numpy')] / results[(lo, 'numpy')]:.2f}")

        cpu = time.process_time()
        for w, f in sites[:4]:
            segment_field(plate.read_field(w, f), plate.channel_names, pixel_size)
        seg_ms = (time.process_time() - cpu) * 1e3 / min(4, len(sites))
        print(f"segment_field (only without stored labels): {seg_ms:.0f} ms/field CPU, "
              f"{seg_ms * len(sites) / n_read:.1f} ms/cell")


def crop_setup(preset: str | None, size: int, plate, tmp: Path):
    """The crop spec for ``size`` px and the keyword arguments the crop functions need on ``plate``."""
    from subcell_scale.cells import CropSpec

    if preset is None:
        return CropSpec(out_size=size), {}
    from subcell_scale.params import RunParams
    from subcell_scale.pipeline.jobs import plate_upper_bounds

    params = RunParams.resolve(preset, out_size=size)
    model = ("er", "nucleus", "protein") if preset == "jump-cellpainting" else None
    kwargs = {"channels": params.plan(plate, model).passes}
    bounds = plate_upper_bounds(plate, params.crop, tmp / "intensity")
    if bounds is not None:
        kwargs["plate_upper"] = bounds
    return params.crop, kwargs


def load_baseline(revision: str):
    """``subcell_scale/cells.py`` at a git revision, imported beside the package (for timing only)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{revision}:subcell_scale/cells.py"], check=True,
                            capture_output=True, text=True).stdout
    target = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "cells.py"
    target.write_text(source)
    spec = importlib.util.spec_from_file_location("subcell_scale._baseline_cells", target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def baseline_spec(baseline, spec):
    """The baseline's CropSpec with the geometry fields it knows."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(baseline.CropSpec)}
    return baseline.CropSpec(**{k: v for k, v in dataclasses.asdict(spec).items() if k in known})


def crops_only(args: argparse.Namespace) -> None:
    """Crop one saved field on the CPU (numpy, one core) and on ``args.device`` (torch)."""
    import torch

    torch.set_num_threads(1)
    from subcell_scale.cells import CropSpec, extract_cells, extract_cells_torch
    from subcell_scale.segment import filter_cells

    saved = np.load(args.field)
    image, pixel_size = saved["image"], tuple(saved["pixel_size"].tolist())
    labels, _ = filter_cells(saved["labels"], pixel_size)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"field {image.shape} {image.dtype}, {len(np.unique(labels)) - 1} cells, device {name}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    baseline = load_baseline(args.baseline) if args.baseline else None
    extra = {k: saved[k].tolist() for k in ("channels", "plate_upper") if k in saved}

    def device_ms(fn, spec, **kwargs) -> float:
        fn(image, labels, pixel_size, spec, device=device, **kwargs)  # warm-up
        sync()
        wall = time.perf_counter()
        for _ in range(args.copies):
            fn(image, labels, pixel_size, spec, device=device, **kwargs)
        sync()
        return (time.perf_counter() - wall) * 1e3 / args.copies

    for size in args.sizes:
        if args.preset is None:
            spec = CropSpec(out_size=size)
        else:
            from subcell_scale.params import RunParams

            spec = RunParams.resolve(args.preset, out_size=size).crop
        ref, table = extract_cells(image, labels, pixel_size, spec, **extra)
        out, _ = extract_cells_torch(image, labels, pixel_size, spec, device=device, **extra)
        sync()
        error = float(np.abs(out.float().cpu().numpy() - ref).max())
        cpu = time.process_time()
        for _ in range(args.copies):
            extract_cells(image, labels, pixel_size, spec, **extra)
        cpu_ms = (time.process_time() - cpu) * 1e3 / (args.copies * len(table))
        dev_ms = device_ms(extract_cells_torch, spec, **extra) / len(table)
        line = (f"out {size:4d} px: numpy {cpu_ms:7.3f} ms/cell CPU, torch on {device.type} {dev_ms:7.3f} ms/cell "
                f"wall, ratio numpy/torch = {cpu_ms / dev_ms:.1f}; max |diff| = {error:.2e}")
        if baseline is not None:
            base_ms = device_ms(baseline.extract_cells_torch, baseline_spec(baseline, spec),
                                channels=extra.get("channels")) / len(table)
            line += f"; baseline ({args.baseline}) {base_ms:7.3f} ms/cell, ratio baseline/new = {base_ms / dev_ms:.1f}"
        print(line)


def segmentation_quality(args: argparse.Namespace) -> None:
    """F1 at IoU 0.5 and mean IoU of matched cells, classical segmentation vs the demo's true cells."""
    from subcell_scale.io import make_demo_plate, open_plate
    from subcell_scale.segment import match_scores, segment_field

    with tempfile.TemporaryDirectory() as tmp:
        for cellpainting in (False, True):
            path = make_demo_plate(tmp, n_plates=1, n_wells=args.quality, n_fields=args.fields, field_size=512,
                                   cellpainting=cellpainting, seed=11)[0]
            plate = open_plate(path)
            matched = true = predicted = 0
            ious, seconds = [], 0.0
            for well in plate.wells:
                for field in plate.fields(well):
                    cpu = time.process_time()
                    labels = segment_field(plate.read_field(well, field), plate.channel_names, plate.pixel_size)
                    seconds += time.process_time() - cpu
                    scores = match_scores(labels, plate.read_labels(well, field, "cells"))
                    matched += scores["n_matched"]
                    true += scores["n_true"]
                    predicted += scores["n_predicted"]
                    ious.append(scores["mean_iou"] * scores["n_matched"])
            n_fields = sum(len(plate.fields(w)) for w in plate.wells)
            print(f"{'cellpainting' if cellpainting else 'hpa':12s} {n_fields} fields, {true} true cells: "
                  f"F1@0.5 {2 * matched / (true + predicted):.3f}, precision {matched / predicted:.3f}, "
                  f"recall {matched / true:.3f}, mean IoU of matched {sum(ious) / matched:.3f}, "
                  f"{seconds / n_fields * 1e3:.0f} ms/field CPU")


def real_hpa_agreement(args: argparse.Namespace) -> None:
    """Agreement of classical segmentation with the HPA cell segmenter's masks on real HPA fields."""
    from pathlib import Path

    import imageio.v3 as iio

    from subcell_scale.segment import match_scores, segment_field

    params: dict[str, float | str] = {}
    for item in args.params:
        key, _, value = item.partition("=")
        try:
            params[key] = float(value)
        except ValueError:
            params[key] = value
    root = Path(args.hpa_real)
    masks = sorted((root / "masks").glob("*_predictedmask.png"))
    matched = true = predicted = 0
    iou_sum = 0.0
    for mask_path in masks:
        image_id = mask_path.name.split("_")[0]
        image = np.stack([iio.imread(root / "images" / f"{image_id}_{c}.png")
                          for c in ("red", "yellow", "blue", "green")])
        labels = segment_field(image, ["microtubules", "er", "dna", "protein"], 0.0800885, **params)
        scores = match_scores(labels, iio.imread(mask_path))
        matched += scores["n_matched"]
        true += scores["n_true"]
        predicted += scores["n_predicted"]
        iou_sum += scores["mean_iou"] * scores["n_matched"]
        print(f"{image_id[:8]} {image.shape[1]}x{image.shape[2]}: F1 {scores['f1']:.3f}, "
              f"{scores['n_predicted']} predicted / {scores['n_true']} reference cells")
    print(f"{len(masks)} real HPA fields {params or ''}: F1@0.5 {2 * matched / (true + predicted):.3f}, "
          f"mean IoU of matched {iou_sum / max(matched, 1):.3f} ({true} reference cells, {predicted} predicted)")


if __name__ == "__main__":
    main()
