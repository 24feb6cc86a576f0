"""SubCell, CellProfiler and both together, side by side, on the demo plates and on Cell Painting plates.

Runs :func:`subcell_scale.demo` with ``cellprofiler=True`` twice: the HPA-like demo (4 channels,
``preset="hpa"``) and synthetic Cell Painting plates (5 channels, ``preset="jump-cellpainting"``:
three ER-DNA-protein passes). Without the published weights (and a GPU) the SubCell view is a
small architecture with deterministic random weights, so its numbers are a floor, not SubCell's:
the point is the protocol, one evaluation of every view. Prints the view x metric table of each run
and leaves ``figures/views.png`` and ``report.html`` in each run directory. ``--with-model`` adds a
user's model as one more view (:class:`ChannelStats`: each channel's mean and spread in a 64-px crop),
as a user adds theirs with :class:`subcell_scale.ModelView`.

    python benchmarks/views_side_by_side.py [--out views-demo] [--published] [--with-model] [--presets hpa]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

SMALL = {"hidden_size": 96, "num_layers": 2, "num_heads": 2, "intermediate_size": 192, "pool_int_dim": 32}
"""The random SubCell architecture used without the published weights (fast on a CPU)."""


class ChannelStats:
    """A baseline user model: per channel, the mean and the standard deviation of the crop."""

    @staticmethod
    def module():
        import torch

        class Stats(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

        return Stats()


def main() -> None:
    import subcell_scale as ss
    from subcell_scale.views import side_by_side

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("views-demo"))
    parser.add_argument("--published", action="store_true", help="the published weights from the model cache")
    parser.add_argument("--with-model", action="store_true", help="a user's model as one more view")
    parser.add_argument("--presets", nargs="+", default=["hpa", "jump-cellpainting"])
    args = parser.parse_args()
    runs = {"hpa": (4, {}, ["dna", "protein"]), "jump-cellpainting": (3, {"out_size": 224}, ["DNA", "Mito", "AGP"])}
    for preset in args.presets:
        channels, extra, stats_channels = runs[preset]
        if args.with_model:
            extra = {**extra, "views": [ss.ModelView("channel_stats", ChannelStats.module(), channels=stats_channels,
                                                     size=64, normalization="none")]}
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
