"""What every benchmark records: the machine it ran on, and its results appended atomically.

Benchmarks compare methods within one run (ratios); absolute seconds depend on the machine and on
its load, which is recorded at the start of every run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's latentbook, uninstalled too


def machine_info(device: torch.device | None = None) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device = torch.device("cpu"), n: int = 4096, reps: int = 5) -> float:
    """Best FLOP/s of ``[n, n] @ [n, n]`` in float32 over ``reps`` timed runs (after a warm-up): the
    machine's speed, recorded beside every timing so that runs on machines of other speeds compare."""
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


def matmul_gflops(device: torch.device = torch.device("cpu")) -> float:
    return matmul_flops(device) / 1e9


def append_result(path: Path, record: dict) -> None:
    """Append ``record`` to the JSON list of runs at ``path``, atomically (the package's one atomic write)."""
    from latentbook import store

    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs.append(record)
    store.write_text(path, json.dumps({"runs": runs}, indent=2) + "\n")
