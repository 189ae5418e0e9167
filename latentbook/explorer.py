"""Latent explorers: move a point through a two-dimensional code space and see what the decoder makes of it.

* :func:`live_explorer`: two ipywidgets sliders, the codes of real images with the point marked, and
  the decoded image. Needs a running kernel (Jupyter, Colab).
* :func:`static_explorer`: the same for the book's static website, with no kernel: the decoder's weights
  are exported to a compact file (:func:`export_decoder`) and a small script of ours
  (``explorer.js``, inlined in the output) runs the decoder in the reader's browser. It works from the
  keyboard too (Tab to the plane, arrow keys move the point, Shift for bigger steps) and announces the
  point's coordinates and the nearest code's class in a polite live region, for screen readers.
* :func:`interpolation_explorer`: sliders for two test images and a position t along the line
  between their codes.

The weights file is little-endian float16: for each layer of the decoder its weight ``[out, in]`` and
bias ``[out]``, then the codes ``[n, 2]`` drawn under the plane, then their labels as uint8. Its layout
and SHA-256 travel in the HTML (``data-meta``), so a stale or damaged file is refused in the browser.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from latentbook import store

MAX_CODES = 2000  # codes drawn under the plane (in the file and in the live scatter): enough to see the shape
_ACTIVATIONS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


def decoder_layers(model: nn.Module) -> list[tuple[nn.Linear, str]]:
    """The decoder of a 2-D MLP autoencoder or VAE as ``[(linear, activation after it), ...]``.

    The last layer's activation is what ``model.decode`` applies: ``"sigmoid"`` for a VAE and for an
    autoencoder with a sigmoid output, ``"none"`` for a linear output. Raises ValueError for a decoder
    that is not Linear/ReLU layers (a convolutional one) or a code that is not two-dimensional.
    """
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no nn.Sequential decoder to export")
    layers: list[list[Any]] = []
    for module in decoder:
        if isinstance(module, nn.Linear):
            layers.append([module, "none"])
        elif type(module) in _ACTIVATIONS and layers and layers[-1][1] == "none":
            layers[-1][1] = _ACTIVATIONS[type(module)]
        elif isinstance(module, (nn.Unflatten, nn.Identity)):
            continue
        else:
            raise ValueError(f"the in-browser decoder supports Linear and ReLU layers, not {type(module).__name__} "
                             "(export an MLP model)")
    if not layers or layers[0][0].in_features != 2:
        raise ValueError("the explorer needs a decoder from a two-dimensional code")
    if layers[-1][0].out_features != 28 * 28 or layers[-1][1] != "none":
        raise ValueError("the decoder must end in a Linear layer with 784 outputs (pixel logits)")
    layers[-1][1] = "sigmoid" if getattr(model, "output", "sigmoid") == "sigmoid" else "none"
    return [(lin, act) for lin, act in layers]


def _subset(codes: Tensor, labels: Tensor | None, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    codes = torch.as_tensor(codes).detach().to("cpu", torch.float32)
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must be [N, 2], got {tuple(codes.shape)}")
    y = (torch.zeros(len(codes), dtype=torch.long) if labels is None
         else torch.as_tensor(labels).detach().to("cpu").long().reshape(-1))
    if len(y) != len(codes):
        raise ValueError(f"{len(codes)} codes but {len(y)} labels")
    if len(y) and not (0 <= int(y.min()) and int(y.max()) < 256):
        raise ValueError("labels must be class indices in 0..255")
    idx = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))[:n]
    return codes[idx].numpy(), y[idx].numpy().astype(np.uint8)


def export_decoder(model: nn.Module, codes: Tensor, labels: Tensor | None, path: str | os.PathLike,
                   *, max_codes: int = MAX_CODES) -> dict[str, Any]:
    """Write the decoder's weights and up to ``max_codes`` of ``codes [N, 2]`` (with ``labels [N]``)
    to ``path`` atomically; return the metadata that reads it back (layers, n_codes, sha256, bytes)."""
    layers = decoder_layers(model)
    c, y = _subset(codes, labels, max_codes)
    parts = []
    for lin, _ in layers:
        parts += [lin.weight.detach().cpu().float().numpy().ravel(), lin.bias.detach().cpu().float().numpy()]
    parts.append(c.ravel())
    payload = np.concatenate(parts).astype("<f2").tobytes() + y.tobytes()
    with store.atomic_path(path) as tmp:  # no half-written file, even if interrupted
        tmp.write_bytes(payload)
    return {
        "layers": [{"in": lin.in_features, "out": lin.out_features, "act": act} for lin, act in layers],
        "n_codes": len(c), "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload),
    }


def read_decoder(path: str | os.PathLike, meta: dict[str, Any]) -> tuple[list[tuple[Tensor, Tensor, str]], Tensor, Tensor]:
    """Read a file written by :func:`export_decoder`: ``([(weight, bias, act), ...], codes [n, 2], labels [n])``.

    Checks the size and checksum first (ValueError if they do not match ``meta``).
    """
    payload = Path(path).read_bytes()
    if len(payload) != meta["bytes"] or hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise ValueError(f"{path} does not match its metadata (size or SHA-256): a stale or damaged export")
    n_half = (len(payload) - meta["n_codes"]) // 2
    values = torch.from_numpy(np.frombuffer(payload[: 2 * n_half], dtype="<f2").astype(np.float32))
    pos, layers = 0, []
    for layer in meta["layers"]:
        n_w, n_b = layer["out"] * layer["in"], layer["out"]
        w = values[pos : pos + n_w].reshape(layer["out"], layer["in"])
        layers.append((w, values[pos + n_w : pos + n_w + n_b], layer["act"]))
        pos += n_w + n_b
    codes = values[pos:].reshape(-1, 2)
    labels = torch.from_numpy(np.frombuffer(payload[2 * n_half :], dtype=np.uint8).copy())
    return layers, codes, labels


def run_layers(layers: Sequence[tuple[Tensor, Tensor, str]], z: Tensor) -> Tensor:
    """The exported decoder as explorer.js computes it: ``z [B, 2] -> images [B, 784]`` in [0, 1]."""
    h = z.float()
    for w, b, act in layers:
        h = h @ w.T + b
        h = torch.relu(h) if act == "relu" else torch.sigmoid(h) if act == "sigmoid" else h
    return h


def static_explorer(model: nn.Module, codes: Tensor, labels: Tensor | None = None,
                    classes: Sequence[str] | None = None, *, name: str = "explorer",
                    folder: str | os.PathLike = "explorer", url: str | None = None,
                    lim: float = 4.0, start: Sequence[float] = (0.0, 0.0)):
    """Export ``model``'s decoder to ``folder/name.bin`` and return an HTML display of the in-browser explorer.

    ``url`` is where the page finds the file; by default ``../explorer/<name>.bin``, where the book
    build puts it (next to the chapter pages' folder). In a notebook the file is usually not served
    there, and the explorer says so: use :func:`live_explorer` with a kernel.
    """
    from IPython.display import HTML

    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name must be letters, digits, '-' or '_', got {name!r}")
    if not (isinstance(lim, (int, float)) and lim > 0):
        raise ValueError(f"lim must be a positive number, got {lim!r}")
    meta = export_decoder(model, codes, labels, Path(folder) / f"{name}.bin")
    meta.update(lim=[-float(lim), float(lim)], start=[float(v) for v in start],
                classes=list(classes) if classes is not None else [])
    script = (Path(__file__).with_name("explorer.js")).read_text()
    src = url or f"../explorer/{name}.bin"
    return HTML(
        f'<div class="lb-explorer" id="lb-explorer-{name}" data-src="{html_lib.escape(src)}" '
        f"data-meta='{html_lib.escape(json.dumps(meta), quote=True)}'>"
        "The latent explorer needs JavaScript.</div>\n"
        f"<script>\n{script}</script>"
    )


def explorer_figure(model: nn.Module, codes: np.ndarray, labels: np.ndarray,
                    z: Sequence[float], bounds: Sequence[Sequence[float]]):
    """One frame of the live explorer: ``codes [N, 2]`` with ``z`` marked, over
    ``bounds = ((lo₁, hi₁), (lo₂, hi₂))``, and the image ``model`` decodes at ``z``."""
    import matplotlib.pyplot as plt

    from latentbook import evaluate, plots

    # created outside the style context, as in lb.plots (the first figure of a session sets up the backend)
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.4), width_ratios=[1.3, 1], layout="constrained")
    plt.close(fig)  # shown once, as the return value
    with plots.use_style():
        plots.latent_scatter(codes, labels, ax=a, title="codes of test images")
        if a.get_legend() is not None:
            a.get_legend().remove()
        a.set(xlim=bounds[0], ylim=bounds[1])
        a.plot([z[0]], [z[1]], marker="X", color="black", markersize=12)
        image = evaluate.decode(model, torch.tensor([list(z)], dtype=torch.float32)).reshape(28, 28).numpy()
        b.imshow(image, cmap="gray", vmin=0, vmax=1)
        b.set_title(f"decoded at ({z[0]:.2f}, {z[1]:.2f})")
        b.axis("off")
    return fig


def live_explorer(model: nn.Module, codes: Tensor, labels: Tensor | None = None, *,
                  lim: float | None = None, bounds: Sequence[Sequence[float]] | None = None,
                  start: Sequence[float] | None = None):
    """ipywidgets: sliders for ``(z₁, z₂)``; shows the point among ``codes [N, 2]`` (coloured by
    ``labels``) and the image ``model.decode`` makes of it. Returns the widget.

    The sliders span ``[-lim, lim]`` on both axes, or ``bounds = ((lo₁, hi₁), (lo₂, hi₂))``, or by
    default the range of the codes; they start at ``start`` (default: the middle).
    """
    import ipywidgets as widgets
    from IPython.display import display

    c, y = _subset(codes, labels, MAX_CODES)
    if bounds is None:
        if lim is not None:
            bounds = ((-lim, lim), (-lim, lim))
        else:
            lo, hi = c.min(0), c.max(0)
            bounds = tuple((float(a - 0.05 * (b - a)), float(b + 0.05 * (b - a))) for a, b in zip(lo, hi))
    (lo1, hi1), (lo2, hi2) = bounds
    if not (lo1 < hi1 and lo2 < hi2):
        raise ValueError(f"bounds must be ((lo₁, hi₁), (lo₂, hi₂)) with lo < hi, got {bounds!r}")
    start = start if start is not None else ((lo1 + hi1) / 2, (lo2 + hi2) / 2)

    def show(z1: float, z2: float) -> None:
        # interactive() (unlike interact()) does not display return values: show the frame ourselves
        display(explorer_figure(model, c, y, (z1, z2), bounds))

    def slider(value: float, lo: float, hi: float, label: str):
        return widgets.FloatSlider(value=value, min=lo, max=hi, step=(hi - lo) / 100, description=label,
                                   continuous_update=False)

    return widgets.interactive(show, z1=slider(start[0], lo1, hi1, "z₁"), z2=slider(start[1], lo2, hi2, "z₂"))


def interpolation_explorer(model: nn.Module, x: Tensor, labels: Tensor | None = None, *, steps: int = 9):
    """ipywidgets: pick two images of ``x [N, 1, 28, 28]`` by index; see the straight line between
    their codes decoded in ``steps`` images, above the same line in pixel space. Returns the widget."""
    import ipywidgets as widgets
    from IPython.display import display
    from latentbook import evaluate, plots

    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    t = torch.linspace(0, 1, steps).view(-1, 1)

    def show(a: int, b: int) -> None:
        xa, xb = x[a : a + 1], x[b : b + 1]
        za, zb = evaluate.encode(model, xa).cpu(), evaluate.encode(model, xb).cpu()
        ta = t.view(-1, 1, 1, 1).to(x.device)
        rows = [(1 - ta) * xa + ta * xb, evaluate.decode(model, (1 - t) * za + t * zb)]
        name = (lambda i: f"#{i}" if labels is None else f"#{i} ({int(labels[i])})")
        display(plots.image_grid(rows, row_labels=["pixels", "codes"],
                                col_labels=[f"t={v:.2g}" for v in t.flatten().tolist()],
                                title=f"from test image {name(a)} to {name(b)}"))

    def pick(value: int, label: str):
        return widgets.IntSlider(value=value, min=0, max=len(x) - 1, description=label, continuous_update=False)

    return widgets.interactive(show, a=pick(0, "from"), b=pick(1, "to"))
