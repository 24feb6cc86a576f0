"""GPU benchmark of the SubCell engine (ViT-B/16, 448 px), printed as one table.

Rows: cells/s and peak GPU memory at batch 64/128/256 for this engine in fp32 and bf16, the same for a
reference-style forward (eager attention keeping every layer's probabilities, as SubCellPortable),
optional torch.compile rows (``--compile``, ``--compile-modes``), with ``--explore`` each SDPA backend,
TF32 and the top CUDA kernels, and ``embed()`` end to end from uint16 host crops. Then how far bf16
moves the embeddings against fp32, GPU fp32 against CPU fp32, and the tiny reference fixture on the
GPU. About 70 s on an H200 (plus ~15 s per compile mode); ``--smoke`` runs a tiny config on the CPU in
seconds to check the script itself.

    python3 benchmarks/gpu_engine.py                 # on a CUDA machine
    python3 benchmarks/gpu_engine.py --compile       # add the torch.compile row
    python3 benchmarks/gpu_engine.py --smoke         # quick check anywhere
    python3 benchmarks/gpu_engine.py --options --device cpu --layers 2 --batch 4   # engine options, any device

``--options`` times only the engine options of ``SubCell`` (SDPA kernel, patch embedding, padded batches,
torch.compile modes) against the default engine, in interleaved rounds (every row once per round, the
median of the per-round ratios reported), so that a machine shared with other work moves all rows alike.
On a CPU it runs fp32 with the kernels the CPU has; ``benchmarks/gpu_plate.py`` times the same options
on a GPU within the full plate run.

Measured on one NVIDIA H200 (torch 2.11, cu130), bf16: 2470 cells/s eager, 2640-2660 with
torch.compile; reference-style 925 (bf16) and 248 (fp32); bf16 vs fp32 embeddings: relative Frobenius
error 5.8e-3, min cosine 0.99998.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from subcell_scale.models import ModelConfig, SubCell  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: SubCell, x: torch.Tensor, *, min_seconds: float, reference: bool = False) -> dict:
    """Cells/s of ``model(x)`` (input already on the device) and the peak memory of one pass."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        try:
            model(x, return_attentions=reference)  # warm-up (and compile)
            sync(device)
            n, t0 = 0, time.perf_counter()
            while True:
                model(x, return_attentions=reference)
                n += 1
                sync(device)
                if time.perf_counter() - t0 >= min_seconds and n >= 2:
                    break
            elapsed = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            return {"cells_per_s": None, "peak_gib": None, "note": "OOM"}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"cells_per_s": n * x.shape[0] / elapsed, "peak_gib": peak, "note": ""}


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double().cpu(), b.double().cpu()
    diff = (a - b).abs()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs": diff.max().item(), "max_rel": (diff.max() / b.abs().max()).item(),
            "rel_fro": ((a - b).norm() / b.norm()).item(), "min_cosine": cos.min().item()}


def fixture_check(device: torch.device) -> str:
    tiny = ROOT / "tests" / "data" / "subcell" / "tiny_rybg"
    if not tiny.is_dir():
        return "fixture: not found"
    model = SubCell.from_checkpoint(tiny / "encoder.pth", [tiny / f"classifier_seed_{k}.pth" for k in (0, 1)],
                                    device, num_heads=4, precision="fp32")
    worst = {}
    for size in (64, 96):
        with torch.inference_mode():
            out = model(torch.from_numpy(np.load(tiny / f"input_{size}.npy")).to(device))
        worst[f"pool_op_{size}"] = float(np.abs(out.embedding.cpu().numpy() - np.load(tiny / f"out{size}_pool_op.npy")).max())
        worst[f"prob_{size}"] = float(np.abs(out.probabilities.cpu().numpy()
                                             - np.load(tiny / f"out{size}_probabilities.npy")).max())
    ok = all(v < (1e-4 if k.startswith("pool") else 1e-6) for k, v in worst.items())
    return f"fixture on {device.type} fp32: {'PASS' if ok else 'FAIL'} " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())


OPTION_ROWS: list[tuple[str, dict]] = [
    ("default (SDPA auto, unfold)", {}),
    ("attention_backend=flash", {"attention_backend": "flash"}),
    ("attention_backend=math", {"attention_backend": "math"}),
    ("attention_backend=cudnn", {"attention_backend": "cudnn"}),
    ("attention_backend=efficient", {"attention_backend": "efficient"}),
    ("patch_embedding=conv", {"patch_embedding": "conv"}),
    ("patch_embedding=channels-last", {"patch_embedding": "channels-last"}),
    ("compile=True", {"compile": True}),
    ("compile=reduce-overhead (padded)", {"compile": "reduce-overhead"}),
]


def option_table(args: argparse.Namespace) -> None:
    """Each engine option against the default, same weights and input, interleaved rounds; medians of ratios."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = ModelConfig(num_layers=args.layers)
    precision = "bf16" if device.type == "cuda" else "fp32"
    state = SubCell.random(config, seed=0, n_classifiers=1, device="cpu", precision="fp32").state_dict()
    x = torch.rand(args.batch, config.num_channels, args.size, args.size, device=device,
                   generator=torch.Generator(device).manual_seed(1))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}, torch {torch.__version__}, ViT-B width x {config.num_layers} layers, {args.size} px, "
          f"batch {args.batch}, {precision}, {args.rounds} rounds", flush=True)
    models, notes, reference = {}, {}, None
    for label, options in OPTION_ROWS:
        model = SubCell(config, n_classifiers=1, device=device, precision=precision, **options)
        model.load_state_dict(state)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(3):  # warm-up, compilation, graph recording
                    out = model(x).embedding
            sync(device)
            notes[label] = f"warm-up {time.perf_counter() - t0:.1f} s"
        except Exception as exc:  # noqa: BLE001 - a kernel the device lacks is a row note
            notes[label] = " ".join(str(exc).split())[:90]
            continue
        if reference is None:
            reference = out
        acc = compare(out, reference)
        notes[label] += f", max rel {acc['max_rel']:.1e} vs default"
        models[label] = model
    seconds: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for label, model in models.items():
                t0 = time.perf_counter()
                for _ in range(args.iterations):
                    model(x)
                sync(device)
                seconds[label].append((time.perf_counter() - t0) / args.iterations)
    base = seconds[OPTION_ROWS[0][0]]
    print(f"\n{'engine option':<36}{'cells/s':>9}{'speed vs default':>18}  note")
    for label, _ in OPTION_ROWS:
        if label not in seconds:
            print(f"{label:<36}{'-':>9}{'-':>18}  {notes[label]}")
            continue
        ratios = [b / t for b, t in zip(base, seconds[label])]
        rate = args.batch / statistics.median(seconds[label])
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{label:<36}{rate:>9.1f}{statistics.median(ratios):>10.2f}x ({spread})  {notes[label]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny config, small batches, runs on the CPU")
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--compile", action="store_true", help="add torch.compile bf16 rows")
    parser.add_argument("--compile-modes", default="default",
                        help="comma-separated torch.compile modes for --compile (default, reduce-overhead, ...)")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="only the bf16 engine rows (plus --compile / --explore): for quick comparisons")
    parser.add_argument("--explore", action="store_true",
                        help="also time each SDPA backend and TF32, and print the top CUDA kernels")
    parser.add_argument("--min-seconds", type=float, default=1.5, help="timed seconds per row")
    parser.add_argument("--max-seconds", type=float, default=170, help="skip rows after this many seconds")
    parser.add_argument("--options", action="store_true", help="only the engine-option table (see above)")
    parser.add_argument("--device", default=None, help="--options: torch device (default CUDA when present)")
    parser.add_argument("--layers", type=int, default=12, help="--options: ViT layers (12 is ViT-B)")
    parser.add_argument("--batch", type=int, default=256, help="--options: crops per forward pass")
    parser.add_argument("--rounds", type=int, default=5, help="--options: interleaved rounds")
    parser.add_argument("--iterations", type=int, default=3, help="--options: forward passes per row and round")
    args = parser.parse_args()
    if args.options:
        option_table(args)
        return
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        config = ModelConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, pool_int_dim=32)
        batches, size, min_seconds = [2, 4], 64, 0.05
    else:
        config = ModelConfig()
        batches, size, min_seconds = [int(b) for b in args.batches.split(",")], args.size, args.min_seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, config hidden {config.hidden_size} x {config.num_layers} "
          f"layers, {size} px", flush=True)

    base = SubCell.random(config, seed=0, n_classifiers=1, device="cpu", precision="fp32")
    engines = {p: copy.deepcopy(base).to(device) for p in ("bf16", "fp32")}
    references = {p: copy.deepcopy(base).to(device) for p in ("bf16", "fp32")}
    for p in ("bf16", "fp32"):
        engines[p].precision = references[p].precision = p
        references[p].encoder.attention_impl = "eager"
    rows = []

    def row(label: str, model: SubCell, batch: int, ref: bool = False, context=None) -> None:
        if time.perf_counter() - start > args.max_seconds:
            rows.append({"row": label, "precision": model.precision, "batch": batch, "cells_per_s": None,
                         "peak_gib": None, "note": "skipped (time)"})
            return
        x = torch.rand(batch, config.num_channels, size, size, device=device,
                       generator=torch.Generator(device).manual_seed(batch))
        with context or contextlib.nullcontext():
            r = time_forward(model, x, min_seconds=min_seconds, reference=ref)
        del x
        rows.append({"row": label, "precision": model.precision, "batch": batch, **r})
        print(json.dumps(rows[-1]), flush=True)

    for p in ("bf16",) if args.skip_baselines else ("bf16", "fp32"):
        for batch in batches:
            row("engine (SDPA)", engines[p], batch)
    for p in () if args.skip_baselines else ("bf16", "fp32"):
        for batch in batches:
            row("reference-style (eager, all attn)", references[p], batch, ref=True)
    del references

    # accuracy of reduced precision against fp32, same weights and inputs
    x = torch.rand(min(batches[0], 32), config.num_channels, size, size, device=device,
                   generator=torch.Generator(device).manual_seed(7))
    with torch.inference_mode():
        ref32 = engines["fp32"](x)
        low = engines["bf16"](x)
    accuracy = {"bf16": compare(low.embedding, ref32.embedding),
                "bf16 probabilities": compare(low.probabilities, ref32.probabilities)}
    if device.type == "cuda":
        with torch.inference_mode():
            cpu32 = base(x[:2].cpu())
        accuracy["GPU fp32 vs CPU fp32"] = compare(ref32.embedding[:2], cpu32.embedding)

    if args.explore and device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            row(f"engine, SDPA backend {backend.name.lower()}", engines["bf16"], batches[-1], context=sdpa_kernel(backend))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        row("engine fp32 with TF32 matmuls", engines["fp32"], batches[-1])
        torch.backends.cuda.matmul.allow_tf32 = False
        from torch.profiler import ProfilerActivity, profile

        xb = torch.rand(batches[1] if len(batches) > 1 else batches[0], config.num_channels, size, size, device=device)
        with torch.inference_mode():
            engines["bf16"](xb)
            sync(device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                engines["bf16"](xb)
                sync(device)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=70))
        del xb

    for mode in args.compile_modes.split(",") if args.compile else ():
        label = f"engine + torch.compile ({mode})"
        if time.perf_counter() - start > args.max_seconds - 90:
            rows.append({"row": label, "precision": "bf16", "batch": batches[-1], "cells_per_s": None,
                         "peak_gib": None, "note": "skipped (time)"})
            continue
        t0 = time.perf_counter()
        compiled = SubCell(config, n_classifiers=1, device=device, precision="bf16",
                           compile=True if mode == "default" else mode)
        compiled.load_state_dict(base.state_dict())
        with torch.inference_mode():
            out = compiled(x)
        accuracy[f"bf16 + torch.compile ({mode})"] = compare(out.embedding, ref32.embedding)
        print(f"torch.compile ({mode}) warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        row(label, compiled, batches[-1])
        del compiled, out
    engine = engines["bf16"]
    del engines["fp32"]

    # embed(): uint16 host crops -> normalisation on the device -> numpy results
    n_crops = batches[-1] * 2
    crops = np.random.default_rng(0).integers(0, 65535, (n_crops, config.num_channels, size, size), dtype=np.uint16)
    engine.embed(crops[: batches[-1]], batch_size=batches[-1])
    t0 = time.perf_counter()
    engine.embed(crops, batch_size=batches[-1])
    rows.append({"row": "embed() uint16 host crops", "precision": "bf16", "batch": batches[-1],
                 "cells_per_s": n_crops / (time.perf_counter() - t0), "peak_gib": None, "note": "incl. H2D + D2H"})

    print(f"\n{'row':<44}{'precision':>10}{'batch':>7}{'cells/s':>10}{'peak GiB':>10}  note")
    for r in rows:
        cps = f"{r['cells_per_s']:.0f}" if r["cells_per_s"] else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None and r["peak_gib"] == r["peak_gib"] else "-"
        print(f"{r['row']:<44}{r['precision']:>10}{r['batch']:>7}{cps:>10}{peak:>10}  {r['note']}")
    best = {}
    for r in rows:
        if r["cells_per_s"] and r["batch"] in batches and r["row"] in ("engine (SDPA)", "reference-style (eager, all attn)"):
            key = (r["row"], r["precision"])
            best[key] = max(best.get(key, 0), r["cells_per_s"])
    for precision in ("bf16", "fp32"):
        e = best.get(("engine (SDPA)", precision))
        ref = best.get(("reference-style (eager, all attn)", precision))
        if e and ref:
            print(f"speed-up over reference-style, best batch, {precision}: {e / ref:.2f}x")
    e16 = best.get(("engine (SDPA)", "bf16"))
    ref32 = best.get(("reference-style (eager, all attn)", "fp32"))
    if e16 and ref32:
        print(f"engine bf16 vs reference-style fp32 (what SubCellPortable runs): {e16 / ref32:.2f}x")
    for label, acc in accuracy.items():
        print(f"{label:<28} max abs {acc['max_abs']:.2e}  max rel {acc['max_rel']:.2e}  "
              f"rel Frobenius {acc['rel_fro']:.2e}  min cosine {acc['min_cosine']:.6f}")
    print(fixture_check(device))
    print(f"total {time.perf_counter() - start:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "gpu_engine.json").write_text(json.dumps({"device": name, "rows": rows, "accuracy": accuracy},
                                                               indent=2))


if __name__ == "__main__":
    main()
