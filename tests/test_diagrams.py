"""latentbook.diagrams: each concept figure draws exactly the numbers it is given, and refuses numbers
that would make it lie."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from latentbook import diagrams as dg  # noqa: E402
from latentbook import losses, models, plots  # noqa: E402


def _check(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == []  # detached, like latentbook.plots: shown once when a cell ends with it
    assert fig.get_size_inches()[0] <= plots.BOOK_WIDTH + 1e-9
    fig.savefig(tmp_path / f"{name}.png")


def _by_gid(fig, prefix):
    return {a.get_gid(): a for a in fig.findobj() if isinstance(a.get_gid(), str) and a.get_gid().startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# 1. Autoencoders
# ---------------------------------------------------------------------------------------------


def _shapes_by_hand(model):
    """An oracle independent of layer_shapes: run the layers one by one, keep shape-changing ones."""
    x = torch.zeros(1, 1, 28, 28)
    out = {}
    for part, inp in (("encoder", x), ("decoder", None)):
        shapes = []
        h = inp if inp is not None else torch.zeros(1, model.latent_dim)
        for layer in getattr(model, part):
            h = layer(h)
            if not isinstance(layer, (nn.ReLU, nn.Sigmoid)):
                shapes.append(tuple(h.shape[1:]))
        out[part] = shapes
    return out


@pytest.mark.parametrize("spec, enc, dec", [
    ({"arch": "mlp_ae", "latent_dim": 2},
     [(784,), (512,), (256,), (128,), (2,)], [(128,), (256,), (512,), (784,), (1, 28, 28)]),
    ({"arch": "conv_ae", "latent_dim": 32, "channels": [16, 32]},
     [(16, 14, 14), (32, 7, 7), (1568,), (32,)], [(1568,), (32, 7, 7), (16, 14, 14), (1, 28, 28)]),
])
def test_layer_shapes_are_the_models_real_shapes(spec, enc, dec):
    model = models.build(spec)
    s = dg.layer_shapes(model)
    assert [sh for _, sh in s["encoder"]] == enc == _shapes_by_hand(model)["encoder"]
    assert [sh for _, sh in s["decoder"]] == dec == _shapes_by_hand(model)["decoder"]
    assert s["input"] == (1, 28, 28) and s["code"] == (spec["latent_dim"],)
    assert s["encoder"][1][0] == ("conv 3×3, stride 2 + relu" if "conv" in spec["arch"] else "linear + relu")
    assert model.training  # the mode is restored


def test_layer_shapes_of_a_vae_splits_the_code():
    s = dg.layer_shapes(models.build({"arch": "vae", "latent_dim": 3, "hidden": [20]}))
    assert s["encoder"][-1][1] == (6,) and s["code"] == (3,)  # mu and logvar come out together


def test_autoencoder_diagram_labels_every_block_with_its_real_shape(tmp_path):
    nets = {"mlp": models.build({"arch": "mlp_ae", "latent_dim": 2}),
            "conv": models.build({"arch": "conv_ae", "latent_dim": 8, "channels": [4, 8]})}
    shapes = {n: dg.layer_shapes(m) for n, m in nets.items()}
    fig = dg.autoencoder_diagram(shapes)
    _check(fig, tmp_path, "autoencoders")
    texts = sorted((t for t in fig.findobj(matplotlib.text.Text)
                    if isinstance(t.get_gid(), str) and t.get_gid().startswith("shape:")),
                   key=lambda t: (-round((t.get_position()[1] - 0.3) / 2), t.get_position()[0]))  # row, then x
    drawn = [t.get_text().replace("code\n", "") for t in texts]
    expected = []
    for m in nets.values():
        hand = _shapes_by_hand(m)
        expected += ["1×28×28"] + ["×".join(map(str, sh)) for sh in hand["encoder"] + hand["decoder"]]
    assert drawn == expected
    with pytest.raises(ValueError, match="lacks"):
        dg.autoencoder_diagram({"bad": {"input": (1, 28, 28)}})
    with pytest.raises(ValueError, match="empty"):
        dg.autoencoder_diagram({})


# ---------------------------------------------------------------------------------------------
# 2. The VAE's graph
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_grads():
    torch.manual_seed(0)
    model = models.build({"arch": "vae", "latent_dim": 2, "hidden": [32]})
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)).bernoulli()
    return model, x, dg.reparam_gradients(model, x, torch.Generator().manual_seed(2))


def test_reparam_gradients_follow_autograd(vae_grads):
    model, x, g = vae_grads
    assert {n for n, v in g.items() if not v["requires_grad"]} == {"x", "eps"}
    assert g["z"]["params"] == g["mu"]["params"] == g["kl"]["params"] == {"φ"}
    assert g["logits"]["params"] == g["loss"]["params"] == {"φ", "θ"}
    assert g["z"]["shape"] == (5, 2) and g["eps"]["shape"] == (5, 2)
    # the oracle for "no gradient": a detached copy of eps changes nothing in z's gradient to mu
    mu, logvar = model.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(2))
    z = mu + torch.exp(0.5 * logvar) * eps
    assert not eps.requires_grad and z.requires_grad
    assert torch.equal(z, losses.reparameterize(mu, logvar, torch.Generator().manual_seed(2)))


def test_vae_graph_marks_exactly_the_tensors_without_gradient(tmp_path, vae_grads):
    _, _, g = vae_grads
    fig = dg.vae_graph(g)
    _check(fig, tmp_path, "vae_graph")
    arrows = _by_gid(fig, "edge:")
    assert len(arrows) == len(dg.GRAPH_EDGES)
    no_grad = {gid.split(":")[1] for gid in arrows if gid.endswith(":nograd")}
    expected = {f"{a}->{b}" for a, b, t in dg.GRAPH_EDGES if not g[t]["requires_grad"]}
    assert no_grad == expected == {"x->encoder", "eps->z", "x_target->recon"}
    assert sum(t.get_text() == "no gradient" for t in fig.findobj(matplotlib.text.Text)) == len(expected)
    for gid, arrow in arrows.items():
        dashed = arrow.get_linestyle() not in ("-", "solid")
        assert dashed == gid.endswith(":nograd")
    bad = {k: dict(v) for k, v in g.items()}
    bad["eps"]["params"] = {"φ"}
    with pytest.raises(ValueError, match="eps"):
        dg.vae_graph(bad)
    with pytest.raises(ValueError, match="lacks"):
        dg.vae_graph({"x": g["x"]})


# ---------------------------------------------------------------------------------------------
# 3. Naive Monte Carlo
# ---------------------------------------------------------------------------------------------


def test_in_region_finds_the_nearest_cell():
    axis = torch.linspace(-2, 2, 5)  # cells at -2, -1, 0, 1, 2
    region = torch.zeros(5, 5, dtype=torch.bool)
    region[3, 4] = True  # z2 = 1, z1 = 2
    pts = torch.tensor([[2.0, 1.0], [1.6, 1.4], [1.0, 2.0], [2.4, 0.6], [9.0, 1.0], [-2.0, -2.0]])
    assert dg.in_region(pts, axis, region).tolist() == [True, True, False, True, False, False]
    with pytest.raises(ValueError, match="region"):
        dg.in_region(pts, axis, region[:4])
    with pytest.raises(ValueError, match="increasing"):
        dg.in_region(pts, axis.flip(0), region)


def test_prior_darts_draws_and_counts_the_hits(tmp_path):
    axis = torch.linspace(-4, 4, 81)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")
    region = (z1 - 1) ** 2 + (z2 + 0.5) ** 2 < 0.3**2
    s = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
    fig = dg.prior_darts(s, axis, region, prior_mass=0.01)
    _check(fig, tmp_path, "darts")
    hits = int(dg.in_region(s, axis, region).sum())
    # the oracle: distance to the disc's centre, away from its rim (where the grid decides)
    d = ((s - torch.tensor([1.0, -0.5])) ** 2).sum(1).sqrt()
    assert int((d < 0.25).sum()) <= hits <= int((d < 0.35).sum())
    assert fig.n_inside == hits > 0
    inside = _by_gid(fig, "darts:in")
    assert len(inside) == 1 and len(next(iter(inside.values())).get_offsets()) == hits
    assert f"{hits:,} of 3,000 prior codes" in fig._supxlabel.get_text()
    with pytest.raises(ValueError, match="empty"):
        dg.prior_darts(s, axis, torch.zeros(81, 81, dtype=torch.bool))
    with pytest.raises(ValueError, match="prior_mass"):
        dg.prior_darts(s, axis, region, prior_mass=1.5)


# ---------------------------------------------------------------------------------------------
# 4. The ELBO's gap
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_px, rows", [
    (344.85, {"posterior": (344.85, 0.0), "narrow": (339.76, 5.09), "wide": (331.95, 12.9)}),
    (-90.0, {"prior": (-140.0, 50.0), "q": (-95.5, 5.5)}),  # bars from 0, true lengths
])
def test_elbo_gap_draws_the_numbers_it_is_given(tmp_path, log_px, rows):
    fig = dg.elbo_gap(log_px, rows)
    _check(fig, tmp_path, "elbo_gap")
    for name, (e, k) in rows.items():
        elbo_bar = _by_gid(fig, f"elbo:{name}")[f"elbo:{name}"]
        kl_bar = _by_gid(fig, f"kl:{name}")[f"kl:{name}"]
        assert elbo_bar.get_x() + elbo_bar.get_width() == pytest.approx(e)  # the bar ends at the ELBO
        assert kl_bar.get_x() == pytest.approx(e) and kl_bar.get_width() == pytest.approx(k)
        assert kl_bar.get_x() + kl_bar.get_width() == pytest.approx(log_px)
        assert elbo_bar.get_y() == pytest.approx(kl_bar.get_y())  # one row
    starts = {_by_gid(fig, f"elbo:{n}")[f"elbo:{n}"].get_x() for n in rows}
    assert len(starts) == 1  # every bar starts at the same level
    if log_px < 0:
        assert starts == {min(0.0, *(e for e, _ in rows.values()))}


@pytest.mark.parametrize("rows, match", [
    ({"q": (11.0, -1.0)}, "negative"),
    ({"q": (12.0, 0.0)}, "exceeds"),
    ({"q": (9.0, 0.5)}, "add up"),
    ({"q": (float("nan"), 1.0)}, "finite"),
    ({}, "empty"),
])
def test_elbo_gap_refuses_numbers_that_would_lie(rows, match):
    with pytest.raises(ValueError, match=match):
        dg.elbo_gap(10.0, rows)


# ---------------------------------------------------------------------------------------------
# 5. The IWAE ladder
# ---------------------------------------------------------------------------------------------


def test_iwae_ladder_puts_each_rung_at_its_bound(tmp_path):
    ladders = {"a": {1: -109.2, 5: -107.0, 50: -105.6, 5000: -104.7}, "b": {1: -3.0, 10: -2.0}}
    fig = dg.iwae_ladder(ladders, log_px={"b": -1.5})
    _check(fig, tmp_path, "ladder")
    for name, bounds in ladders.items():
        rungs = _by_gid(fig, f"rung:{name}:")
        assert len(rungs) == len(bounds)
        heights = []
        for i, (k, v) in enumerate(bounds.items()):
            ys = rungs[f"rung:{name}:{k}"].get_ydata()
            assert list(ys) == [v, v]
            assert list(rungs[f"rung:{name}:{k}"].get_xdata()) == [i, i + 1]  # left to right in k
            heights.append(ys[0])
        assert heights == sorted(heights)
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert "log p(x) = -1.50" in texts and any("not known" in t for t in texts)


@pytest.mark.parametrize("ladders, log_px, match", [
    ({"m": {1: -100.0, 5: -101.0}}, None, "rise with k"),
    ({"m": {5: -100.0, 1: -99.0}}, None, "increasing"),
    ({"m": {1: -100.0, 5: -99.0}}, {"m": -99.5}, "exceeds log p"),
    ({"m": {1: -100.0}}, {"other": 0.0}, "not in ladders"),
    ({}, None, "empty"),
])
def test_iwae_ladder_refuses_an_unordered_ladder(ladders, log_px, match):
    with pytest.raises(ValueError, match=match):
        dg.iwae_ladder(ladders, log_px=log_px)


def test_iwae_ladder_accepts_the_packages_bounds():
    """Bounds from latentbook.evaluate's grouping are ordered per image, so their means draw."""
    from latentbook import evaluate

    torch.manual_seed(0)
    model = models.build({"arch": "vae", "latent_dim": 2, "hidden": [16]})
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    bounds = evaluate.iwae_bounds(model, x, [1, 4, 16], seed=0)
    fig = dg.iwae_ladder({"vae": {k: bounds[k].mean().item() for k in (1, 4, 16)}})
    assert len(_by_gid(fig, "rung:vae:")) == 3


# ---------------------------------------------------------------------------------------------
# 6. Rate against distortion
# ---------------------------------------------------------------------------------------------


def test_rate_distortion_draws_the_runs_and_their_diagonals(tmp_path):
    runs = {0.5: (17.45, 92.83), 1: (13.37, 99.74), 2: (9.74, 109.79), 8: (3.01, 156.13)}
    fig = dg.rate_distortion(runs)
    _check(fig, tmp_path, "rd")
    for b, (r, d) in runs.items():
        (p,) = _by_gid(fig, f"run:{b:g}").values()
        assert (p.get_xdata()[0], p.get_ydata()[0]) == (r, d)
        assert p.get_marker() == ("*" if b == 1 else "o")
    lines = _by_gid(fig, "diagonal:")
    assert set(lines) == {"diagonal:1", "diagonal:0.5"}  # β = 1 and the best ELBO (β = 0.5)
    for gid, line in lines.items():
        r, d = runs[float(gid.split(":")[1])]
        np.testing.assert_allclose(line.get_xdata() + line.get_ydata(), r + d)  # slope -1 through the run
    only = dg.rate_distortion({1: (5.0, 90.0), 2: (3.0, 100.0)})
    assert set(_by_gid(only, "diagonal:")) == {"diagonal:1"}  # β = 1 is the best: one diagonal


@pytest.mark.parametrize("runs, kw, match", [
    ({1: (-1.0, 90.0)}, {}, ">= 0"),
    ({0: (1.0, 90.0)}, {}, "> 0"),
    ({2: (1.0, 90.0)}, {}, "not one of the runs"),
    ({1: (1.0,)}, {}, "rate, distortion"),
])
def test_rate_distortion_refuses_bad_runs(runs, kw, match):
    with pytest.raises(ValueError, match=match):
        dg.rate_distortion(runs, **kw)


def test_module_is_listed_in_the_package():
    import latentbook

    assert latentbook.diagrams is dg
    assert math.isclose(dg._tol(1e12), 1e3)
