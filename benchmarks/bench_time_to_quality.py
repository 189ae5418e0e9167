"""Time to quality: a model's test metric against the seconds spent training it, for the book's recipe
and for alternatives (a one-cycle learning-rate schedule with a higher peak, fewer epochs, larger batches
with a scaled rate).

    python benchmarks/bench_time_to_quality.py                 # every model below (~8 min on 2 cores)
    python benchmarks/bench_time_to_quality.py --models vae-32

Each candidate trains on the 60,000 training images with :func:`latentbook.train.fit` (seed 0) and is
scored on the 10,000 test images after every epoch (the validation pass of ``fit``, ≈ 0.3 s per epoch,
counted in the seconds): the training loss's value on the test set, i.e. binary cross-entropy per image
for the autoencoder and −ELBO (one sample, images binarised once) for the VAEs. After the last epoch the
headline metric is computed: test MSE per pixel (autoencoder) or −ELBO on the binarised test set. Only
one run trains at a time; the float32 4096² matmul rate is measured after.

Appends to ``benchmarks/results/time_to_quality.json`` and draws ``benchmarks/results/time_to_quality.png``
from the last run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from common import append_result, machine_info, matmul_gflops  # also puts the checkout on sys.path
from latentbook import data, evaluate, models, train, zoo

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_quality.json"
FIGURE = RESULTS.with_suffix(".png")

# Candidates per model: (label, overrides of the zoo recipe). "book" is the recipe the book trains today.
CANDIDATES = {
    "ae-32": [
        ("20 ep, batch 256, lr 1e-3 constant (before)", {"epochs": 20, "batch_size": 256, "lr": 1e-3, "lr_schedule": "constant"}),
        ("10 ep, batch 256, one-cycle 3e-3", {"epochs": 10, "batch_size": 256, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("6 ep, batch 256, one-cycle 3e-3", {"epochs": 6, "batch_size": 256, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("10 ep, batch 512, one-cycle 4e-3", {"epochs": 10, "batch_size": 512, "lr": 4e-3, "lr_schedule": "onecycle"}),
        ("14 ep, batch 256, one-cycle 3e-3", {"epochs": 14, "batch_size": 256, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("16 ep, batch 256, one-cycle 2e-3", {"epochs": 16, "batch_size": 256, "lr": 2e-3, "lr_schedule": "onecycle"}),
        ("12 ep, batch 128, lr 1e-3 constant", {"epochs": 12, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant"}),
        ("14 ep, batch 256, lr 2e-3 constant", {"epochs": 14, "batch_size": 256, "lr": 2e-3, "lr_schedule": "constant"}),
    ],
    "vae-32": [
        ("15 ep, batch 128, lr 1e-3 constant (before)", {"epochs": 15, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant"}),
        ("8 ep, batch 128, one-cycle 3e-3", {"epochs": 8, "batch_size": 128, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("6 ep, batch 128, one-cycle 3e-3", {"epochs": 6, "batch_size": 128, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("10 ep, batch 256, one-cycle 4e-3", {"epochs": 10, "batch_size": 256, "lr": 4e-3, "lr_schedule": "onecycle"}),
    ],
    "vae-32-gaussian": [
        ("10 ep, batch 128, lr 1e-3 constant (before)", {"epochs": 10, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant"}),
        ("8 ep, batch 128, one-cycle 3e-3", {"epochs": 8, "batch_size": 128, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("8 ep, batch 128, one-cycle 1e-3", {"epochs": 8, "batch_size": 128, "lr": 1e-3, "lr_schedule": "onecycle"}),
        ("8 ep, batch 128, lr 1e-3 constant", {"epochs": 8, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant"}),
    ],
    **{name: [
        ("20 ep, batch 256, lr 3e-3 constant (before)", {"epochs": 20, "batch_size": 256, "lr": 3e-3, "lr_schedule": "constant"}),
        ("10 ep, batch 256, one-cycle 1e-2", {"epochs": 10, "batch_size": 256, "lr": 1e-2, "lr_schedule": "onecycle"}),
        ("10 ep, batch 256, one-cycle 3e-3", {"epochs": 10, "batch_size": 256, "lr": 3e-3, "lr_schedule": "onecycle"}),
    ] for name in ("ae-sig-128", "cae-128")},
    "vae-2": [
        ("15 ep, batch 128, lr 1e-3 constant (before)", {"epochs": 15, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant"}),
        ("8 ep, batch 128, one-cycle 3e-3", {"epochs": 8, "batch_size": 128, "lr": 3e-3, "lr_schedule": "onecycle"}),
        ("10 ep, batch 128, one-cycle 3e-3", {"epochs": 10, "batch_size": 128, "lr": 3e-3, "lr_schedule": "onecycle"}),
    ],
}


def run_candidate(name: str, overrides: dict, x_train, x_test) -> dict:
    r = zoo.recipe(name)
    torch.manual_seed(0)
    model = models.build(r.spec)
    history = train.fit(model, x_train, x_val=x_test, seed=0, device="cpu", loss_kwargs=r.loss_kwargs or None,
                        binarize=r.binarize, progress=False, **overrides)
    seconds, cum = [], 0.0
    for t in history.epoch_time:
        cum += t
        seconds.append(round(cum, 2))
    out = {"overrides": overrides, "seconds": seconds, "val_loss": [round(v, 4) for v in history.val["loss"]]}
    if r.binarize:
        out["final"] = {"test_neg_elbo": round(history.val["loss"][-1], 3)}
    else:
        out["final"] = {"test_mse": round(float(evaluate.reconstruction_mse(model, x_test)), 6)}
    return out


def draw(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["models"])
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        results = record["models"][name]
        for label, res in results.items():
            metric, value = next(iter(res["final"].items()))
            ax.plot(res["seconds"], res["val_loss"], "k-o" if "(before)" in label else "-o", ms=3,
                    label=f"{label}: {metric.replace('_', ' ')} {value:g}")
        binary = zoo.recipe(name).binarize is not None
        ax.set_title(f"{name}: {zoo.recipe(name).about}", fontsize=8)
        ax.set_xlabel(f"training seconds (2-core CPU, matmul {record['matmul_gflops']:.0f} GFLOP/s)", fontsize=8)
        ax.set_ylabel("test loss per image (nats): " + ("−ELBO" if name.startswith("vae") else "loss"), fontsize=8)
        lo = min(min(r["val_loss"]) for r in results.values())
        hi = max(r["val_loss"][-1] for r in results.values())
        ax.set_ylim(lo - 0.1 * (hi - lo) - 0.5, hi + 0.6 * (hi - lo) + (4 if binary else 2))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle("Time to quality: the test loss after each epoch against the seconds spent training "
                 "(legend: the headline metric after the last epoch)", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--only", nargs="+", default=None, help="run only the candidates whose labels start so")
    args = parser.parse_args()
    info = machine_info()
    x_train, _ = data.load("mnist", "train")
    x_test, _ = data.load("mnist", "test")
    record: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": info, "models": {}}
    for name in args.models:
        record["models"][name] = {}
        for label, overrides in CANDIDATES[name]:
            if args.only and not any(label.startswith(o) for o in args.only):
                continue
            res = run_candidate(name, overrides, x_train, x_test)
            record["models"][name][label] = res
            print(f"{name:7s} {label:48s} {res['seconds'][-1]:7.1f} s  final {res['final']}", flush=True)
    record["matmul_gflops"] = round(matmul_gflops(), 1)
    print(f"float32 4096² matmul: {record['matmul_gflops']} GFLOP/s")
    append_result(RESULTS, record)
    draw(latest(json.loads(RESULTS.read_text())["runs"]))


def latest(runs: list[dict]) -> dict:
    """One record of the newest result of every (model, candidate) over ``runs`` (runs made with --only add
    to earlier ones); its matmul rate is the lowest of the runs it draws from."""
    merged: dict = {"models": {}, "matmul_gflops": min(r["matmul_gflops"] for r in runs)}
    for run in runs:
        for name, results in run["models"].items():
            merged["models"].setdefault(name, {}).update(results)
    return merged


if __name__ == "__main__":
    main()
