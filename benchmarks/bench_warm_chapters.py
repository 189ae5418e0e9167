"""Instructor mode: how long does each chapter take to execute when the model cache is warm?

An instructor runs ``make warm`` (or ``python -m latentbook cache warm``) before class; every model
is then loaded, not trained, and each chapter must execute in under a minute on a 2-core CPU. This
script executes every chapter with papermill, as the book build does, into a temporary folder
(or into ``--out``), and also times one response of each live widget of the VAE chapter
(the decoded point of the latent explorer and a β-VAE frame, drawn to PNG as a notebook would).

    python benchmarks/bench_warm_chapters.py [--mode full] [--device auto] [--no-warm]

Appends the per-chapter seconds to ``benchmarks/results/warm_chapters.json``. The cache is warmed
first (instant when it already is) unless ``--no-warm``; its own time is reported separately.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import tempfile
import time
from pathlib import Path

from common import append_result, machine_info  # also puts the checkout on sys.path
from latentbook import build, zoo
from latentbook.chapter import start

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "warm_chapters.json"
TARGET_S = 60.0


def widget_response(run) -> dict[str, float]:
    """Seconds for one update of the VAE chapter's live widgets (compute + PNG, best of 3)."""
    import torch

    from latentbook import data, evaluate, explorer, plots

    x, y = data.load(run.dataset, "test", device=run.device)
    vae2, _ = zoo.get("vae-2", run, progress=False)
    codes = evaluate.encode(vae2, x[:2000]).cpu()
    beta_model, _ = zoo.get("vae-32-beta4", run, progress=False)
    z = torch.randn(10, 32, device=run.device)

    def explorer_frame():
        explorer.explorer_figure(vae2, codes.numpy(), y[:2000].cpu().numpy(), (0.5, -0.5),
                                 ((-4, 4), (-4, 4))).savefig(io.BytesIO(), format="png")

    def beta_frame():
        plots.image_grid([x[:10], evaluate.reconstruct(beta_model, x[:10]), evaluate.decode(beta_model, z)],
                         row_labels=["test image", "reconstruction", "sample"]).savefig(io.BytesIO(), format="png")

    out = {}
    for name, fn in (("latent explorer", explorer_frame), ("β-VAE", beta_frame)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-warm", action="store_true", help="do not warm the cache first")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="execute into this folder (e.g. _executed/full, which `make book` then finds current); "
                             "default: a temporary folder")
    args = parser.parse_args(argv)
    params = {**build.DEFAULT_PARAMS, "MODE": args.mode, "DEVICE": args.device}
    run = start(args.mode, args.device, quiet=True)
    info = machine_info(run.device)

    warm_s = None
    if not args.no_warm:
        t0 = time.perf_counter()
        zoo.warm(run, log=lambda *a: None)
        warm_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        runs = build.execute(ROOT, params, args.out or Path(tmp), force=True, log=lambda *a: None)
    seconds = {r.stem: round(r.seconds, 1) for r in runs}
    widgets = {k: round(v, 3) for k, v in widget_response(run).items()}

    print(f"{'chapter':<24} {'seconds':>8}   (warm cache, mode {args.mode}, device {run.device})")
    for stem, s in seconds.items():
        print(f"{stem:<24} {s:8.1f}   {'ok' if s < TARGET_S else 'OVER ' + str(TARGET_S)}")
    for name, s in widgets.items():
        print(f"widget {name:<17} {s:8.3f}")
    if warm_s is not None:
        print(f"(warming the cache took {warm_s:.1f} s)")
    record = {
        "benchmark": "every chapter executed by papermill with a warm model cache",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "machine": info,
        "method": f"latentbook.build.execute(force=True) into {args.out or 'a temporary folder'} after zoo.warm; "
                  "widget responses: best of 3 (figure computed and drawn to PNG).",
        "seconds_per_chapter": seconds,
        "widget_response_s": widgets,
        "warm_cache_s": warm_s,
        "target_s_per_chapter": TARGET_S,
        "all_under_target": all(s < TARGET_S for s in seconds.values()),
    }
    if not args.no_save:
        append_result(RESULTS, record)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
