"""SubCell, CellProfiler and both together, side by side, on the demo plates and on Cell Painting plates.

Runs :func:`subcell_scale.demo` with ``cellprofiler=True`` twice: the HPA-like demo (4 channels,
``preset="hpa"``) and synthetic Cell Painting plates (5 channels, ``preset="jump-cellpainting"``:
three ER-DNA-protein passes). Without the published weights (and a GPU) the SubCell view is a
small architecture with deterministic random weights, so its numbers are a floor, not SubCell's:
the point is the protocol, one evaluation of every view. Prints the view x metric table of each run
and leaves ``figures/views.png`` and ``report.html`` in each run directory.

    python benchmarks/views_side_by_side.py [--out views-demo] [--published]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

SMALL = {"hidden_size": 96, "num_layers": 2, "num_heads": 2, "intermediate_size": 192, "pool_int_dim": 32}
"""The random SubCell architecture used without the published weights (fast on a CPU)."""


def main() -> None:
    import subcell_scale as ss
    from subcell_scale.views import side_by_side

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("views-demo"))
    parser.add_argument("--published", action="store_true", help="the published weights from the model cache")
    args = parser.parse_args()
    for preset, channels, extra in (("hpa", 4, {}), ("jump-cellpainting", 3, {"out_size": 224})):
        variant = ss.RunParams.resolve(preset).variant
        model = None if args.published else ss.ModelSpec("random", variant=variant, seed=0, n_classifiers=1,
                                                          config={**SMALL, "num_channels": channels})
        out = args.out / preset
        result = ss.demo(out, preset=preset, model=model, cellprofiler=True, progress=False, **extra)
        summary = pd.read_csv(out / "metrics" / "summary.csv")
        print(f"\n{preset}: {result.n_cells} cells; {out / 'figures' / 'views.png'}")
        print(side_by_side(summary).round(3).to_string())


if __name__ == "__main__":
    main()
