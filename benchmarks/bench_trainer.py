"""How fast is latentbook's trainer? One epoch of the 784-512-256-128-2 MLP autoencoder on the
60,000 MNIST training images, two ways, in the same run:

* ``fit``: the images held as one tensor on the device, batches drawn by indexing with a seeded
  permutation (``latentbook.train.fit``);
* the usual seed loop: ``torchvision.datasets.MNIST(root, transform=ToTensor())`` and
  ``DataLoader(batch_size=256, shuffle=True)``, the same model, optimizer and loss.

It also reports the FLOP/s that ``fit`` achieves (forward + backward of the linear layers:
6 · N · weights in matmuls) against a large float32 matmul measured in the same run, and repeats
that at batch 1024 when batch 256 falls short of the target.

    python benchmarks/bench_trainer.py [--device auto|cpu|cuda] [--repeats 1] [--threads N]

Prints a table and appends the run to ``benchmarks/results/trainer.json`` (atomically). Measurements are
ratios within one run on purpose: absolute seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from common import append_result, machine_info  # also puts the checkout on sys.path
from latentbook import data, models, train
from latentbook.runmode import resolve_device

SPEC = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [512, 256, 128]}
TARGET_SPEEDUP = 1.5
TARGET_FRACTION = 0.6
RESULTS = Path(__file__).resolve().parent / "results" / "trainer.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, n: int = 4096, reps: int = 5) -> float:
    """Best FLOP/s of ``[n, n] @ [n, n]`` in float32 over ``reps`` timed runs (after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def fresh_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(SPEC).to(device)


def time_fit(x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Seconds for one epoch of ``train.fit`` (data already a tensor on the device)."""
    model = fresh_model(device)
    sync(device)
    t0 = time.perf_counter()
    train.fit(model, x, epochs=1, batch_size=batch_size, device=device, progress=False)
    sync(device)
    return time.perf_counter() - t0


def time_dataloader_loop(root: Path, batch_size: int, device: torch.device) -> float:
    """Seconds for one epoch of the plain torchvision + DataLoader loop (same model, optimizer, loss)."""
    dataset = torchvision.datasets.MNIST(root, train=True, transform=ToTensor(), download=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = fresh_model(device)
    optimizer = train.make_optimizer(model, 1e-3)
    model.train()
    sync(device)
    t0 = time.perf_counter()
    running = 0.0
    for xb, _ in loader:
        xb = xb.to(device)
        loss = model.loss(xb)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()  # the usual running-loss bookkeeping of such loops
    sync(device)
    return time.perf_counter() - t0


def matmul_weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--large-batch", type=int, default=1024, help="also measured when --batch-size misses the FLOP/s target")
    parser.add_argument("--repeats", type=int, default=1, help="epochs timed per method (the median is reported)")
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
    flop_per_epoch = 6 * n * matmul_weights(fresh_model(device))

    peak = [matmul_flops(device)]
    fit_s, loader_s = [], []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
        fit_s.append(time_fit(x, args.batch_size, device))
        loader_s.append(time_dataloader_loop(root, args.batch_size, device))
    large_s = []
    peak.append(matmul_flops(device))
    fraction = flop_per_epoch / statistics.median(fit_s) / max(peak)
    if fraction < TARGET_FRACTION and args.large_batch != args.batch_size:
        for _ in range(args.repeats):
            large_s.append(time_fit(x, args.large_batch, device))
        peak.append(matmul_flops(device))

    peak_flops = max(peak)
    fit_med, loader_med = statistics.median(fit_s), statistics.median(loader_s)
    rows = [
        (f"DataLoader + ToTensor loop, batch {args.batch_size}", loader_med, flop_per_epoch / loader_med),
        (f"latentbook fit, batch {args.batch_size}", fit_med, flop_per_epoch / fit_med),
    ]
    if large_s:
        rows.append((f"latentbook fit, batch {args.large_batch}", statistics.median(large_s),
                     flop_per_epoch / statistics.median(large_s)))
    speedup = loader_med / fit_med

    print(f"device: {device} ({info.get('gpu', platform.processor() or platform.machine())}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':<44} {'s/epoch':>8} {'GFLOP/s':>8} {'of matmul':>9}")
    for name, secs, flops in rows:
        print(f"{name:<44} {secs:8.2f} {flops / 1e9:8.1f} {flops / peak_flops:9.0%}")
    print(f"{'float32 matmul 4096x4096 (best)':<44} {'':>8} {peak_flops / 1e9:8.1f} {1:9.0%}")
    print(f"speed-up of fit over the DataLoader loop: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x)")

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
            f"{args.repeats} timed epoch(s) per method, alternating, median reported. FLOP/epoch = "
            "6 * N * (weights of the Linear layers); peak = best of 5 float32 4096x4096 matmuls, "
            "measured before, between and after the epochs."
        ),
        "flop_per_epoch": flop_per_epoch,
        "matmul_peak_gflops": peak_flops / 1e9,
        "matmul_gflops_each_measurement": [p / 1e9 for p in peak],
        "batch_size": args.batch_size,
        "seconds_per_epoch": {"fit": fit_s, "dataloader": loader_s,
                              **({f"fit_batch_{args.large_batch}": large_s} if large_s else {})},
        "speedup_fit_over_dataloader": speedup,
        "fit_fraction_of_matmul": {str(args.batch_size): flop_per_epoch / fit_med / peak_flops,
                                   **({str(args.large_batch): flop_per_epoch / statistics.median(large_s) / peak_flops}
                                      if large_s else {})},
        "targets": {"speedup": TARGET_SPEEDUP, "fraction_of_matmul": TARGET_FRACTION},
    }
    append_result(args.out, result)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
