"""An embedding run into a bucket against the same run into a local folder: time and requests.

A demo plate is embedded in this process with a tiny random model, once into a local ``out`` and once
into ``s3://runs/...`` on an S3 protocol server on loopback (moto's server mode), then each run is
repeated (resume: every field is read back, the cells store rewritten). Printed per repeat: seconds
local and S3, the ratio S3 / local, and the requests the server answered. The server's latency is
not a cloud's; the request counts are what carries over.

Usage::

    python benchmarks/bench_object_storage.py               # 8 wells x 2 fields, 2 repeats, ~1 minute
    python benchmarks/bench_object_storage.py --wells 24
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


class _Requests(logging.Handler):
    """Counts the requests the loopback server logs (one line each)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=8)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import s3fs
    import torch
    from moto.server import ThreadedMotoServer

    from subcell_scale.io.demo import make_demo_plate
    from subcell_scale.models import ModelSpec
    from subcell_scale import embed_plate

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-object-storage-"))
    plate = str(make_demo_plate(root / "plates", n_plates=1, n_wells=args.wells, n_fields=args.fields, field_size=256,
                                cells_per_field=8, seed=5)[0])
    config = {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "intermediate_size": 128, "num_channels": 4,
              "pool_int_dim": 32}
    spec = ModelSpec("random", config=config, seed=0, n_classifiers=1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    requests = _Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.handlers = [requests]
    try:
        options = {"key": "bench", "secret": "bench",
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{server._server.server_port}",
                                     "region_name": "us-east-1"}}
        s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket="runs")
        common = {"progress": False, "out_size": 32}
        embed_plate(plate, spec, **common)  # imports and first-call costs out of the timings
        print(f"{args.wells} wells x {args.fields} fields")
        for repeat in range(args.repeats):
            timings = {}
            for name, out, extra in (("local", str(root / f"run-{repeat}"), {}),
                                     ("s3", f"s3://runs/run-{repeat}", {"storage_options": options})):
                for step in ("first", "resume"):
                    requests.count = 0
                    start = time.perf_counter()
                    cells = embed_plate(plate, spec, out=out, **common, **extra)
                    timings[name, step] = (time.perf_counter() - start, requests.count)
            for step in ("first", "resume"):
                (local, _), (s3, n) = timings["local", step], timings["s3", step]
                print(f"repeat {repeat} {step:6s}: {cells.n_obs} cells, local {local:.2f} s, s3 {s3:.2f} s "
                      f"({n} requests), s3 / local {s3 / local:.1f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
