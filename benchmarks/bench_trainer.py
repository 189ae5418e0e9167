"""How fast is latentbook's trainer? One epoch of the 784-512-256-128-2 MLP autoencoder on the
60,000 MNIST training images, two ways, in the same run:

* ``fit``: the images held as one tensor on the device, batches drawn by indexing with a seeded
  permutation (``latentbook.train.fit``);
* the usual seed loop: ``torchvision.datasets.MNIST(root, transform=ToTensor())`` and
  ``DataLoader(batch_size=256, shuffle=True)``, the same model, optimizer and loss.

It also reports the FLOP/s that ``fit`` achieves against a large float32 matmul, at the book's batch
size (256) and at 1024. FLOPs are the matrix products a training step executes, counted by
``torch.utils.flop_counter.FlopCounterMode`` (forward, weight gradients, and input gradients of every
layer but the first, whose input needs none: 6·W - 2·W₁ per image for W weights, W₁ of them in the
first layer); the common 6·N·W convention, which counts that unneeded product too, is also recorded.
The machine's speed drifts (other tenants), so each epoch is paired with a matmul measured right
after it, and the fraction is taken within each pair.

    python benchmarks/bench_trainer.py [--device auto|cpu|cuda] [--repeats 3] [--threads N]

Prints a table and appends the run to ``benchmarks/results/trainer.json`` (atomically). Measurements are
ratios within one run on purpose: absolute seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from itertools import islice
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import ToTensor

from common import append_result, machine_info, matmul_flops, sync  # also puts the checkout on sys.path
from latentbook import data, models, train
from latentbook.runmode import resolve_device

SPEC = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [512, 256, 128]}
TARGET_SPEEDUP = 1.5
TARGET_FRACTION = 0.6
RESULTS = Path(__file__).resolve().parent / "results" / "trainer.json"


def fresh_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(SPEC).to(device)


def step_flops_per_image(device: torch.device, batch_size: int = 64) -> tuple[int, int]:
    """Matmul FLOPs of one training step per image: (executed, as counted by FlopCounterMode; 6·W)."""
    model = fresh_model(device)
    optimizer = train.make_optimizer(model, 1e-3)
    xb = torch.rand(batch_size, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        model.loss(xb)["loss"].backward()
        optimizer.step()
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return counter.get_total_flops() // batch_size, 6 * weights


def time_fit(x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Seconds for one epoch of ``train.fit`` (data already a tensor on the device)."""
    model = fresh_model(device)
    sync(device)
    t0 = time.perf_counter()
    train.fit(model, x, epochs=1, batch_size=batch_size, device=device, progress=False)
    sync(device)
    return time.perf_counter() - t0


def time_dataloader_loop(root: Path, batch_size: int, device: torch.device, max_steps: int | None = None) -> float:
    """Seconds for one epoch (or ``max_steps``) of the plain torchvision + DataLoader loop (same model, optimizer, loss)."""
    dataset = torchvision.datasets.MNIST(root, train=True, transform=ToTensor(), download=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = fresh_model(device)
    optimizer = train.make_optimizer(model, 1e-3)
    model.train()
    sync(device)
    t0 = time.perf_counter()
    running = 0.0
    for xb, _ in islice(loader, max_steps):
        xb = xb.to(device)
        loss = model.loss(xb)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()  # the usual running-loss bookkeeping of such loops
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=256, help="the book's batch size for this model")
    parser.add_argument("--large-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per method (medians are reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    info = machine_info(device)  # load average before the heavy work starts
    root = data.cache_root()
    data.ensure("mnist")  # the raw idx files in torchvision's layout under root
    x, _ = data.load("mnist", "train", device=device)
    n = x.shape[0]
    executed, convention = step_flops_per_image(device)
    flop_per_epoch = executed * n

    # Warm-up, not timed: the first steps of a process pay for thread pools and allocations.
    train.fit(fresh_model(device), x[:4096], epochs=1, batch_size=args.batch_size, device=device, progress=False)
    time_dataloader_loop(root, args.batch_size, device, max_steps=16)
    batches = (args.batch_size, args.large_batch)
    fit_s = {b: [] for b in batches}
    peak = {b: [] for b in batches}  # the matmul measured right after each of those epochs
    loader_s = []
    for _ in range(args.repeats):  # alternate, so drifting machine speed hits every method alike
        for b in batches:
            fit_s[b].append(time_fit(x, b, device))
            peak[b].append(matmul_flops(device))
        loader_s.append(time_dataloader_loop(root, args.batch_size, device))

    def fraction(b: int, per_image: int = executed) -> float:  # median over the (epoch, matmul) pairs
        return statistics.median(per_image * n / s / p for s, p in zip(fit_s[b], peak[b]))

    fit_med, loader_med = statistics.median(fit_s[args.batch_size]), statistics.median(loader_s)
    speedup = loader_med / fit_med
    peak_med = statistics.median(peak[args.batch_size] + peak[args.large_batch])
    print(f"device: {device} ({info.get('gpu', platform.processor() or platform.machine())}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul FLOPs per image and step: "
          f"{executed:,} executed ({convention:,} by the 6·W convention)")
    print(f"{'method':<40} {'s/epoch':>8} {'GFLOP/s':>8} {'of matmul':>9} {'(6·W)':>7}")
    print(f"{f'DataLoader + ToTensor loop, batch {args.batch_size}':<40} {loader_med:8.2f} "
          f"{flop_per_epoch / loader_med / 1e9:8.1f} {flop_per_epoch / loader_med / peak_med:9.0%}")
    for b in batches:
        s = statistics.median(fit_s[b])
        print(f"{f'latentbook fit, batch {b}':<40} {s:8.2f} {flop_per_epoch / s / 1e9:8.1f} "
              f"{fraction(b):9.0%} {fraction(b, convention):7.0%}")
    print(f"{'float32 matmul 4096x4096 (median)':<40} {'':>8} {peak_med / 1e9:8.1f}   (best of 5, after each epoch)")
    print(f"speed-up of fit over the DataLoader loop: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x); "
          f"fraction of matmul at batch {args.batch_size}: {fraction(args.batch_size):.0%} (target >= {TARGET_FRACTION:.0%})")

    result = {
        "benchmark": "one epoch of the 784-512-256-128-2 MLP autoencoder on MNIST train (60,000 images)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "machine": info,
        "torchvision": torchvision.__version__,
        "method": (
            "Same run, same model (seeded), same optimizer (latentbook.train.make_optimizer: Adam, lr 1e-3) "
            "and loss (BCE from logits, summed over pixels). 'fit' = latentbook.train.fit with the images "
            "as one tensor on the device; 'dataloader' = torchvision.datasets.MNIST(root=data.cache_root(), "
            "transform=ToTensor()) + DataLoader(shuffle=True, num_workers=0) with loss.item() per step. "
            "Both warmed up (untimed) first. Each repeat times fit at both batch sizes, each epoch followed by "
            "a float32 4096x4096 matmul (best of 5), then the DataLoader epoch; medians over repeats. "
            "FLOP/epoch = N x the matmul FLOPs of one training step per image counted by "
            "torch.utils.flop_counter.FlopCounterMode (6W - 2W1); fraction = FLOP/s of an epoch / the matmul "
            "FLOP/s measured right after it, median over repeats."
        ),
        "flop_per_image_executed": executed,
        "flop_per_image_6w_convention": convention,
        "flop_per_epoch": flop_per_epoch,
        "batch_size": args.batch_size,
        "seconds_per_epoch": {"dataloader": loader_s, **{f"fit_batch_{b}": fit_s[b] for b in batches}},
        "matmul_gflops_after_each_epoch": {f"fit_batch_{b}": [p / 1e9 for p in peak[b]] for b in batches},
        "speedup_fit_over_dataloader": speedup,
        "fit_fraction_of_matmul": {str(b): fraction(b) for b in batches},
        "fit_fraction_of_matmul_6w_convention": {str(b): fraction(b, convention) for b in batches},
        "targets": {"speedup": TARGET_SPEEDUP, "fraction_of_matmul": TARGET_FRACTION},
    }
    append_result(args.out, result)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
