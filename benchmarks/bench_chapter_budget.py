"""A chapter's time budget: how long does it take cold (its own models trained here), warm (everything
from the store) and in smoke mode (nothing stored, as CI runs it)?

    python benchmarks/bench_chapter_budget.py --chapters conditional-vae vq-vae diffusion

Needs a full build of the chapters before them (``make book``, or ``build --mode full``): their dependency
records ``_executed/full/<stem>.json`` name the store entries each chapter read or wrote. For each chapter:

- **cold**: a temporary store holding every entry of the local store *except* those this chapter is the
  first to use (entries no earlier chapter of ``_toc.yml`` recorded), so the chapter trains its own models
  and computes its own stored evaluations, and finds those of earlier chapters, as in a cold full build;
- **warm**: the same chapter again on the store the cold run filled;
- **smoke**: smoke mode on an empty store (every model trained, as ``make test`` does).

Published weights are off (``LATENTBOOK_MODELS_URL=off``): nothing is fetched. Each run is a papermill
execution like the build's, into a temporary folder. The float32 4096² matmul rate is measured after,
so runs on machines of other speeds compare. Appends to ``benchmarks/results/chapter_budget.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import append_result, machine_info, matmul_gflops  # also puts the checkout on sys.path
from latentbook import build, store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "chapter_budget.json"
TARGETS_S = {"cold": 360.0, "warm": 60.0, "smoke": 60.0}  # issue "Beyond the VAE", on a 2-core CPU


def recorded_entries(stem: str) -> set[str]:
    """The store keys the full run of ``stem`` read or wrote (its dependency record)."""
    record = ROOT / "_executed" / "full" / f"{stem}.json"
    if not record.is_file():
        raise SystemExit(f"{record} is missing: execute the full book first (make book)")
    return set(json.loads(record.read_text())["entries"])


def own_entries(stem: str) -> set[str]:
    """The entries ``stem`` is the first chapter (in reading order) to use."""
    stems = build.chapters(ROOT)
    earlier = set().union(*(recorded_entries(s) for s in stems[: stems.index(stem)]))
    return recorded_entries(stem) - earlier


def store_without(source: Path, target: Path, drop: set[str]) -> int:
    """Copy the store ``source`` into ``target`` leaving out the entries ``drop``; the number left out."""
    target.mkdir(parents=True)
    left_out = 0
    for path in source.iterdir():
        key = path.name.split(".")[0]
        if key in drop:
            left_out += path.suffix == ".pt"
        elif path.suffix in (".pt", ".json"):
            shutil.copy2(path, target / path.name)
    return left_out


def execute(stem: str, mode: str, out: Path) -> float:
    t0 = time.perf_counter()
    build.run_notebook(ROOT / "notebooks" / f"{stem}.ipynb", out / f"{stem}.ipynb",
                       {**build.DEFAULT_PARAMS, "MODE": mode}, cwd=out)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", nargs="+", required=True)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.chapters) - set(build.chapters(ROOT)))
    if unknown:
        raise SystemExit(f"not chapters of _toc.yml: {unknown}")
    source = store.folder()
    os.environ.update(build.KERNEL_ENV, LATENTBOOK_MODELS_URL="off")
    info = machine_info()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="latentbook-budget-") as tmp:
        for stem in args.chapters:
            row = {}
            cold_store = Path(tmp) / f"store-{stem}"
            row["own_entries"] = store_without(source, cold_store, own_entries(stem))
            os.environ["LATENTBOOK_MODELS"] = str(cold_store)
            out = Path(tmp) / f"out-{stem}"
            out.mkdir()
            row["cold_s"] = round(execute(stem, "full", out), 1)
            row["warm_s"] = round(execute(stem, "full", out), 1)
            os.environ["LATENTBOOK_MODELS"] = str(Path(tmp) / f"empty-{stem}")
            row["smoke_s"] = round(execute(stem, "smoke", out), 1)
            row["met"] = all(row[f"{k}_s"] <= v for k, v in TARGETS_S.items())
            rows[stem] = row
            print(f"{stem:<18} cold {row['cold_s']:6.1f} s ({row['own_entries']} own entries made)   "
                  f"warm {row['warm_s']:5.1f} s   smoke {row['smoke_s']:5.1f} s   "
                  f"{'within budget' if row['met'] else 'OVER BUDGET'}", flush=True)
    rate = matmul_gflops()
    print(f"float32 4096² matmul: {rate:.0f} GFLOP/s")
    record = {
        "benchmark": "chapter budget: cold (own models trained, earlier chapters' stored), warm, smoke (empty store)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "matmul_gflops_f32_4096": round(rate, 1),
        "targets_s": TARGETS_S,
        "per_chapter": rows,
        "all_met": all(r["met"] for r in rows.values()),
    }
    if not args.no_save:
        append_result(RESULTS, record)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
