"""The book's figures: image grids, latent scatters, decoded manifolds, curves and bars.

Every function draws in the book's small style (:data:`STYLE`, sized for a page about 7 inches
wide), takes an optional ``ax`` to draw into, and returns the :class:`~matplotlib.figure.Figure`.

A figure a function creates is detached from pyplot (closed in pyplot's registry), so a notebook
shows it exactly once: when a cell ends with it. Neither ``plt.show()`` nor a trailing ``;`` is
needed, and a figure assigned to a variable is shown by ending a cell with that variable (or
``display(fig)``); ``fig.savefig(path)`` works as usual. A figure passed in through ``ax`` is the
caller's and is left alone.

Images are taken as tensors or arrays ``[N, 1, 28, 28]``, ``[N, 28, 28]`` or ``[N, 784]``, on any
device, with or without gradients; floats are shown on the fixed scale [0, 1] (values outside are
drawn as 0 or 1, e.g. unclipped PCA reconstructions) and uint8 as 0..255.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator


__all__ = [
    "STYLE",
    "BOOK_WIDTH",
    "use_style",
    "image_grid",
    "compare_rows",
    "latent_scatter",
    "manifold",
    "interpolation_strip",
    "training_curves",
    "bar_compare",
    "line_compare",
    "traversal_panels",
]

BOOK_WIDTH = 7.0  # inches: the widest a figure may be and still be read at 100 % on the page

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "figure.facecolor": "white",  # a transparent PNG on a dark page hides black labels
    "savefig.facecolor": "white",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=plt.get_cmap("tab10").colors),
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "image.interpolation": "nearest",  # pixels stay pixels
}


def use_style() -> contextlib.AbstractContextManager:
    """The book's rcParams as a context, for a chapter's own plots: ``with plots.use_style(): ...``."""
    return mpl.rc_context(STYLE)


@contextlib.contextmanager
def _figure(ax: Axes | None, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **kw) -> Iterator:
    """Yield ``(fig, axes [nrows, ncols])`` styled; with ``ax`` given, that one axes and its figure."""
    if ax is not None:
        with use_style():
            yield ax.figure, np.array([[ax]])
        return
    # Created outside the rc context: the first figure of a session loads the backend, and the
    # notebook backend switches matplotlib to interactive mode then; inside the context that switch
    # would be undone on exit and the chapter's own plt.plot figures would no longer show.
    fig = plt.figure(figsize=figsize, dpi=STYLE["figure.dpi"], facecolor=STYLE["figure.facecolor"], layout="constrained")
    # Detach from pyplot so notebooks show the returned figure once, not also at the end of the cell.
    plt.close(fig)
    with use_style():
        yield fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.numpy() if a.dtype == torch.uint8 else a.float().numpy()
    return np.asarray(a)


def _as_images(a: Any, name: str = "images") -> np.ndarray:
    """Images as float ``[N, H, W]`` on the [0, 1] scale (uint8 is divided by 255)."""
    arr = _numpy(a)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise ValueError(f"{name} of shape {arr.shape} are flat but {arr.shape[1]} is not a square number of pixels")
        arr = arr.reshape(len(arr), side, side)
    if arr.ndim != 3 or len(arr) == 0:
        raise ValueError(
            f"{name} must be a non-empty batch [N, 1, H, W], [N, H, W] or [N, H*W]; got shape {_numpy(a).shape}"
        )
    return arr


def _labels(a: Any, n: int, name: str) -> np.ndarray:
    arr = _numpy(a).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries but there are {n} points")
    return arr


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def image_grid(
    images: Any,
    nrow: int | None = None,
    *,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "gray",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cell: float = 0.6,
    pad: int = 2,
) -> Figure:
    """A grid of images drawn as one mosaic (one axes, one image).

    images: ``[N, 1, 28, 28]`` (or ``[N, 28, 28]``, ``[N, 784]``) laid out ``nrow`` per row
        (torchvision's meaning; default ``min(N, 10)``), or a list of such batches, one per row
        (rows may differ in length; ``nrow`` is then not allowed).
    titles: one per image, written above it. row_labels / col_labels: one per row / column.
    cell: inches per image, shrunk so the figure fits the book's width. pad: pixels between images.
    """
    if isinstance(images, (list, tuple)):
        if nrow is not None:
            raise ValueError("nrow applies to a single batch of images; a list already gives one row per entry")
        rows = [_as_images(r, f"images[{i}]") for i, r in enumerate(images)]
        if not rows:
            raise ValueError("images is an empty list")
    else:
        flat = _as_images(images)
        nrow = min(len(flat), 10) if nrow is None else nrow
        if not isinstance(nrow, int) or nrow < 1:
            raise ValueError(f"nrow (images per row) must be a positive integer, got {nrow!r}")
        rows = [flat[i : i + nrow] for i in range(0, len(flat), nrow)]
    h, w = rows[0].shape[1:]
    if any(r.shape[1:] != (h, w) for r in rows):
        raise ValueError(f"all images must have the same size; got {sorted({r.shape[1:] for r in rows})}")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    n_images = sum(len(r) for r in rows)
    expected = (("titles", titles, n_images), ("row_labels", row_labels, n_rows), ("col_labels", col_labels, n_cols))
    for what, labels, want in expected:
        if labels is not None and len(labels) != want:
            raise ValueError(f"{what} has {len(labels)} entries; expected {want}")

    # Size: cell inches per image, shrunk to fit the page; room on the left for row labels.
    label_in = 0.12 + 0.065 * max((len(s) for s in row_labels), default=0) if row_labels is not None else 0.0
    cell = min(cell, (BOOK_WIDTH - label_in - 0.1) / n_cols)
    px_per_in = (w + pad) / cell
    # Titles above each image need a gap between rows of about one line of small text.
    title_px = int(math.ceil(STYLE["xtick.labelsize"] / 72 * 1.6 * px_per_in)) if titles is not None else 0
    gap_y = pad + title_px
    H = n_rows * h + (n_rows - 1) * gap_y + title_px
    W = n_cols * w + (n_cols - 1) * pad
    mosaic = np.full((H, W), np.nan, dtype=np.float32)  # NaN = background, drawn white
    for i, r in enumerate(rows):
        top = title_px + i * (h + gap_y)
        for j, img in enumerate(r):
            mosaic[top : top + h, j * (w + pad) : j * (w + pad) + w] = img

    extra_h = (0.3 if title else 0.0) + (0.25 if col_labels is not None else 0.0)
    figsize = (W / px_per_in + label_in + 0.1, H / px_per_in + extra_h + 0.1)
    with _figure(ax, figsize) as (fig, axes):
        a = axes[0, 0]
        cm = mpl.colormaps[cmap].with_extremes(bad="white")
        a.imshow(mosaic, cmap=cm, vmin=vmin, vmax=vmax)
        for spine in a.spines.values():
            spine.set_visible(False)
        centers_y = [title_px + i * (h + gap_y) + (h - 1) / 2 for i in range(n_rows)]
        centers_x = [j * (w + pad) + (w - 1) / 2 for j in range(n_cols)]
        a.tick_params(length=0)
        a.set_yticks(centers_y if row_labels is not None else [], list(row_labels) if row_labels is not None else [])
        a.xaxis.tick_top()
        a.set_xticks(centers_x if col_labels is not None else [], list(col_labels) if col_labels is not None else [])
        if titles is not None:
            k = 0
            for i, r in enumerate(rows):
                for j in range(len(r)):
                    a.text(centers_x[j], title_px + i * (h + gap_y) - 1, titles[k], ha="center", va="bottom",
                           fontsize=STYLE["xtick.labelsize"] - 1)
                    k += 1
        if title:
            a.set_title(title)
    return fig


def compare_rows(
    rows: Mapping[str, Any], n: int = 10, *, title: str | None = None, ax: Axes | None = None, **kwargs
) -> Figure:
    """Originals above their reconstructions: one labelled row per entry, the first ``n`` images of each.

    rows: ``{"original": x [N, 1, 28, 28], "PCA k=2": x_hat, "AE": ...}``; every batch is in the same order.
    Other keyword arguments go to :func:`image_grid`.
    """
    if not rows:
        raise ValueError("rows is empty; give at least {'original': x}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (images per row) must be a positive integer, got {n!r}")
    batches = [_as_images(v, f"rows[{k!r}]")[:n] for k, v in rows.items()]
    return image_grid(batches, row_labels=list(rows), title=title, ax=ax, **kwargs)


def _decode_images(decode_fn: Any, z: torch.Tensor) -> np.ndarray:
    """``decode_fn(z)`` for ``z [M, d]`` (on the CPU) as display images, without gradients."""
    if not callable(decode_fn) or hasattr(decode_fn, "decode") or hasattr(decode_fn, "inverse_transform"):
        raise TypeError(f"decode_fn must be a function z -> images, e.g. lb.evaluate.decoder(model), "
                        f"got {type(decode_fn).__name__}")
    with torch.no_grad():
        out = decode_fn(z)
    images = _as_images(out, "decode_fn(z)")
    if len(images) != len(z):
        raise ValueError(f"decode_fn returned {len(images)} images for {len(z)} codes")
    return images


def manifold(
    decode_fn: Any,
    grid: int = 15,
    lim: float = 3.0,
    *,
    dims: tuple[int, int] = (0, 1),
    z_base: Any = None,
    spacing: str = "uniform",
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "gray",
) -> Figure:
    """Images decoded on a ``grid x grid`` lattice of latent space, ticks in z units.

    decode_fn: a function ``z [M, d] -> [M, 1, 28, 28]`` taking codes on the CPU, e.g.
        ``lb.evaluate.decoder(vae)`` (plots only draw: decoding is the evaluate module's).
    spacing: ``"uniform"``, evenly spaced over ``[-lim, lim]``; or ``"quantile"``, at the standard
        normal's quantiles ``Φ⁻¹((i + ½) / grid)`` (Kingma & Welling 2014, Fig. 4), so that every tile
        stands for the same prior mass (``lim`` is not used).
    The lattice varies latent dimensions ``dims`` (z_1 left to right, z_2 bottom to top); the
    others stay at ``z_base [d]`` (default: a 2-D latent space, or zeros for a longer ``z_base``).
    """
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    if not lim > 0:
        raise ValueError(f"lim must be > 0, got {lim}")
    if spacing not in ("uniform", "quantile"):
        raise ValueError(f"spacing must be 'uniform' or 'quantile', got {spacing!r}")
    base = torch.zeros(2) if z_base is None else torch.as_tensor(_numpy(z_base), dtype=torch.float32).reshape(-1)
    d0, d1 = dims
    if d0 == d1 or not (0 <= d0 < len(base) and 0 <= d1 < len(base)):
        raise ValueError(f"dims={dims} must be two different latent dimensions below d={len(base)}")
    if spacing == "uniform":
        values = torch.linspace(-lim, lim, grid)
    else:
        values = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(grid) + 0.5) / grid)
    z = base.repeat(grid * grid, 1)
    z[:, d0] = values.repeat(grid)  # column j -> z_1 = values[j]
    z[:, d1] = values.flip(0).repeat_interleave(grid)  # row i (top first) -> z_2 = values[-1 - i]
    images = _decode_images(decode_fn, z)
    h, w = images.shape[1:]
    mosaic = images.reshape(grid, grid, h, w).transpose(0, 2, 1, 3).reshape(grid * h, grid * w)
    step = 2 * lim / (grid - 1)
    with _figure(ax, (5.0, 5.0)) as (fig, axes):
        a = axes[0, 0]
        if spacing == "uniform":
            # Each tile is centred on its z value, so the axis reads in latent units.
            a.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0,
                     extent=(-lim - step / 2, lim + step / 2, -lim - step / 2, lim + step / 2))
        else:
            # The axis is the prior's cumulative probability (each tile an equal share); ticks name z.
            a.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, extent=(0.0, 1.0, 0.0, 1.0))
            ticks = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
            where = torch.distributions.Normal(0.0, 1.0).cdf(ticks).tolist()
            labels = [f"{v:g}" for v in ticks.tolist()]
            a.set_xticks(where, labels)
            a.set_yticks(where, labels)
        a.set_xlabel(f"$z_{{{d0 + 1}}}$")
        a.set_ylabel(f"$z_{{{d1 + 1}}}$")
        a.set_title(title if title is not None else "decoded latent grid")
    return fig


def interpolation_strip(
    decode_fn: Any,
    z0: Any,
    z1: Any,
    steps: int = 10,
    *,
    row_labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Images decoded along the straight line ``z(t) = (1 - t) z0 + t z1``, ``t`` from 0 to 1.

    z0, z1: ``[d]`` for one strip or ``[P, d]`` for P strips (one row each).
    decode_fn: as for :func:`manifold`.
    """
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    a0 = torch.as_tensor(_numpy(z0), dtype=torch.float32)
    a1 = torch.as_tensor(_numpy(z1), dtype=torch.float32)
    if a0.shape != a1.shape or a0.ndim not in (1, 2):
        raise ValueError(f"z0 and z1 must have the same shape [d] or [P, d]; got {tuple(a0.shape)} and {tuple(a1.shape)}")
    a0, a1 = a0.reshape(-1, a0.shape[-1]), a1.reshape(-1, a1.shape[-1])
    t = torch.linspace(0, 1, steps)[None, :, None]
    z = ((1 - t) * a0[:, None] + t * a1[:, None]).reshape(-1, a0.shape[-1])  # [P * steps, d]
    images = _decode_images(decode_fn, z)
    rows = [images[i * steps : (i + 1) * steps] for i in range(len(a0))]
    return image_grid(rows, row_labels=row_labels, col_labels=[f"t={v:.2g}" for v in t.reshape(-1).tolist()],
                      title=title, ax=ax)


# ---------------------------------------------------------------------------------------------
# Latent spaces
# ---------------------------------------------------------------------------------------------


def latent_scatter(
    codes: Any,
    labels: Any = None,
    classes: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    s: float = 3.0,
    alpha: float = 0.6,
    seed: int = 0,
) -> Figure:
    """Codes ``[N, 2]`` as points coloured by ``labels [N]`` (integers 0..C-1).

    With up to 10 classes: tab10 colours and a legend naming ``classes`` (e.g. ``data.CLASSES["mnist"]``);
    more classes get a colour bar. Points are drawn in a random (seeded) order so no class hides another.
    """
    c = _numpy(codes).astype(np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or len(c) == 0:
        raise ValueError(f"codes must be [N, 2] (reduce a larger code to 2-D first, e.g. with PCA); got shape {c.shape}")
    order = np.random.default_rng(seed).permutation(len(c))
    with _figure(ax, (5.6, 4.4)) as (fig, axes):
        a = axes[0, 0]
        if labels is None:
            a.scatter(c[order, 0], c[order, 1], s=s, alpha=alpha, linewidths=0, rasterized=True)
        else:
            y = _labels(labels, len(c), "labels").astype(np.int64)
            if y.min() < 0:
                raise ValueError("labels must be non-negative class indices")
            n_classes = max(int(y.max()) + 1, len(classes) if classes is not None else 0)
            names = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
            if len(names) < n_classes:
                raise ValueError(f"labels go up to {n_classes - 1} but only {len(names)} class names were given")
            if n_classes <= 10:
                colours = np.asarray(mpl.colormaps["tab10"].colors)[y[order]]
                a.scatter(c[order, 0], c[order, 1], c=colours, s=s, alpha=alpha, linewidths=0, rasterized=True)
                present = np.unique(y)
                tab10 = mpl.colormaps["tab10"].colors
                handles = [Line2D([], [], ls="", marker="o", ms=5, color=tab10[k]) for k in present]
                a.legend(handles, [names[k] for k in present], loc="center left", bbox_to_anchor=(1.01, 0.5),
                         frameon=False, handletextpad=0.2)
            else:
                sc = a.scatter(c[order, 0], c[order, 1], c=y[order], cmap="viridis", vmin=-0.5,
                               vmax=n_classes - 0.5, s=s, alpha=alpha, linewidths=0, rasterized=True)
                cb = fig.colorbar(sc, ax=a, ticks=range(n_classes))
                cb.ax.set_yticklabels(names)
        a.set_xlabel("$z_1$")
        a.set_ylabel("$z_2$")
        if title:
            a.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Curves and bars
# ---------------------------------------------------------------------------------------------

_EVAL_PREFIXES = ("val_", "valid_", "test_")
_X_KEYS = ("epoch", "epochs", "step")


def _history_dict(history: Any) -> dict[str, list[float]]:
    """A history as ``{name: [values...]}`` from a dict of lists, a list of per-epoch dicts or a
    :class:`latentbook.train.History` (its ``val`` terms become ``val_<term>``)."""
    if isinstance(getattr(history, "train", None), Mapping) and isinstance(getattr(history, "val", None), Mapping):
        history = {**history.train, **{f"val_{k}": v for k, v in history.val.items()}}
    if isinstance(history, Mapping):
        out = {str(k): [float(_numpy(v)) for v in vals] for k, vals in history.items()
               if isinstance(vals, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(vals, str)}
    elif isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        keys = list(dict.fromkeys(k for r in history for k in r))
        out = {str(k): [float(_numpy(r[k])) if k in r else math.nan for r in history] for k in keys}
    else:
        raise TypeError("history must be a train.History, a dict of lists or a list of per-epoch dicts")
    if not out or not any(out.values()):
        raise ValueError("history holds no values to plot")
    return out


def training_curves(
    history: Any,
    terms: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    xlabel: str = "epoch",
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """One panel per term (e.g. ``("loss", "recon", "kl")``) against epochs.

    history: a :class:`latentbook.train.History`, ``{"loss": [...], "kl": [...], "val_loss": [...]}``
        or a list of per-epoch dicts.
    A ``val_``/``valid_``/``test_`` twin of a term is drawn dashed in the same panel; an ``epoch``
    entry, if present, gives the x values (else 1, 2, ...). With ``ax``, all terms share that axes.
    """
    h = _history_dict(history)
    if terms is None:
        terms = [k for k in h if k not in _X_KEYS and not k.startswith(_EVAL_PREFIXES)]
    terms = list(terms)
    missing = [t for t in terms if t not in h]
    if missing or not terms:
        raise ValueError(f"terms {missing or terms} not in history; it has {sorted(h)}")
    n = len(terms)
    ncols = 2 if n == 4 else min(n, 3)  # 4 panels as 2 x 2 rather than 3 + 1
    nrows = math.ceil(n / ncols)
    with _figure(ax, (min(BOOK_WIDTH, 2.4 * ncols + 0.4), 2.3 * nrows), nrows, ncols) as (fig, axes):
        flat = axes.reshape(-1)
        for i, term in enumerate(terms):
            a = flat[0] if ax is not None else flat[i]
            series = [(term, "-", "train")] + [(p + term, "--", p.rstrip("_")) for p in _EVAL_PREFIXES if p + term in h]
            for j, (key, ls, split) in enumerate(series):
                ys = np.asarray(h[key])
                own_x = (h[k] for k in _X_KEYS if k in h and len(h[k]) == len(ys))
                xs = np.asarray(next(own_x, np.arange(1, len(ys) + 1)))
                if ax is None:  # own panel: train and evaluation curves in different colours
                    colour, label = f"C{j}", (split if len(series) > 1 else None)
                else:  # shared axes: one colour per term, evaluation dashed
                    colour, label = f"C{i}", (term if len(series) == 1 else f"{term} ({split})")
                a.plot(xs, ys, ls=ls, color=colour, marker="o" if len(ys) <= 20 else None, label=label)
            if ax is None:
                a.set_title(term)
            a.set_xlabel(xlabel)
            a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
            if logy:
                a.set_yscale("log")
            if a.get_legend_handles_labels()[0]:
                a.legend(frameon=False)
        for a in flat[n:] if ax is None else []:
            a.set_visible(False)
        if title:
            fig.suptitle(title)
    return fig


def bar_compare(
    values: Mapping[str, Any],
    ylabel: str,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    fmt: str = "{:.3g}",
    colors: Sequence[str] | None = None,
) -> Figure:
    """Bars for ``{name: value}`` (e.g. test MSE per model), each labelled with its value (``fmt``)."""
    if not values:
        raise ValueError("values is empty")
    names = list(values)
    vals = [float(_numpy(v)) for v in values.values()]
    long_names = max(len(n) for n in names) > 8
    width = min(BOOK_WIDTH, max(3.0, 0.6 * len(names) + 1.2))
    with _figure(ax, (width, 3.0)) as (fig, axes):
        a = axes[0, 0]
        bars = a.bar(names, vals, color=list(colors) if colors is not None else [f"C{i % 10}" for i in range(len(vals))])
        a.bar_label(bars, labels=[fmt.format(v) for v in vals], padding=2, fontsize=STYLE["xtick.labelsize"])
        a.set_ylabel(ylabel)
        a.margins(y=0.12)  # room for the value labels
        if long_names:
            a.tick_params(axis="x", labelrotation=30)
            for lbl in a.get_xticklabels():
                lbl.set_horizontalalignment("right")
        if title:
            a.set_title(title)
    return fig


def line_compare(
    x: Any,
    ys: Mapping[str, Any],
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    *,
    logy: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    marker: str | None = "o",
) -> Figure:
    """Several named curves over the same ``x`` (e.g. test MSE against latent size for PCA, AE, VAE)."""
    xs = _numpy(x).astype(np.float64).reshape(-1)
    if not ys:
        raise ValueError("ys is empty")
    with _figure(ax, (4.8, 3.2)) as (fig, axes):
        a = axes[0, 0]
        for name, y in ys.items():
            yv = _numpy(y).astype(np.float64).reshape(-1)
            if len(yv) != len(xs):
                raise ValueError(f"series {name!r} has {len(yv)} values but x has {len(xs)}")
            a.plot(xs, yv, marker=marker, label=name)
        if logx:
            a.set_xscale("log")
        if logy:
            a.set_yscale("log")
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.legend(frameon=False)
        if title:
            a.set_title(title)
    return fig


def traversal_panels(
    panels: Mapping[str, tuple[Any, Sequence[str]]],
    values: Sequence[float],
    *,
    title: str | None = None,
) -> Figure:
    """Latent traversals of several models side by side (chapter "conditional-vae").

    panels: ``{panel title: (images [R, S, 1, 28, 28], row labels [R])}``, e.g. from
    :func:`latentbook.evaluate.latent_traversal`: row ``i`` sweeps one latent dimension over the ``S``
    ``values`` (the column labels), and its label says which (and, e.g., its KL in nats).
    """
    if not panels:
        raise ValueError("panels is empty; give {title: (images [R, S, 1, 28, 28], row_labels)}")
    n_values = len(values)
    rows_of = {}
    for name, (images, labels) in panels.items():
        arr = _numpy(images)
        if arr.ndim != 5 or arr.shape[1] != n_values:
            raise ValueError(f"panel {name!r}: images must be [R, S = {n_values}, 1, 28, 28], got {arr.shape}")
        if len(labels) != arr.shape[0]:
            raise ValueError(f"panel {name!r} has {arr.shape[0]} rows but {len(labels)} row labels")
        rows_of[name] = (list(arr), list(labels))
    n_rows = max(len(r) for r, _ in rows_of.values())
    width = min(BOOK_WIDTH, len(panels) * (0.35 * n_values + 1.1))
    with _figure(None, (width, 0.38 * n_rows + 0.7), 1, len(panels)) as (fig, axes):
        for a, (name, (rows, labels)) in zip(axes[0], rows_of.items()):
            image_grid(rows, row_labels=labels, col_labels=[f"{v:g}" for v in values], title=name, ax=a)
        if title:
            fig.suptitle(title)
    return fig
