"""latentbook.plots: the right axes, images and data in every figure; PNGs save; notebooks show each once."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from latentbook import evaluate, plots  # noqa: E402

models = pytest.importorskip("latentbook.models", reason="latentbook/models.py is not written yet")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _digits(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _check(fig, tmp_path, name):
    """Every plot: a detached Figure that saves as a PNG and leaves pyplot's registry empty."""
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == []  # detached: a notebook shows it once, when a cell ends with it
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def _visible_axes(fig):
    return [a for a in fig.axes if a.get_visible()]


# ---------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------


def test_image_grid_lays_out_images_in_one_mosaic(tmp_path):
    x = _digits(12).requires_grad_()  # gradients must not get in the way
    fig = plots.image_grid(x, nrow=5, pad=2)
    _check(fig, tmp_path, "grid")
    (ax,) = fig.axes
    (im,) = ax.images
    mosaic = np.ma.filled(im.get_array(), np.nan)
    assert mosaic.shape == (3 * 28 + 2 * 2, 5 * 28 + 4 * 2)
    # Image 7 sits in row 1, column 2.
    np.testing.assert_allclose(mosaic[30:58, 60:88], x[7, 0].detach().numpy(), rtol=0, atol=1e-7)
    assert np.isnan(mosaic[28:30]).all()  # padding between rows is background
    assert np.isnan(mosaic[60:, 90:]).all()  # the two empty cells after image 11
    assert im.get_clim() == (0.0, 1.0)  # a fixed scale: unclipped values are not stretched
    assert fig.get_size_inches()[0] <= plots.BOOK_WIDTH + 1e-9


def test_image_grid_accepts_arrays_flat_and_uint8_and_rows(tmp_path):
    flat = _digits(4).reshape(4, 784).numpy()
    fig = plots.image_grid(flat, titles=["a", "b", "c", "d"])
    assert fig.axes[0].images[0].get_array().shape[1] == 4 * 28 + 3 * 2
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["a", "b", "c", "d"]
    _check(fig, tmp_path, "grid_flat")
    u8 = (torch.ones(3, 1, 28, 28) * 255).to(torch.uint8)
    np.testing.assert_allclose(np.nanmax(plots.image_grid(u8).axes[0].images[0].get_array()), 1.0)
    fig = plots.image_grid([_digits(3), _digits(5, seed=1)], row_labels=["top", "bottom"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["top", "bottom"]
    assert fig.axes[0].images[0].get_array().shape == (2 * 28 + 2, 5 * 28 + 4 * 2)


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        plots.image_grid(torch.rand(3, 700))
    with pytest.raises(ValueError, match="titles has 2 entries; expected 3"):
        plots.image_grid(_digits(3), titles=["a", "b"])
    with pytest.raises(ValueError, match="nrow"):
        plots.image_grid([_digits(3)], nrow=2)
    with pytest.raises(ValueError, match="nrow"):
        plots.image_grid(_digits(3), nrow=0)


def test_compare_rows_labels_and_order(tmp_path):
    x = _digits(20)
    fig = plots.compare_rows({"original": x, "PCA k=2": 1 - x, "AE": x * 0.5}, n=6)
    _check(fig, tmp_path, "compare")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "PCA k=2", "AE"]
    mosaic = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert mosaic.shape == (3 * 28 + 2 * 2, 6 * 28 + 5 * 2)
    np.testing.assert_allclose(mosaic[30:58, :28], 1 - x[0, 0].numpy(), atol=1e-6)  # row 2, first image


# ---------------------------------------------------------------------------------------------
# Latent spaces
# ---------------------------------------------------------------------------------------------


def test_latent_scatter_colours_points_by_label(tmp_path):
    rng = np.random.default_rng(0)
    codes = torch.tensor(rng.normal(size=(500, 2)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 10, 500))
    names = [f"class {k}" for k in range(10)]
    fig = plots.latent_scatter(codes, labels, names)
    _check(fig, tmp_path, "scatter")
    (ax,) = fig.axes
    (pts,) = ax.collections
    offsets, colours = pts.get_offsets(), pts.get_facecolors()
    assert len(offsets) == 500
    # Each drawn point, found by its coordinates, has the tab10 colour of its label.
    where = {tuple(p): i for i, p in enumerate(codes.double().numpy())}
    tab10 = np.asarray(matplotlib.colormaps["tab10"].colors)
    for p, c in zip(offsets, colours):
        np.testing.assert_allclose(c[:3], tab10[labels[where[tuple(p)]]], atol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    assert ax.get_xlabel() == "$z_1$"


def test_latent_scatter_many_classes_get_a_colorbar_and_bad_codes_fail(tmp_path):
    fig = plots.latent_scatter(np.random.rand(100, 2), np.arange(100) % 20)
    assert len(fig.axes) == 2  # the scatter and its colour bar
    _check(fig, tmp_path, "scatter20")
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plots.latent_scatter(np.random.rand(10, 3), np.zeros(10))
    with pytest.raises(ValueError, match="class names"):
        plots.latent_scatter(np.random.rand(10, 2), np.arange(10), classes=["a", "b"])
    fig, ax = plt.subplots()
    assert plots.latent_scatter(np.random.rand(10, 2), ax=ax) is fig  # drawn into the caller's axes
    plt.close(fig)


def _z_as_image(z):
    """A "decoder" whose image shows its code: pixel (0, 0) = z_1, pixel (0, 1) = z_2, rest 0."""
    out = torch.zeros(len(z), 1, 28, 28)
    out[:, 0, 0, 0], out[:, 0, 0, 1] = z[:, 0], z[:, 1]
    return out


def test_manifold_places_each_code_at_its_coordinates(tmp_path):
    lim, grid = 1.0, 5
    fig = plots.manifold(_z_as_image, grid=grid, lim=lim)
    _check(fig, tmp_path, "manifold")
    (ax,) = fig.axes
    (im,) = ax.images
    m = im.get_array()
    assert m.shape == (grid * 28, grid * 28)
    values = np.linspace(-lim, lim, grid)
    for i in range(grid):  # rows top to bottom: z_2 from +lim down
        for j in range(grid):  # columns left to right: z_1 from -lim up
            assert m[i * 28, j * 28] == pytest.approx(values[j])
            assert m[i * 28, j * 28 + 1] == pytest.approx(values[grid - 1 - i])
    step = 2 * lim / (grid - 1)
    np.testing.assert_allclose(im.get_extent(), [-lim - step / 2, lim + step / 2, -lim - step / 2, lim + step / 2])


def test_manifold_at_the_priors_quantiles_gives_every_tile_equal_mass():
    grid = 6
    fig = plots.manifold(_z_as_image, grid=grid, spacing="quantile")
    (ax,) = fig.axes
    m = ax.images[0].get_array()
    from scipy.stats import norm  # the oracle for the inverse CDF

    values = norm.ppf((np.arange(grid) + 0.5) / grid)
    for i in range(grid):
        for j in range(grid):
            assert m[i * 28, j * 28] == pytest.approx(values[j], abs=1e-5)
            assert m[i * 28, j * 28 + 1] == pytest.approx(values[grid - 1 - i], abs=1e-5)
    # each tile covers 1/grid of each axis's probability: equal prior mass per tile
    np.testing.assert_allclose(np.diff(norm.cdf(values)), 1 / grid, atol=1e-6)
    np.testing.assert_allclose(ax.images[0].get_extent(), [0, 1, 0, 1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-2", "-1", "0", "1", "2"]
    np.testing.assert_allclose(ax.get_xticks(), norm.cdf([-2, -1, 0, 1, 2]), atol=1e-6)
    plt.close(fig)
    with pytest.raises(ValueError, match="spacing"):
        plots.manifold(_z_as_image, spacing="log")


def test_manifold_with_a_model_and_other_dims():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=4, hidden=(8,))
    vae.train()
    fig = plots.manifold(evaluate.decoder(vae), grid=3, lim=2.0, dims=(1, 3), z_base=torch.zeros(4))
    assert vae.training  # the model is given back in the mode it came in
    expected_corner = vae.decode(torch.tensor([[0.0, -2.0, 0.0, 2.0]]))[0, 0].detach().numpy()
    np.testing.assert_allclose(fig.axes[0].images[0].get_array()[:28, :28], expected_corner, atol=1e-6)
    assert fig.axes[0].get_ylabel() == "$z_{4}$"
    with pytest.raises(ValueError, match="dims"):
        plots.manifold(evaluate.decoder(vae), dims=(0, 0), z_base=torch.zeros(4))
    with pytest.raises(TypeError, match="evaluate.decoder"):  # plots only draw: a model is refused
        plots.manifold(vae, grid=3)


def test_interpolation_strip_decodes_the_straight_line(tmp_path):
    z0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    z1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    fig = plots.interpolation_strip(_z_as_image, z0, z1, steps=5, row_labels=["a", "b"])
    _check(fig, tmp_path, "interp")
    m = fig.axes[0].images[0].get_array()
    t = np.linspace(0, 1, 5)
    np.testing.assert_allclose([m[0, j * 30] for j in range(5)], t, atol=1e-6)  # row a: z_1 = t
    np.testing.assert_allclose([m[0, j * 30 + 1] for j in range(5)], 1 - t, atol=1e-6)  # row a: z_2 = 1 - t
    np.testing.assert_allclose([m[30, j * 30] for j in range(5)], 1 - t, atol=1e-6)  # row b: z_1 = 1 - t
    assert len(fig.axes[0].get_xticklabels()) == 5


# ---------------------------------------------------------------------------------------------
# Curves and bars
# ---------------------------------------------------------------------------------------------

HISTORY = {"loss": [5.0, 3.0, 2.0], "recon": [4.0, 2.5, 1.8], "kl": [1.0, 0.5, 0.2], "val_loss": [5.5, 3.5, 2.6]}


def test_training_curves_panels_and_validation_twins(tmp_path):
    fig = plots.training_curves(HISTORY)
    _check(fig, tmp_path, "curves")
    axes = _visible_axes(fig)
    assert [a.get_title() for a in axes] == ["loss", "recon", "kl"]
    assert len(axes[0].lines) == 2 and len(axes[1].lines) == 1
    np.testing.assert_allclose(axes[0].lines[1].get_ydata(), HISTORY["val_loss"])
    np.testing.assert_allclose(axes[0].lines[0].get_xdata(), [1, 2, 3])
    records = [{k: v[i] for k, v in HISTORY.items()} | {"epoch": i} for i in range(3)]
    fig = plots.training_curves(records, terms=["kl"])
    (ax,) = _visible_axes(fig)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 1, 2])  # the history's own epochs
    np.testing.assert_allclose(ax.lines[0].get_ydata(), HISTORY["kl"])
    train = pytest.importorskip("latentbook.train")
    history = train.History(train={k: HISTORY[k] for k in ("loss", "recon", "kl")}, val={"loss": HISTORY["val_loss"]},
                            epoch_time=[1.0, 1.0, 1.0])
    fig = plots.training_curves(history)
    assert [len(a.lines) for a in _visible_axes(fig)] == [2, 1, 1]
    np.testing.assert_allclose(_visible_axes(fig)[0].lines[1].get_ydata(), HISTORY["val_loss"])
    fig, ax = plt.subplots()
    plots.training_curves(HISTORY, ax=ax)
    assert len(ax.lines) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="not in history"):
        plots.training_curves(HISTORY, terms=["elbo"])


def test_bar_compare_heights_and_labels(tmp_path):
    values = {"PCA k=2": 0.055, "MLP autoencoder": torch.tensor(0.04), "VAE": np.float64(0.043)}
    fig = plots.bar_compare(values, "test MSE")
    _check(fig, tmp_path, "bars")
    (ax,) = fig.axes
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [0.055, 0.04, 0.043])
    assert [t.get_text() for t in ax.texts] == ["0.055", "0.04", "0.043"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)
    assert ax.get_ylabel() == "test MSE"


def test_line_compare_series_and_log_axis(tmp_path):
    x = [2, 4, 8, 16]
    fig = plots.line_compare(x, {"PCA": torch.tensor([4.0, 3.0, 2.0, 1.0]), "AE": [3, 2, 1, 0.5]}, "d", "MSE", logx=True)
    _check(fig, tmp_path, "lines")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["PCA", "AE"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [3, 2, 1, 0.5])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    with pytest.raises(ValueError, match="has 3 values but x has 4"):
        plots.line_compare(x, {"bad": [1, 2, 3]}, "d", "MSE")


def test_style_does_not_leak():
    before = dict(matplotlib.rcParams)
    plots.image_grid(_digits(2))
    plots.bar_compare({"a": 1.0}, "y")
    assert dict(matplotlib.rcParams) == before
    with plots.use_style():
        assert matplotlib.rcParams["font.size"] == plots.STYLE["font.size"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_and_models():
    x = _digits(4).cuda()
    assert plots.image_grid(x).axes[0].images
    vae = models.VAE(latent_dim=2, hidden=(8,)).cuda()
    assert plots.manifold(evaluate.decoder(vae), grid=3).axes[0].images
    assert plots.manifold(evaluate.decoder(vae.decode), grid=3).axes[0].images  # device from the bound method


@pytest.mark.slow
def test_notebook_shows_each_figure_once(tmp_path, monkeypatch):
    """In a Jupyter kernel a returned figure is shown once, and the chapter's own pyplot figures still show."""
    # The kernel inherits the environment; conftest's Agg backend would hide every figure.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import numpy as np\nfrom latentbook import plots\nx = np.random.rand(5, 1, 28, 28)",
        "plots.image_grid(x)",
        "fig = plots.image_grid(x)",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]);",
        "fig",
    )]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(tmp_path))
    pngs = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells]
    assert pngs == [0, 1, 0, 1, 1]


def test_traversal_panels_draws_each_panel_with_its_labels():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 1, 28, 28, generator=g)
    b = torch.rand(2, 5, 1, 28, 28, generator=g)
    values = [-2, -1, 0, 1, 2]
    fig = plots.traversal_panels({"β = 1": (a, ["z3: 2.1 nats", "z0: 1.0", "z7: 0.0"]),
                                  "β = 4": (b, ["z1: 3.0", "z5: 0.0"])}, values, title="traversals")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["β = 1", "β = 4"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["z3: 2.1 nats", "z0: 1.0", "z7: 0.0"]
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["-2", "-1", "0", "1", "2"]
    mosaic = axes[0].images[0].get_array()
    np.testing.assert_allclose(mosaic[:28, :28], a[0, 0, 0].numpy(), rtol=1e-6)  # first row, first step
    np.testing.assert_allclose(mosaic[30:58, 30:58], a[1, 1, 0].numpy(), rtol=1e-6)  # pad of 2 pixels
    assert fig._suptitle.get_text() == "traversals"
    with pytest.raises(ValueError, match="row labels"):
        plots.traversal_panels({"x": (a, ["one"])}, values)
    with pytest.raises(ValueError, match="S = 4"):
        plots.traversal_panels({"x": (a, ["1", "2", "3"])}, values[:4])
