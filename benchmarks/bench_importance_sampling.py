"""Importance sampling on a CPU: what the VAE chapter's k = 5,000 bounds cost, and what would make them cheaper.

    python benchmarks/bench_importance_sampling.py        # ~3 min on 2 cores; needs the full book's VAEs stored

For the three models of ``zoo.LIKELIHOOD_MODELS`` (from the store: run ``make book`` or ``latentbook warm`` first):

- **layout**: milliseconds per image for k = 5,000 samples of q(z|x), drawn ``batch`` images x ``chunk`` samples
  per decoder pass, on one thread (as in a parallel build) and on all (the book uses 1 x 500 on a CPU);
- **precision**: the same samples z (drawn once in float64) scored by the model in float32 and in float64: the
  largest difference in L_5000 over the images, and the time of each;
- **images**: the standard error of the mean test NLL over the first n = 100, 250, 500 images, from the stored
  per-image bounds: what scoring fewer images would cost in precision.

Appends to ``benchmarks/results/importance_sampling.json``; the float32 4096² matmul rate is measured after.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import torch

from common import append_result, machine_info, matmul_gflops  # also puts the checkout on sys.path
from latentbook import losses, montecarlo, zoo
from latentbook.chapter import start

RESULTS = Path(__file__).resolve().parent / "results" / "importance_sampling.json"
K = 5000
LAYOUTS = [(50, 128), (10, 500), (1, 500), (1, 1000), (1, 5000)]  # (images, samples) per pass; the book: (1, 500)


def log_weights_given(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for z = mu + sigma * eps, ``eps: [K, B, d]`` -> ``[K, B]``, in the
    model's dtype (the same z for a float32 and a float64 copy of one model)."""
    dtype = next(model.parameters()).dtype
    x, eps = x.to(dtype), eps.to(dtype)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = losses.log_normal_diag(z, mu, logvar)
        log_p = losses.log_normal_diag(z, torch.zeros_like(z), torch.zeros_like(z))
        return torch.cat([model.log_px_given_z(x, zc) for zc in z.split(500)]) + log_p - log_q


def main() -> None:
    info = machine_info()
    run = start("full", "cpu", quiet=True)
    x_ll, _ = zoo.likelihood_setup(run)
    record: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": info, "k": K, "models": {}}
    for name in zoo.LIKELIHOOD_MODELS:
        model, _ = zoo.get(name, run, progress=False)
        res: dict = {"ms_per_image": {}}
        x = x_ll[:20]
        all_threads = torch.get_num_threads()
        for threads in sorted({1, all_threads}):
            torch.set_num_threads(threads)
            for batch, chunk in LAYOUTS:
                gen = torch.Generator().manual_seed(0)
                t0 = time.perf_counter()
                for s in range(0, len(x), batch):
                    montecarlo.log_weights(model.encode, model.log_px_given_z, x[s : s + batch], K, chunk_size=chunk,
                                           generator=gen)
                res["ms_per_image"][f"{threads} thread(s), {batch} images x {chunk} samples"] = \
                    round((time.perf_counter() - t0) / len(x) * 1e3, 1)
        torch.set_num_threads(all_threads)
        x = x_ll[:10]
        eps = torch.randn(K, len(x), model.latent_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t0 = time.perf_counter()
        lw32 = log_weights_given(model, x, eps).double()
        t32 = time.perf_counter() - t0
        model64 = model.double()
        t0 = time.perf_counter()
        lw64 = log_weights_given(model64, x, eps)
        t64 = time.perf_counter() - t0
        model.float()
        diff = (montecarlo.log_mean_exp(lw32, dim=0) - montecarlo.log_mean_exp(lw64, dim=0)).abs().max().item()
        res["float64_vs_float32"] = {"max_abs_diff_L5000_nats": diff, "seconds_float32": round(t32, 2),
                                     "seconds_float64": round(t64, 2), "images": len(x)}
        bounds = zoo.likelihood_bounds(name, run)[max(zoo.likelihood_setup(run)[1])]
        res["nll_by_images"] = {str(n): {"nll": round(-bounds[:n].mean().item(), 3),
                                         "standard_error": round((bounds[:n].std() / math.sqrt(n)).item(), 3)}
                                for n in (100, 250, len(bounds))}
        record["models"][name] = res
        print(name, res, flush=True)
    record["matmul_gflops"] = round(matmul_gflops(), 1)
    print(f"float32 4096² matmul: {record['matmul_gflops']} GFLOP/s")
    append_result(RESULTS, record)


if __name__ == "__main__":
    main()
