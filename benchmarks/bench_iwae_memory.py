"""Peak memory and time of a k = 5000 importance-weighted bound over the 10,000 MNIST test images.

The model is a stand-in with everything exact: probabilistic PCA (``fit_ppca``, D = 784, d = 20)
fitted to the MNIST training set, with the exact posterior, deliberately perturbed, as the encoder.
Its decoder materialises the ``[S, B, 784]`` means like a neural decoder would, so the memory
profile is the one a VAE evaluation has; and the exact log p(x) tells how close the bound gets.

Run ``python benchmarks/bench_iwae_memory.py`` (``--n-test 1000`` for a quick look). Peak memory is
the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just before the IWAE
so that loading data does not count); the run is appended to ``benchmarks/results/iwae_memory.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from common import append_result, machine_info  # noqa: E402

from latentbook.losses import default_chunk_size, iwae_bound_dataset  # noqa: E402
from latentbook.ppca import LinearGaussian, fit_ppca  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "iwae_memory.json"
MiB = 2**20


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident memory in bytes: VmHWM where /proc exists, else getrusage's ru_maxrss."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def setup(d: int, n_test: int) -> tuple[LinearGaussian, torch.Tensor, str]:
    """The fitted model and the test images ``[n_test, 784]``; random stand-ins if MNIST is unavailable."""
    try:
        from latentbook import data

        x_train, _ = data.load("mnist", "train")
        x_test, _ = data.load("mnist", "test", n=n_test)
        model = fit_ppca(x_train, d)
        return model, x_test.reshape(n_test, -1), f"MNIST: pPCA fitted on train (60000), bound on test[:{n_test}]"
    except Exception as exc:
        g = torch.Generator().manual_seed(0)
        Q = torch.linalg.qr(torch.randn(784, d, generator=g, dtype=torch.float64)).Q
        model = LinearGaussian(Q * torch.linspace(2.0, 0.5, d, dtype=torch.float64), torch.zeros(784, dtype=torch.float64), 0.01)
        return model, model.sample(n_test, generator=g), f"RANDOM pPCA model and samples (MNIST unavailable: {exc!r})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: automatic")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    info = machine_info()
    model, x_test, source = setup(args.d, args.n_test)
    print(f"data: {source}\nmodel: {model}")
    exact = model.log_marginal(x_test)

    def encode(x):
        """The exact (diagonal) posterior, shifted by half a standard deviation and 35 % too wide."""
        mu, logvar = model.encode(x)
        return mu + 0.5 * torch.exp(0.5 * logvar), logvar + 0.6

    q_mu, q_logvar = encode(x_test)
    elbo = model.elbo(x_test, q_mu, q_logvar)
    del q_mu, q_logvar

    chunk = args.chunk_size or default_chunk_size(min(args.batch_size, args.n_test) * model.D, args.k)
    rss_before = _status_bytes("VmRSS")
    peak_was_reset = reset_peak()
    t0 = time.perf_counter()
    bound = iwae_bound_dataset(
        encode, model.decode_log_prob, x_test, args.k, batch_size=args.batch_size,
        chunk_size=chunk, generator=torch.Generator().manual_seed(1),
    )
    seconds = time.perf_counter() - t0
    peak = peak_rss()

    gap = exact - bound
    result = {
        "n_test": args.n_test, "k": args.k, "d": args.d, "D": model.D,
        "batch_size": args.batch_size, "chunk_size": chunk, "chunk_size_automatic": args.chunk_size is None,
        "seconds": round(seconds, 2),
        "decoder_evaluations_per_s": round(args.n_test * args.k / seconds),
        "rss_before_MiB": None if rss_before is None else round(rss_before / MiB, 1),
        "peak_rss_MiB": round(peak / MiB, 1),
        "peak_is_iwae_only": peak_was_reset,
        "peak_above_before_MiB": None if rss_before is None else round((peak - rss_before) / MiB, 1),
        "mean_exact_log_px": float(exact.mean()),
        "mean_iwae_bound": float(bound.mean()),
        "mean_elbo_of_q": float(elbo.mean()),
        "mean_gap_exact_minus_iwae": float(gap.mean()),
        "gap_standard_error": float(gap.std() / math.sqrt(len(gap))),
        "max_abs_gap": float(gap.abs().max()),
    }
    print(f"k={args.k} on {args.n_test} images (batch {args.batch_size}, chunk {chunk}): "
          f"{seconds:.1f} s, peak RSS {result['peak_rss_MiB']:.0f} MiB "
          f"({'during the IWAE' if peak_was_reset else 'over the whole process'}; RSS before it {result['rss_before_MiB']} MiB)")
    print(f"mean exact log p(x) {result['mean_exact_log_px']:.3f} | IWAE {result['mean_iwae_bound']:.3f} "
          f"| ELBO of q {result['mean_elbo_of_q']:.3f} | gap {result['mean_gap_exact_minus_iwae']:.4f} "
          f"± {result['gap_standard_error']:.4f}")
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "benchmark": "IWAE memory",
        "data": source,
        "machine": info | {"loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "results": result,
    }
    if not args.no_save:
        append_result(RESULTS, record)
        print(f"appended to {RESULTS}")
    return record


if __name__ == "__main__":
    main()
