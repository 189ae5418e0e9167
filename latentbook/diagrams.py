"""Pictures of ideas: the book's concept figures, drawn from the numbers a chapter computes.

Each figure function takes what it draws as arguments (layer shapes recorded from a real model, the
gradients of a real forward pass, bounds and divergences a chapter computed) and returns a
:class:`~matplotlib.figure.Figure` in the book's style (:mod:`latentbook.plots`): detached from pyplot,
so a notebook shows it once, when a cell ends with it. Inputs that would make a figure lie (an ELBO
above log p(x), a negative KL, bounds that fall as k grows) raise ``ValueError``.

- :func:`layer_shapes` + :func:`autoencoder_diagram`: encoder, code and decoder with each layer's shape;
- :func:`reparam_gradients` + :func:`vae_graph`: the VAE's computational graph and where gradients flow;
- :func:`in_region` + :func:`prior_darts`: naive Monte Carlo's prior samples against a posterior's region;
- :func:`elbo_gap`: log p(x) = ELBO + KL(q || p(z|x)) as segments;
- :func:`iwae_ladder`: L_1 <= L_k <= ... <= log p(x);
- :func:`rate_distortion`: β-VAE runs in the rate–distortion plane with the lines of equal ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import Tensor, nn

from latentbook import losses, models
from latentbook.plots import _figure, _numpy

__all__ = [
    "layer_shapes",
    "autoencoder_diagram",
    "reparam_gradients",
    "GRAPH_EDGES",
    "vae_graph",
    "in_region",
    "prior_darts",
    "elbo_gap",
    "iwae_ladder",
    "rate_distortion",
]

# One colour per role, the same in every diagram (tab10, as in latentbook.plots).
ENCODER, CODE, DECODER, DATA = "C0", "C1", "C2", "0.55"
NO_GRAD = "0.6"
GRAD_COLOURS = {frozenset({"φ"}): "C0", frozenset({"φ", "θ"}): "C4", frozenset({"θ"}): "C2"}


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a number, got {v!r}")
    try:
        f = float(_numpy(v)) if isinstance(v, torch.Tensor) else float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


def _tol(*values: float) -> float:
    """Round-off allowance for comparisons of nats: relative 1e-9 of the largest magnitude."""
    return 1e-9 * max([1.0, *(abs(v) for v in values)])


# ---------------------------------------------------------------------------------------------
# 1. Autoencoders, with the shapes of their layers
# ---------------------------------------------------------------------------------------------


def _layer_name(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return f"conv {m.kernel_size[0]}×{m.kernel_size[1]}, stride {m.stride[0]}"
    if isinstance(m, nn.ConvTranspose2d):
        return f"conv$^T$ {m.kernel_size[0]}×{m.kernel_size[1]}, stride {m.stride[0]}"
    if isinstance(m, nn.Linear):
        return "linear"
    return type(m).__name__.lower()


_SAME_SHAPE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Identity)


def layer_shapes(model: nn.Module, image_shape: Sequence[int] = models.IMAGE_SHAPE) -> dict[str, Any]:
    """The shapes a real forward pass produces, recorded by hooks on every layer of the model.

    model: an autoencoder or VAE of :mod:`latentbook.models` (``encoder`` and ``decoder``
    ``nn.Sequential``). One dummy image ``[1, *image_shape]`` goes through ``model.encode`` and the code
    through ``model.decode_logits``. Returns ``{"input": shape, "encoder": [(layer, shape), ...],
    "code": shape, "decoder": [...]}``, shapes without the batch dimension; layers that keep the shape
    (activations) are folded into the name of the layer before them (``"linear + relu"``). A VAE's
    encoder output ``2d`` is split into μ and log σ², so its ``"code"`` is ``(d,)``.
    """
    for part in ("encoder", "decoder"):
        if not isinstance(getattr(model, part, None), nn.Sequential):
            raise ValueError(f"{type(model).__name__} has no nn.Sequential .{part}; layer_shapes needs one")
    records: dict[str, list[tuple[nn.Module, tuple[int, ...]]]] = {"encoder": [], "decoder": []}
    handles = []
    for part in records:
        for layer in getattr(model, part):
            def hook(mod, inp, out, part=part):
                records[part].append((mod, tuple(out.shape[1:])))
            handles.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            x = torch.zeros(1, *image_shape, device=device)
            code = model.encode(x)
            z = code[0] if isinstance(code, tuple) else code  # a VAE: (mu, logvar) -> mu
            model.decode_logits(z)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def fold(recs: list[tuple[nn.Module, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
        out: list[tuple[str, tuple[int, ...]]] = []
        for mod, shape in recs:
            if isinstance(mod, _SAME_SHAPE) and out:
                out[-1] = (f"{out[-1][0]} + {type(mod).__name__.lower()}", out[-1][1])
            else:
                out.append((_layer_name(mod), shape))
        return out

    return {"input": tuple(image_shape), "encoder": fold(records["encoder"]), "code": tuple(z.shape[1:]),
            "decoder": fold(records["decoder"])}


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def _block_height(shape: Sequence[int], biggest: int) -> float:
    """Height ∝ log of the number of values, so 2 and 784 both show (0.25 .. 1)."""
    return 0.25 + 0.75 * math.log(math.prod(shape)) / math.log(max(biggest, 3))


def autoencoder_diagram(nets: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """One row per network: the input, every layer's output (a block labelled with its shape), the code.

    nets: ``{name: layer_shapes(model)}``. Block heights grow with the log of the number of values;
    encoder blocks are blue, the code orange, decoder blocks green; the layer producing each block is
    named under it. Each shape label is a Text with gid ``"shape:<part>:<i>"`` (tests read them back).
    """
    if not nets:
        raise ValueError("nets is empty: pass {name: layer_shapes(model)}")
    rows = []
    for name, s in nets.items():
        missing = {"input", "encoder", "code", "decoder"} - set(s)
        if missing:
            raise ValueError(f"{name!r} lacks {sorted(missing)}: pass layer_shapes(model)")
        enc, dec = list(s["encoder"]), list(s["decoder"])
        if not enc or not dec:
            raise ValueError(f"{name!r} has an empty encoder or decoder")
        blocks = [("input", "input", tuple(s["input"]), DATA)]
        blocks += [("encoder", lyr, tuple(sh), ENCODER) for lyr, sh in enc[:-1]]
        blocks += [("code", enc[-1][0], tuple(enc[-1][1]), CODE)]
        blocks += [("decoder", lyr, tuple(sh), DECODER) for lyr, sh in dec]
        rows.append((name, s, blocks))
    n_max = max(len(b) for _, _, b in rows)
    biggest = max(math.prod(sh) for _, _, b in rows for _, _, sh, _ in b)
    with _figure(None, (7.0, 2.0 * len(rows) + 0.3)) as (fig, axes):
        ax = axes[0, 0]
        ax.set_axis_off()
        step, w = 1.0, 0.34
        for r, (name, s, blocks) in enumerate(rows):
            y0 = -2.0 * r
            ax.text(-0.6, y0 + 0.92, name, ha="left", va="bottom", fontsize=9, fontweight="bold")
            counters = {"input": 0, "encoder": 0, "code": 0, "decoder": 0}
            for i, (part, layer, shape, colour) in enumerate(blocks):
                h = _block_height(shape, biggest)
                x = i * step * (n_max - 1) / max(len(blocks) - 1, 1)
                ax.add_patch(Rectangle((x - w / 2, y0 - h / 2), w, h, facecolor=colour, alpha=0.85,
                                       edgecolor="black", linewidth=0.6))
                label = ("code\n" if part == "code" else "") + _shape_text(shape)
                t = ax.text(x, y0 + h / 2 + 0.05, label, ha="center", va="bottom", fontsize=8.5)
                t.set_gid(f"shape:{part}:{counters[part]}")
                counters[part] += 1
                if i:
                    xp = (i - 1) * step * (n_max - 1) / max(len(blocks) - 1, 1)
                    ax.annotate("", (x - w / 2, y0), (xp + w / 2, y0),
                                arrowprops={"arrowstyle": "-|>", "color": "0.3", "lw": 0.8, "shrinkA": 0,
                                            "shrinkB": 0})
                    ax.text(x, y0 - h / 2 - 0.05, layer.replace(" + ", "\n+ ").replace(", stride", "\nstride"),
                            ha="center", va="top", fontsize=7.5, color="0.2")
        handles = [Rectangle((0, 0), 1, 1, facecolor=c, alpha=0.85, edgecolor="black", linewidth=0.6)
                   for c in (DATA, ENCODER, CODE, DECODER)]
        ax.legend(handles, ["image", "encoder", "code (bottleneck)", "decoder (logits)"], loc="upper center",
                  bbox_to_anchor=(0.5, -0.01), ncol=4, frameon=False)
        ax.set_xlim(-0.65, (n_max - 1) * step + 0.65)
        ax.set_ylim(-2.0 * (len(rows) - 1) - 0.95, 1.25)
        if title:
            ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# 2. The VAE's computational graph: where the noise enters, which edges carry gradients
# ---------------------------------------------------------------------------------------------

GRAPH_EDGES: tuple[tuple[str, str, str], ...] = (
    # (from node, to node, the tensor that travels along the edge)
    ("x", "encoder", "x"),
    ("encoder", "mu", "mu"),
    ("encoder", "logvar", "logvar"),
    ("mu", "z", "mu"),
    ("logvar", "z", "logvar"),
    ("eps", "z", "eps"),
    ("z", "decoder", "z"),
    ("decoder", "x_hat", "logits"),
    ("x_hat", "recon", "logits"),
    ("x_target", "recon", "x"),
    ("mu", "kl", "mu"),
    ("logvar", "kl", "logvar"),
    ("recon", "loss", "recon"),
    ("kl", "loss", "kl"),
)
"""The edges :func:`vae_graph` draws, each named by the tensor of :func:`reparam_gradients` it carries."""


def reparam_gradients(model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> dict[str, dict]:
    """One real forward pass of a VAE's loss, and for each tensor: does the loss's gradient flow through it?

    x: images ``[B, 1, 28, 28]``. Computes ``mu, logvar = encode(x)``, ``eps ~ N(0, I)``,
    ``z = mu + exp(½ logvar) ⊙ eps`` (as :func:`latentbook.losses.reparameterize`), the decoder's
    ``logits``, ``recon = -log p(x|z)``, ``kl`` and ``loss = recon + kl`` (batch means). Returns
    ``{name: {"requires_grad": bool, "params": {"φ", "θ"} subset, "shape": tuple}}``: ``params`` says
    whose parameters (φ: the encoder's, θ: the decoder's) the tensor depends on, found with autograd.
    """
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    dec = [p for p in model.decoder.parameters() if p.requires_grad]
    with torch.enable_grad():
        x = models.as_images(x)
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.decode_logits(z)
        recon = -model.log_px_given_z(x, z).mean()
        kl = losses.gaussian_kl(mu, logvar).mean()
        loss = recon + kl
        tensors = {"x": x, "mu": mu, "logvar": logvar, "eps": eps, "z": z, "logits": logits, "recon": recon,
                   "kl": kl, "loss": loss}
        out = {}
        for name, t in tensors.items():
            params = set()
            if t.requires_grad:
                for group, ps in (("φ", enc), ("θ", dec)):
                    grads = torch.autograd.grad(t.sum(), ps, retain_graph=True, allow_unused=True)
                    if any(g is not None and bool(g.abs().sum() > 0) for g in grads):
                        params.add(group)
            out[name] = {"requires_grad": bool(t.requires_grad), "params": params, "shape": tuple(t.shape)}
    return out


_NODES = {  # name: (x, y, label, kind)
    "x": (0.0, 0.0, "$x$", "data"),
    "encoder": (1.35, 0.0, "encoder\n$q_\\phi$", "net_phi"),
    "mu": (2.75, 0.55, "$\\mu$", "tensor"),
    "logvar": (2.75, -0.55, "$\\log\\sigma^2$", "tensor"),
    "eps": (4.3, 1.45, "$\\varepsilon \\sim \\mathcal{N}(0, I)$", "noise"),
    "z": (4.3, 0.0, "$z = \\mu + \\sigma \\odot \\varepsilon$", "tensor"),
    "decoder": (5.85, 0.0, "decoder\n$p_\\theta$", "net_theta"),
    "x_hat": (7.15, 0.0, "$\\hat x$ (logits)", "tensor"),
    "x_target": (8.45, 1.45, "$x$", "data"),
    "recon": (8.45, 0.0, "$-\\log p_\\theta(x|z)$", "tensor"),
    "kl": (4.3, -1.35, "KL$(q_\\phi \\| p(z))$", "tensor"),
    "loss": (8.45, -1.35, "loss = $-$ELBO", "tensor"),
}


def _params_text(params: set[str]) -> str:
    return ", ".join(p for p in ("φ", "θ") if p in params)


def vae_graph(grads: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """The reparameterised VAE as a graph: x → encoder → (μ, log σ²), ε from the side, z = μ + σ ⊙ ε,
    decoder → x̂, the loss.

    grads: :func:`reparam_gradients`'s answer. An edge whose tensor requires no gradient is drawn
    dashed and grey and marked "no gradient"; the others solid, coloured by whose parameters their
    gradient reaches (blue: φ only, purple: φ and θ). Each edge's arrow has gid
    ``"edge:<from>-><to>:grad"`` or ``":nograd"``.
    """
    needed = {t for _, _, t in GRAPH_EDGES}
    missing = needed - set(grads)
    if missing:
        raise ValueError(f"grads lacks {sorted(missing)}: pass reparam_gradients(model, x)")
    for t in needed:
        g = grads[t]
        if bool(g["requires_grad"]) != bool(g["params"]):
            raise ValueError(f"tensor {t!r}: requires_grad={g['requires_grad']} but depends on {g['params'] or 'no'} "
                             "parameters; pass reparam_gradients' answer unchanged")
    with _figure(None, (7.0, 3.3)) as (fig, axes):
        ax = axes[0, 0]
        ax.set_axis_off()
        ax.set_xlim(-0.45, 9.35)
        ax.set_ylim(-1.85, 1.95)
        boxes = {}
        for name, (x, y, label, kind) in _NODES.items():
            style = {"data": ("white", "0.3"), "noise": ("#fde9e9", "C3"), "tensor": ("white", "0.3"),
                     "net_phi": ("#dbe9f6", ENCODER), "net_theta": ("#dcf2dc", DECODER)}[kind]
            t = ax.text(x, y, label, ha="center", va="center", fontsize=8.5, zorder=3,
                        bbox={"boxstyle": "round,pad=0.35" if kind != "data" else "circle,pad=0.25",
                              "facecolor": style[0], "edgecolor": style[1], "linewidth": 1.2 if "net" in kind else 0.8})
            boxes[name] = t
        for a, b, tensor in GRAPH_EDGES:
            g = grads[tensor]
            flows = bool(g["requires_grad"])
            colour = GRAD_COLOURS.get(frozenset(g["params"]), "C3") if flows else NO_GRAD
            arrow = FancyArrowPatch(
                posA=_NODES[a][:2], posB=_NODES[b][:2], patchA=boxes[a].get_bbox_patch(),
                patchB=boxes[b].get_bbox_patch(), arrowstyle="-|>", mutation_scale=10, color=colour,
                linestyle="-" if flows else (0, (3, 2)), linewidth=1.6 if flows else 1.1, zorder=2,
                shrinkA=2, shrinkB=2)
            arrow.set_gid(f"edge:{a}->{b}:{'grad' if flows else 'nograd'}")
            ax.add_patch(arrow)
            if not flows:
                xa, ya = _NODES[a][:2]
                xb, yb = _NODES[b][:2]
                ax.text((xa + xb) / 2 + (0.08 if xa == xb else 0), (ya + yb) / 2 - (0 if xa == xb else 0.12),
                        "no gradient", fontsize=7.5, color="0.3", style="italic",
                        ha="left" if xa == xb else "center", va="center" if xa == xb else "top", zorder=4)
        kinds = sorted({frozenset(grads[t]["params"]) for t in needed if grads[t]["requires_grad"]},
                       key=lambda s: (len(s), sorted(s)))
        handles = [Line2D([], [], color=GRAD_COLOURS.get(k, "C3"), lw=1.6) for k in kinds]
        labels = [f"gradient reaches {_params_text(set(k))}" for k in kinds]
        handles.append(Line2D([], [], color=NO_GRAD, lw=1.1, ls=(0, (3, 2))))
        labels.append("no gradient (requires_grad False)")
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(-0.01, -0.04), frameon=False, fontsize=8)
        if title:
            ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. Naive Monte Carlo: prior samples against the posterior's region
# ---------------------------------------------------------------------------------------------


def _grid_region(axis: Any, region: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _numpy(axis).astype(np.float64).reshape(-1)
    m = _numpy(region).astype(bool)
    if a.ndim != 1 or len(a) < 2 or not np.all(np.diff(a) > 0):
        raise ValueError("axis must be an increasing 1-D grid of at least 2 points")
    if m.shape != (len(a), len(a)):
        raise ValueError(f"region must be a boolean [n, n] mask over the grid axis × axis (n = {len(a)}), "
                         f"got shape {m.shape}")
    return a, m


def in_region(samples: Any, axis: Any, region: Any) -> Tensor:
    """Which 2-D points fall in a region given as grid cells -> bool ``[N]``.

    samples: ``[N, 2]``; axis: the grid's coordinates ``[n]`` (evenly spaced), the same on both axes;
    region: bool ``[n, n]``, ``region[i, j]`` for the cell centred at ``(axis[j], axis[i])`` (rows are
    z₂, as ``torch.meshgrid(axis, axis, indexing="xy")`` flattens). A point belongs to its nearest
    cell; points outside the grid are outside the region.
    """
    a, m = _grid_region(axis, region)
    s = _numpy(samples).astype(np.float64)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"samples must be [N, 2], got shape {s.shape}")
    step = (a[-1] - a[0]) / (len(a) - 1)
    idx = np.rint((s - a[0]) / step).astype(np.int64)  # [N, 2]: (column j from z1, row i from z2)
    ok = ((idx >= 0) & (idx < len(a))).all(1)
    out = np.zeros(len(s), dtype=bool)
    out[ok] = m[idx[ok, 1], idx[ok, 0]]
    return torch.from_numpy(out)


def prior_darts(samples: Any, axis: Any, region: Any, *, prior_mass: float | None = None,
                title: str | None = None) -> Figure:
    """Naive Monte Carlo as darts: codes from the prior N(0, I) thrown at the small region where the
    posterior (and so p(x|z)) is large.

    samples: prior codes ``[N, 2]``; axis, region: the region as grid cells (see :func:`in_region`);
    prior_mass: the prior probability of the region, if known (annotated). The prior's density is shaded;
    samples inside the region are drawn large and red, the others small and grey, and the count is
    written on the figure. The right panel zooms on the region. Scatter gids: ``"darts:in"``, ``"darts:out"``.
    """
    a, m = _grid_region(axis, region)
    if not m.any():
        raise ValueError("region is empty")
    if prior_mass is not None:
        prior_mass = _finite("prior_mass", prior_mass)
        if not 0 <= prior_mass <= 1:
            raise ValueError(f"prior_mass must be a probability in [0, 1], got {prior_mass}")
    s = _numpy(samples).astype(np.float64)
    inside = in_region(s, a, m).numpy()
    n_in, n = int(inside.sum()), len(s)
    zz1, zz2 = np.meshgrid(a, a, indexing="xy")
    density = np.exp(-0.5 * (zz1**2 + zz2**2)) / (2 * math.pi)
    rows, cols = np.nonzero(m)
    step = a[1] - a[0]
    lo = np.array([a[cols].min(), a[rows].min()]) - step
    hi = np.array([a[cols].max(), a[rows].max()]) + step
    centre, half = (lo + hi) / 2, min(max((hi - lo).max() / 2 * 2.2, 4 * step), (a[-1] - a[0]) / 2)
    with _figure(None, (7.0, 3.5), 1, 2, width_ratios=[1.0, 1.0]) as (fig, axes):
        for k, ax in enumerate(axes[0]):
            ax.contourf(zz1, zz2, density, levels=8, cmap="Blues", alpha=0.55)
            ax.contour(zz1, zz2, m.astype(float), levels=[0.5], colors="C3", linewidths=1.4)
            out_sc = ax.scatter(s[~inside, 0], s[~inside, 1], s=2 if k == 0 else 6, c="0.35",
                                alpha=max(0.1, min(0.5, 2000 / max(n, 1))) if k == 0 else 0.5,
                                linewidths=0, rasterized=True)
            in_sc = ax.scatter(s[inside, 0], s[inside, 1], s=18, c="C3", edgecolors="black", linewidths=0.5,
                               zorder=3)
            out_sc.set_gid("darts:out")
            in_sc.set_gid("darts:in")
            ax.set_aspect("equal")
            ax.set_xlabel("$z_1$")
            ax.set_ylabel("$z_2$")
            if k == 0:
                ax.set_xlim(a[0], a[-1])
                ax.set_ylim(a[0], a[-1])
                ax.add_patch(Rectangle(tuple(centre - half), 2 * half, 2 * half, fill=False, ec="black", lw=0.8))
                ax.set_title(f"{n:,} codes from the prior $p(z)$")
            else:
                ax.set_xlim(centre[0] - half, centre[0] + half)
                ax.set_ylim(centre[1] - half, centre[1] + half)
                ax.set_title("zoomed: the posterior's region (red)")
        share = f"{n_in:,} of {n:,} prior codes ({100 * n_in / max(n, 1):.2g}%) land in the region"
        if prior_mass is not None:
            share += f"; it holds {100 * prior_mass:.2g}% of the prior's mass"
        fig.suptitle(title or "naive Monte Carlo throws prior codes at a small target", fontsize=10)
        fig.supxlabel(share, fontsize=8.5)
    fig.n_inside = n_in  # what the annotation says, for tests and chapters
    return fig


# ---------------------------------------------------------------------------------------------
# 4. The ELBO's gap
# ---------------------------------------------------------------------------------------------


def elbo_gap(log_px: float, rows: Mapping[str, tuple[float, float]], *, unit: str = "nats",
             title: str | None = None) -> Figure:
    """log p(x) = ELBO(q) + KL(q || p(z|x)) for several q, as bars on one axis of nats.

    log_px: the exact log-evidence of one x; rows: ``{name of q: (elbo, kl)}``. Each row is a bar up to
    its ELBO (blue) followed by a segment of length KL (red) that ends at log p(x) (the dashed line).
    The bars start at 0, or, when every ELBO is positive and the gaps are small beside log p(x), at a
    level just left of the lowest ELBO (the axis is then broken, marked ``//``), so the gaps show.
    Raises ValueError where the figure would lie: a negative KL, an ELBO above log p(x), or
    ELBO + KL ≠ log p(x) beyond round-off. Bar gids: ``"elbo:<name>"``, ``"kl:<name>"``.
    """
    lp = _finite("log_px", log_px)
    if not rows:
        raise ValueError("rows is empty: pass {name: (elbo, kl)}")
    clean = {}
    for name, pair in rows.items():
        if len(pair) != 2:
            raise ValueError(f"row {name!r} must be (elbo, kl), got {pair!r}")
        e, k = _finite(f"ELBO of {name!r}", pair[0]), _finite(f"KL of {name!r}", pair[1])
        tol = _tol(lp, e, k)
        if k < -tol:
            raise ValueError(f"KL of {name!r} is negative ({k:.6g}): a KL divergence is >= 0")
        if e > lp + tol:
            raise ValueError(f"ELBO of {name!r} ({e:.6g}) exceeds log p(x) ({lp:.6g}): it is a lower bound")
        if abs(e + k - lp) > max(tol, 1e-6 * max(1.0, abs(lp))):
            raise ValueError(f"row {name!r}: ELBO + KL = {e + k:.6g} but log p(x) = {lp:.6g}; they must add up")
        clean[name] = (e, max(k, 0.0))
    names = list(clean)
    e_min = min(e for e, _ in clean.values())
    k_max = max(max(k for _, k in clean.values()), _tol(lp))
    broken = e_min > 0 and lp - e_min < 0.25 * lp
    start = e_min - 0.8 * k_max if broken else min(0.0, e_min)
    span = lp - start
    with _figure(None, (7.0, 0.5 * len(names) + 1.4)) as (fig, axes):
        ax = axes[0, 0]
        ys = np.arange(len(names))[::-1]
        for y, name in zip(ys, names):
            e, k = clean[name]
            b1 = ax.barh(y, e - start, left=start, height=0.55, color=ENCODER, alpha=0.85)[0]
            b2 = ax.barh(y, k, left=e, height=0.55, color="C3", alpha=0.85)[0]
            b1.set_gid(f"elbo:{name}")
            b2.set_gid(f"kl:{name}")
            label = f"KL = {k:.3g}" if k >= 0.005 else "KL = 0"
            ax.text(lp + 0.01 * span, y, label, va="center", ha="left", fontsize=8, color="C3")
            ax.text(e - 0.01 * span, y, f"ELBO = {e:.4g}", va="center", ha="right", fontsize=8, color="white")
        ax.axvline(lp, color="black", ls="--", lw=1)
        ax.text(lp + 0.01 * span, len(names) - 0.45, f"log p(x) = {lp:.4g}", ha="left", va="bottom", fontsize=8.5)
        if broken:  # the bars' left ends are not 0: mark the cut
            for y in ys:
                ax.text(start + 0.005 * span, y, "//", ha="left", va="center", fontsize=9, color="white",
                        fontweight="bold")
        elif start < 0 < lp:
            ax.axvline(0, color="0.3", lw=0.6)
        ax.set_yticks(ys, [f"q = {n}" for n in names])
        ax.set_xlim(start, lp + 0.17 * span)
        ax.set_ylim(-0.5, len(names) - 0.05)
        ax.set_xlabel(f"{unit}" + (" (the axis does not start at 0)" if broken else ""))
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", length=0)
        handles = [Rectangle((0, 0), 1, 1, color=ENCODER, alpha=0.85), Rectangle((0, 0), 1, 1, color="C3", alpha=0.85)]
        ax.legend(handles, ["ELBO(q)", "gap = KL(q ‖ p(z|x))"], loc="upper center", bbox_to_anchor=(0.5, -0.25),
                  ncol=2, frameon=False)
        if title:
            ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# 5. The IWAE ladder
# ---------------------------------------------------------------------------------------------


def _ladder(name: str, bounds: Mapping[int, float], log_px: float | None) -> tuple[list[int], list[float]]:
    ks = [int(k) for k in bounds]
    if not ks:
        raise ValueError(f"{name!r}: no bounds")
    if any(k < 1 for k in ks) or ks != sorted(set(ks)):
        raise ValueError(f"{name!r}: the numbers of samples k must be positive and increasing, got {ks}")
    vals = [_finite(f"L_{k} of {name!r}", bounds[k]) for k in bounds]
    for (k1, v1), (k2, v2) in zip(zip(ks, vals), zip(ks[1:], vals[1:])):
        if v2 < v1 - _tol(v1, v2):
            raise ValueError(f"{name!r}: L_{k2} = {v2:.6g} < L_{k1} = {v1:.6g}; the bounds must rise with k")
    if log_px is not None and vals[-1] > log_px + _tol(log_px, vals[-1]):
        raise ValueError(f"{name!r}: L_{ks[-1]} = {vals[-1]:.6g} exceeds log p(x) = {log_px:.6g}")
    return ks, vals


def iwae_ladder(ladders: Mapping[str, Mapping[int, float]], *, log_px: Mapping[str, float] | None = None,
                unit: str = "nats", title: str | None = None) -> Figure:
    """Importance-weighted bounds as a ladder: one rung per k at height L_k, rising toward log p(x).

    ladders: ``{model name: {k: L_k}}`` (increasing k); log_px: ``{model name: log p(x)}`` where it is
    known (drawn as the top, solid), else the top is drawn open (dotted, "log p(x) ≥ L_K, unknown").
    One panel per model, each with its own scale. Raises ValueError when the rungs fall as k grows or
    rise above log p(x). Rung gids: ``"rung:<name>:<k>"``.
    """
    if not ladders:
        raise ValueError("ladders is empty: pass {name: {k: L_k}}")
    log_px = dict(log_px or {})
    unknown = set(log_px) - set(ladders)
    if unknown:
        raise ValueError(f"log_px names {sorted(unknown)}, which are not in ladders")
    checked = {n: _ladder(n, b, None if n not in log_px else _finite(f"log p(x) of {n!r}", log_px[n]))
               for n, b in ladders.items()}
    ncols = len(checked)
    with _figure(None, (7.0, 3.4), 1, ncols) as (fig, axes):
        for ax, (name, (ks, vals)) in zip(axes[0], checked.items()):
            top = log_px.get(name)
            n = len(ks)
            lo, hi = vals[0], (top if top is not None else vals[-1])
            span = max(hi - lo, 1e-9)
            for i, (k, v) in enumerate(zip(ks, vals)):
                (rung,) = ax.plot([i, i + 1], [v, v], color=ENCODER, lw=2.4, solid_capstyle="butt")
                rung.set_gid(f"rung:{name}:{k}")
                ax.text(i + 0.5, v + 0.02 * span, f"{v:.2f}", fontsize=8, va="bottom", ha="center")
                if i:
                    ax.plot([i, i], [vals[i - 1], v], color=ENCODER, lw=1, alpha=0.7)
                    ax.text(i + 0.5, v - 0.03 * span, f"+{v - vals[i - 1]:.2f}", fontsize=7.5, color="C2",
                            va="top", ha="center")
            if top is not None:
                ax.plot([n - 1, n], [vals[-1], vals[-1]], alpha=0)
                ax.axhline(top, color="black", lw=1.4)
                ax.text(0.05, top + 0.02 * span, f"log p(x) = {top:.2f}", fontsize=8, va="bottom")
                ylim_top = top + 0.14 * span
            else:
                ax.axhline(vals[-1] + 0.16 * span, color="black", lw=1, ls=":")
                ax.text(0.05, vals[-1] + 0.18 * span,
                        f"log p(x) ≥ $\\mathcal{{L}}_{{{ks[-1]}}}$ (not known)", fontsize=7.5, va="bottom")
                ylim_top = vals[-1] + 0.3 * span
            ax.set_ylim(lo - 0.1 * span, ylim_top)
            ax.set_xlim(0, n)
            ax.set_xticks([i + 0.5 for i in range(n)], [f"{k:,}" for k in ks])
            ax.tick_params(axis="x", length=0)
            ax.set_xlabel("samples k (one rung each)")
            ax.set_title(name, fontsize=9)
        axes[0, 0].set_ylabel(f"$\\mathcal{{L}}_k$ ({unit})")
        if title:
            fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# 6. β as rate against distortion
# ---------------------------------------------------------------------------------------------


def rate_distortion(runs: Mapping[float, tuple[float, float]], *, mark: float = 1.0, unit: str = "nats",
                    title: str | None = None) -> Figure:
    """β-VAE runs in the rate–distortion plane (Alemi et al. 2018), with lines of equal ELBO.

    runs: ``{β: (rate R, distortion 𝒟)}``, R = mean KL(q(z|x) || p(z)) and 𝒟 = mean −E_q log p(x|z)
    (both ≥ 0). Each run is a point, joined in order of β; the diagonal 𝒟 + R = −ELBO through the run
    β = ``mark`` (a star) is drawn solid, and the diagonal of the best ELBO dashed when another run
    has it. Everything below a diagonal has a better ELBO. Point gids: ``"run:<β>"``; diagonals
    ``"diagonal:<β>"`` (their D + R is ``-ELBO``).
    """
    if not runs:
        raise ValueError("runs is empty: pass {beta: (rate, distortion)}")
    pts = {}
    for b, pair in runs.items():
        beta = _finite("β", b)
        if beta <= 0:
            raise ValueError(f"β must be > 0, got {beta}")
        if len(pair) != 2:
            raise ValueError(f"run β = {beta:g} must be (rate, distortion), got {pair!r}")
        r, d = _finite(f"rate at β = {beta:g}", pair[0]), _finite(f"distortion at β = {beta:g}", pair[1])
        if r < -_tol(r) or d < -_tol(d):
            raise ValueError(f"run β = {beta:g}: rate ({r:.6g}) and distortion ({d:.6g}) must be >= 0")
        pts[beta] = (r, d)
    mark = _finite("mark", mark)
    if mark not in pts:
        raise ValueError(f"mark β = {mark:g} is not one of the runs {sorted(pts)}")
    betas = sorted(pts)
    R = np.array([pts[b][0] for b in betas])
    D = np.array([pts[b][1] for b in betas])
    best = min(betas, key=lambda b: sum(pts[b]))
    with _figure(None, (6.0, 3.9)) as (fig, axes):
        ax = axes[0, 0]
        r_max = R.max() * 1.15 + 1e-9
        d_lo, d_hi = D.min() - 0.12 * (np.ptp(D) + 1e-9), D.max() + 0.12 * (np.ptp(D) + 1e-9)
        ax.plot(R, D, color="0.4", lw=1, zorder=1)
        for b in betas:
            r, d = pts[b]
            (p,) = ax.plot([r], [d], ls="", marker="*" if b == mark else "o", ms=13 if b == mark else 6,
                           color="C3" if b == mark else ENCODER, mec="black", mew=0.5, zorder=3)
            p.set_gid(f"run:{b:g}")
            ax.annotate(f"β = {b:g}", (r, d), textcoords="offset points", xytext=(7, 3), fontsize=8)
        rr = np.linspace(0, r_max, 50)
        for b, ls in ((mark, "-"), (best, "--")) if best != mark else ((mark, "-"),):
            total = sum(pts[b])
            (line,) = ax.plot(rr, total - rr, color="C3" if b == mark else "0.3", ls=ls, lw=1, zorder=2,
                              label=f"$\\mathcal{{D}}$ + R = {total:.1f} = −ELBO at β = {b:g}" + (" (the best)" if b == best else ""))
            line.set_gid(f"diagonal:{b:g}")
        ax.set_xlim(0, r_max)
        ax.set_ylim(d_lo, d_hi)
        ax.set_xlabel(f"rate R = KL(q(z|x) ‖ p(z)) ({unit})")
        ax.set_ylabel(f"distortion $\\mathcal{{D}}$ = −E log p(x|z) ({unit})")
        ax.legend(loc="best", frameon=True, framealpha=0.9, edgecolor="none")
        ax.text(0.02, 0.03, "below a diagonal: a better ELBO", transform=ax.transAxes, fontsize=7.5,
                color="0.35", style="italic")
        ax.set_title(title or "β moves the model along rate against distortion")
    return fig
