"""Learners and instructors with published weights: how long does each chapter take cold, from an empty
store that fetches every model and stored evaluation from the published site, against the same chapter
warm, right after, in the same run? And how long does an instructor wait to warm the whole book?

    python benchmarks/bench_published.py [--mode full] [--chapters vae ...]

Needs an executed and exported build of that mode (``make book``): its ``_build/<mode>/html/models`` is
served on 127.0.0.1 as the published site. Each chapter is executed by papermill (as the build does)
twice, into a temporary folder: cold with an empty store (``$LATENTBOOK_MODELS``) and the published
address (``$LATENTBOOK_MODELS_URL``), then warm on the store it just filled. Then ``python -m latentbook
warm`` runs on another empty store. The data cache stays warm (a learner's MNIST download is not
counted). The float32 4096² matmul rate is measured beside, so runs on machines of other speeds compare.
Appends to ``benchmarks/results/published_weights.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import append_result, machine_info, matmul_gflops  # also puts the checkout on sys.path
from latentbook import build, store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "published_weights.json"
TARGET_COLD_S, TARGET_OVER_WARM_S, TARGET_WARM_BOOK_S = 90.0, 30.0, 300.0


def serve(folder: Path) -> str:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/models/"


def execute(stem: str, params: dict, out: Path) -> float:
    t0 = time.perf_counter()
    build.run_notebook(ROOT / "notebooks" / f"{stem}.ipynb", out / f"{stem}.ipynb", params, cwd=out)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="full")
    parser.add_argument("--chapters", nargs="*")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    params = {**build.DEFAULT_PARAMS, "MODE": args.mode}
    site = ROOT / "_build" / args.mode / "html"
    manifest = json.loads((site / "models" / store.MANIFEST).read_text())
    url = serve(site)
    stems = args.chapters or build.chapters(ROOT)
    os.environ.update(build.KERNEL_ENV, LATENTBOOK_MODELS_URL=url)
    info = machine_info()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="latentbook-bench-") as tmp:
        for stem in stems:
            empty = Path(tmp) / f"store-{stem}"
            os.environ["LATENTBOOK_MODELS"] = str(empty)
            out = Path(tmp) / f"out-{stem}"
            out.mkdir()
            cold = execute(stem, params, out)
            published = ROOT / "_executed" / args.mode / f"{stem}.ipynb"
            same = build.printed(out / f"{stem}.ipynb") == build.printed(published)  # and every claim held
            fetched = store.info(empty)
            warm = execute(stem, params, out)
            rows[stem] = {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "cold_minus_warm_s": round(cold - warm, 1),
                          "prints_the_published_figures": same,
                          "entries_fetched": len(fetched.entries), "mb_fetched": round(fetched.total_bytes / 1e6, 1),
                          "all_fetched": all(e.get("source", "").startswith("fetched") for e in fetched.entries)}
            print(f"{stem:<24} cold {cold:6.1f} s   warm {warm:6.1f} s   +{cold - warm:5.1f} s   "
                  f"{len(fetched.entries):2d} entries fetched ({fetched.total_bytes / 1e6:.1f} MB)"
                  f"{'' if same else '   PRINTS OTHER FIGURES than the published page'}", flush=True)
        os.environ["LATENTBOOK_MODELS"] = str(Path(tmp) / "store-instructor")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "latentbook", "warm", "--mode", args.mode], cwd=ROOT,
                              capture_output=True, text=True)
        warm_book = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"python -m latentbook warm failed:\n{proc.stderr[-2000:]}")
        trained = "training" in proc.stderr.lower()
        instructor = store.info(Path(tmp) / "store-instructor")
    rate = matmul_gflops()
    print(f"python -m latentbook warm (empty store): {warm_book:.1f} s, {len(instructor.entries)} entries "
          f"({instructor.total_bytes / 1e6:.1f} MB); float32 matmul {rate:.0f} GFLOP/s")
    record = {
        "benchmark": "each chapter cold from published weights (empty store) vs warm, paired; the book warmed",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "machine": info,
        "matmul_gflops_f32_4096": round(rate, 1),
        "published_entries": len(manifest["entries"]),
        "per_chapter": rows,
        "warm_book_s": round(warm_book, 1),
        "warm_book_entries": len(instructor.entries),
        "warm_book_trained_something": trained,
        "targets": {"cold_s": TARGET_COLD_S, "cold_minus_warm_s": TARGET_OVER_WARM_S, "warm_book_s": TARGET_WARM_BOOK_S},
        "all_met": (all(r["cold_s"] <= TARGET_COLD_S and r["cold_minus_warm_s"] <= TARGET_OVER_WARM_S
                        for r in rows.values()) and warm_book <= TARGET_WARM_BOOK_S),
    }
    if not args.no_save:
        append_result(RESULTS, record)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
