"""The book's headline numbers before and after a change of recipes: are they within the tolerances?

    python benchmarks/headline_numbers.py --save results/headlines_before.json   # before the change (after a full build)
    python benchmarks/headline_numbers.py --before results/headlines_before.json # after it (after a full build)

Reads the values each executed full-mode chapter handed to its prose (``glue``) from ``_executed/full``. With
``--before`` it writes ``results/headline_numbers.md``: each headline number before and after, and whether the
change is within its tolerance: test MSE within 3% (relative), negative log-likelihood and ELBO within 0.5 nat,
linear-probe accuracies within 1 point, anomaly-detection ROC AUC within 0.01. Lower is better for MSE, NLL and
−ELBO; higher for accuracies and AUC; a change for the better is always within.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# (chapter, glue name, what it is, kind); kind sets the tolerance and which way is better
HEADLINES = [
    ("autoencoders", "mse_AE2", "MLP autoencoder d = 2, test MSE", "mse"),
    ("autoencoders", "mlp8", "MLP autoencoder d = 8, test MSE", "mse"),
    ("autoencoders", "mse_AE32", "MLP autoencoder d = 32, test MSE", "mse"),
    ("autoencoders", "conv8", "conv autoencoder d = 8, test MSE", "mse"),
    ("autoencoders", "mse_conv32", "conv autoencoder d = 32, test MSE", "mse"),
    ("autoencoders", "mse_lin", "linear autoencoder d = 6, test MSE", "mse"),
    ("autoencoders", "probe_ae", "linear probe on the AE's 2-D code (%)", "accuracy"),
    ("regularised", "clean_ae", "ae-32 on clean test images, MSE", "mse"),
    ("regularised", "clean_dae", "Gaussian DAE on clean test images, MSE", "mse"),
    ("regularised", "err_gaussian_denoising", "Gaussian DAE, denoising MSE", "mse"),
    ("regularised", "err_salt_and_pepper_denoising", "salt-and-pepper DAE, denoising MSE", "mse"),
    ("regularised", "err_masking_denoising", "masking DAE, denoising MSE", "mse"),
    ("regularised", "mse_sh_plain", "one-layer sigmoid AE, test MSE", "mse"),
    ("regularised", "mse_sh_contractive", "contractive AE, test MSE", "mse"),
    ("applications", "digit_roc_auc", "anomaly AUC: held-out digit 8", "auc"),
    ("applications", "other_roc_auc", "anomaly AUC: Fashion-MNIST", "auc"),
    ("applications", "noisy_roc_auc", "anomaly AUC: noisy digits", "auc"),
    ("applications", "raw_first", "probe on raw pixels, fewest labels (%)", "accuracy"),
    ("applications", "best_acc_0", "best probe, 100 labels (%)", "accuracy"),
    ("applications", "best_acc_1", "best probe, 300 labels (%)", "accuracy"),
    ("applications", "best_acc_2", "best probe, 1,000 labels (%)", "accuracy"),
    ("vae", "elbo_2", "VAE d = 2, test −ELBO (nats)", "nats"),
    ("vae", "elbo_32", "VAE d = 32, test −ELBO (nats)", "nats"),
    ("vae", "elbo_conv", "conv VAE d = 32, test −ELBO (nats)", "nats"),
    ("vae", "mse_2", "VAE d = 2, test MSE", "mse"),
    ("vae", "mse_32", "VAE d = 32, test MSE", "mse"),
    ("vae", "mse_conv", "conv VAE d = 32, test MSE", "mse"),
    ("vae", "mse_g", "VAE with a Gaussian decoder, test MSE", "mse"),
    ("vae", "nll2", "VAE d = 2, test NLL, k = 5,000 (nats)", "nats"),
    ("vae", "nll32", "VAE d = 32, test NLL, k = 5,000 (nats)", "nats"),
    ("vae", "nllconv", "conv VAE d = 32, test NLL, k = 5,000 (nats)", "nats"),
    ("vae", "negelbo_1", "β-sweep model β = 1, test −ELBO (nats)", "nats"),
    ("conditional-vae", "elbo_c", "conditional VAE d = 32, test −ELBO (nats)", "nats"),
    ("conditional-vae", "probe_u32", "probe on the VAE's 32-D code (%)", "accuracy"),
    ("conditional-vae", "probe_c32", "probe on the conditional VAE's 32-D code (%)", "accuracy"),
    ("conditional-vae", "probe_u2", "probe on the VAE's 2-D code (%)", "accuracy"),
    ("conditional-vae", "probe_c2", "probe on the conditional VAE's 2-D code (%)", "accuracy"),
    ("side-by-side", "bound_vae", "VAE-32 −ELBO on the 100 images of 'Beyond the VAE' (nats)", "nats"),
]
TOLERANCE = {"mse": ("relative", 0.03), "nats": ("absolute", 0.5), "accuracy": ("absolute", 1.0),
             "auc": ("absolute", 0.01)}
HIGHER_IS_BETTER = {"accuracy", "auc"}


def glued(executed: Path) -> dict[str, dict[str, str]]:
    """``{chapter: {glue name: text}}`` from the executed notebooks in ``executed``."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(executed.glob("*.ipynb")):
        nb, values = json.loads(path.read_text()), {}
        for cell in nb["cells"]:
            for o in cell.get("outputs", []):
                name = o.get("metadata", {}).get("scrapbook", {}).get("name")
                if name:
                    values[name] = o["data"].get("application/papermill.record/text/plain", "").strip("'\"")
        out[path.stem] = values
    return out


def number(text: str) -> float:
    return float(text.replace(",", "").replace("−", "-"))


def verdict(kind: str, before: float, after: float) -> tuple[str, bool]:
    """``(the change in words, within the tolerance)``."""
    worse = (before - after) if kind in HIGHER_IS_BETTER else (after - before)
    how, tol = TOLERANCE[kind]
    if how == "relative":
        rel = worse / abs(before)
        return f"{100 * (after / before - 1):+.1f}%", rel <= tol + 1e-12
    return f"{after - before:+.2f}", worse <= tol + 1e-9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=ROOT / "_executed" / "full")
    parser.add_argument("--save", type=Path, help="write the current glued values here (the 'before')")
    parser.add_argument("--before", type=Path, help="compare the current values with these")
    args = parser.parse_args()
    now = glued(args.executed)
    if args.save:
        args.save.write_text(json.dumps(now, indent=1, ensure_ascii=False) + "\n")
        print(f"saved {sum(map(len, now.values()))} values of {len(now)} chapters to {args.save}")
    if not args.before:
        return
    before = json.loads(args.before.read_text())
    lines = ["| chapter | number | before | after | change | tolerance | within |", "|---|---|---|---|---|---|---|"]
    failures = 0
    missing = sorted({chapter for chapter, *_ in HEADLINES if chapter not in now})
    for chapter, name, what, kind in HEADLINES:
        if chapter in missing:
            continue
        b, a = number(before[chapter][name]), number(now[chapter][name])
        change, ok = verdict(kind, b, a)
        failures += not ok
        how, tol = TOLERANCE[kind]
        tol_text = f"{100 * tol:.0f}% worse" if how == "relative" else f"{tol:g} worse"
        lines.append(f"| {chapter} | {what} | {before[chapter][name]} | {now[chapter][name]} | {change} | {tol_text} | "
                     f"{'yes' if ok else '**no**'} |")
    lines.append("")
    compared = sum(chapter not in missing for chapter, *_ in HEADLINES)
    lines.append(f"{compared - failures} of {compared} within their tolerance"
                 + (f" (not executed here: {', '.join(missing)})." if missing else "."))
    table = "\n".join(lines) + "\n"
    (HERE / "results" / "headline_numbers.md").write_text(
        "# Headline numbers before and after the faster recipes (issue 17)\n\n"
        "Written by `benchmarks/headline_numbers.py` from the executed full-mode chapters.\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
