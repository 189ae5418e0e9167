"""Several models at once: ``zoo.warm(jobs=N)`` (what ``make book`` does first) against training the same models
one after the other with all cores, each into an empty store.

    python benchmarks/bench_parallel_warm.py                       # 4 full-mode models, ~3 min on 2 cores
    python benchmarks/bench_parallel_warm.py --jobs 2 4 8          # on a larger machine

For each ``jobs`` value: the wall seconds of ``zoo.warm(run, MODELS, jobs=jobs)`` on an empty store (published
weights off), and the speed-up over ``jobs=1`` (one model at a time, torch's default threads). Appends to
``benchmarks/results/parallel_warm.json``; the float32 4096² matmul rate is measured after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from common import append_result, machine_info, matmul_gflops  # also puts the checkout on sys.path
from latentbook import zoo
from latentbook.chapter import start

RESULTS = Path(__file__).resolve().parent / "results" / "parallel_warm.json"
MODELS = ["dae-masking-32", "vae-32-beta2", "vae-32-beta8", "ae-sig-128"]  # ~1.5 min one by one on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", type=int, default=[2])
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    info = machine_info()
    os.environ["LATENTBOOK_MODELS_URL"] = "off"
    os.environ["LATENTBOOK_PROGRESS"] = "0"
    record: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": info, "models": args.models,
                    "seconds": {}}
    for jobs in [1, *[j for j in args.jobs if j != 1]]:
        with tempfile.TemporaryDirectory() as folder:
            os.environ["LATENTBOOK_MODELS"] = folder
            run = start("full", "cpu", quiet=True)
            t0 = time.perf_counter()
            zoo.warm(run, args.models, log=lambda *a: None, jobs=jobs)
            record["seconds"][str(jobs)] = round(time.perf_counter() - t0, 1)
        print(f"jobs={jobs}: {record['seconds'][str(jobs)]} s", flush=True)
    one = record["seconds"]["1"]
    record["speedup"] = {j: round(one / s, 2) for j, s in record["seconds"].items()}
    record["matmul_gflops"] = round(matmul_gflops(), 1)
    print(f"speed-up over one at a time: {record['speedup']}; float32 4096² matmul {record['matmul_gflops']} GFLOP/s")
    append_result(RESULTS, record)


if __name__ == "__main__":
    main()
