"""The trainer: learning on real MNIST, reproducibility, divergence, bad arguments (the store: test_store.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentbook import data
from latentbook import models as M
from latentbook import train as T

TINY = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [32]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Train on one intra-op thread. On a loaded 2-core machine (notebooks executing beside the
    tests) torch's spinning OpenMP threads made these small fits ~10x slower; alone, one thread
    costs at most ~1.5x. The results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist():
    """2,000 real training images and 500 test images, [N, 1, 28, 28] in [0, 1]."""
    x, _ = data.load("mnist", "train", n=2000)
    x_test, _ = data.load("mnist", "test", n=500)
    return x, x_test


def _weights(model):
    return [t.clone() for t in model.state_dict().values()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b))


def _fit_fresh(spec, x, seed=0, **kw):
    torch.manual_seed(0)  # same initial weights; `seed` drives the training randomness only
    model = M.build(spec)
    history = T.fit(model, x, seed=seed, device="cpu", progress=False, **kw)
    return model, history


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def test_fit_lowers_the_loss_on_real_mnist(mnist):
    x, x_test = mnist
    torch.manual_seed(0)
    model = M.build({"arch": "mlp_ae", "latent_dim": 2})
    mse = lambda: ((model(x_test) - x_test) ** 2).mean().item()  # noqa: E731
    with torch.no_grad():
        before, mse_before = T.evaluate_terms(model, x_test), mse()
    history = T.fit(model, x, epochs=2, batch_size=128, x_val=x_test, device="cpu", progress=False)
    with torch.no_grad():
        after, mse_after = T.evaluate_terms(model, x_test), mse()
    # An untrained sigmoid decoder scores ~543 nats per image (784·log 2); two short epochs roughly halve it.
    assert after["loss"] < 0.6 * before["loss"]
    assert mse_after < 0.75 * mse_before
    assert history.train["loss"][1] < history.train["loss"][0]
    assert set(history.train) == set(history.val) == {"loss", "recon"}
    assert len(history.train["recon"]) == len(history.val["loss"]) == len(history.epoch_time) == history.epochs == 2
    assert history["val_loss"][-1] == pytest.approx(after["loss"], rel=1e-6)  # val = the same evaluation
    assert all(t > 0 for t in history.epoch_time)
    assert not model.training


def test_same_seed_is_bit_identical_and_another_seed_is_not(mnist):
    x = mnist[0][:384]
    spec = {"arch": "vae", "latent_dim": 2, "hidden": [32]}  # exercises the shuffle, binarisation and z draws
    kw = dict(epochs=2, batch_size=64, binarize="dynamic", kl_warmup_epochs=1)
    m1, h1 = _fit_fresh(spec, x, seed=1, **kw)
    m2, h2 = _fit_fresh(spec, x, seed=1, **kw)
    m3, _ = _fit_fresh(spec, x, seed=2, **kw)
    assert _same(_weights(m1), _weights(m2))
    assert h1.train == h2.train
    assert not _same(_weights(m1), _weights(m3))


def test_iterable_of_batches_is_a_drop_in(mnist):
    x = mnist[0][:300]
    # The batches fit draws from a tensor: a permutation from a generator seeded with `seed`.
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(5))
    batches = [x[perm[i : i + 64]] for i in range(0, 300, 64)]
    m_tensor, h_tensor = _fit_fresh(TINY, x, seed=5, epochs=1, batch_size=64)
    m_list, h_list = _fit_fresh(TINY, batches, seed=5, epochs=1, batch_size=64)
    assert _same(_weights(m_tensor), _weights(m_list))
    assert h_tensor.train == h_list.train

    loader = DataLoader(TensorDataset(x, torch.zeros(300)), batch_size=64, shuffle=True)  # (x, y) items
    _, h = _fit_fresh(TINY, loader, epochs=3, batch_size=64)
    assert h.train["loss"][-1] < h.train["loss"][0]
    with pytest.raises(ValueError, match="no batches"):  # a generator is spent after one epoch
        _fit_fresh(TINY, (b for b in batches), epochs=2)


class _NaNAfter(M.MLPAutoencoder):
    """An autoencoder whose loss turns NaN at its ``bad_call``-th call."""

    def __init__(self, bad_call: int):
        super().__init__(latent_dim=2, hidden=(16,))
        self.bad_call, self.calls = bad_call, 0

    def loss(self, x, **kw):
        out = super().loss(x, **kw)
        self.calls += 1
        if self.calls == self.bad_call:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_raises_naming_epoch_and_step(mnist):
    x = mnist[0][:320]  # 20 steps per epoch at batch 16
    model = _NaNAfter(bad_call=27)  # past one finiteness check: epoch 2, step 7
    with pytest.raises(T.TrainingDivergedError, match=r"epoch 2, step 7: loss=nan, recon=[0-9.]+\.") as info:
        T.fit(model, x, epochs=3, batch_size=16, device="cpu", progress=False)
    assert isinstance(info.value, RuntimeError) and (info.value.epoch, info.value.step) == (2, 7)
    torch.manual_seed(0)
    with pytest.raises(T.TrainingDivergedError, match="epoch 1, step"):  # a real blow-up
        T.fit(M.build(TINY), x, epochs=2, lr=1e10, device="cpu", progress=False)


class _Spy(M.VAE):
    """A VAE that records what the trainer passes to its loss."""

    def __init__(self):
        super().__init__(latent_dim=2, hidden=(16,))
        self.seen = []

    def loss(self, x, **kw):
        self.seen.append({"x": x.detach().clone(), **{k: v for k, v in kw.items() if k != "generator"}})
        return super().loss(x, **kw)


def test_warmup_binarisation_and_transform_reach_the_loss(mnist):
    x = mnist[0][:256]  # 4 steps per epoch at batch 64
    spy = _Spy()
    T.fit(spy, x, epochs=3, batch_size=64, kl_warmup_epochs=2, binarize="dynamic", device="cpu", progress=False)
    assert [s["kl_weight"] for s in spy.seen] == pytest.approx([i / 8 for i in range(1, 9)] + [1.0] * 4)
    binary = torch.cat([s["x"] for s in spy.seen])
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert binary.mean().item() == pytest.approx(x.mean().item(), abs=0.01)  # E[Bernoulli(x)] = x

    spy = _Spy()
    T.fit(spy, x, epochs=1, batch_size=64, transform=lambda xb, g: 1.0 - xb, device="cpu", progress=False)
    for s in spy.seen:  # the model sees the corrupted input and reconstructs the clean target
        torch.testing.assert_close(s["x"], 1.0 - s["target"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="shaped like its input"):
        T.fit(_Spy(), x, epochs=1, transform=lambda xb, g: xb[:1], device="cpu", progress=False)
    with pytest.raises(ValueError, match="needs a model with a KL term"):
        T.fit(M.build(TINY), x, epochs=1, kl_warmup_epochs=1, device="cpu", progress=False)


class _LabelSpy(M.MLPAutoencoder):
    """A conditional model (its loss takes ``y``) that records the images and labels it is given."""

    def __init__(self):
        super().__init__(latent_dim=2, hidden=(16,))
        self.seen = []

    def loss(self, x, *, y, target=None):
        self.seen.append((x.detach().clone(), y.clone()))
        return super().loss(x, target=target)


def test_labels_travel_with_their_images(mnist):
    x = mnist[0][:200].clone()
    y = torch.arange(200) % 10
    x[:, 0, 0, 0] = y / 10  # each image carries its label in one pixel, to check the pairing
    assert T.takes_labels(_LabelSpy()) and not T.takes_labels(M.build(TINY))
    spy = _LabelSpy()
    T.fit(spy, x, y_train=y, x_val=x[:50], y_val=y[:50], epochs=2, batch_size=64, device="cpu", progress=False)
    assert len(spy.seen) == 2 * 4 + 2  # 4 training steps per epoch, one validation batch after each epoch
    for xb, yb in spy.seen:
        assert yb.dtype == torch.long
        torch.testing.assert_close(xb[:, 0, 0, 0], yb / 10, rtol=0, atol=1e-6)
    shuffled = torch.cat([yb for _, yb in spy.seen[:4]])
    assert sorted(shuffled.tolist()) == sorted(y.tolist()) and not torch.equal(shuffled, y)  # all once, shuffled

    spy = _LabelSpy()  # a DataLoader of (x, y) batches carries its own labels
    T.fit(spy, DataLoader(TensorDataset(x, y), batch_size=50), epochs=1, device="cpu", progress=False)
    assert all(torch.equal(xb[:, 0, 0, 0] * 10, yb.float()) for xb, yb in spy.seen)
    terms = T.evaluate_terms(_LabelSpy(), x[:20], y=y[:20])
    assert set(terms) >= {"loss", "recon"}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "is conditional: give the class labels"),
    ({"y_train": torch.zeros(199, dtype=torch.long)}, "200 class labels"),
    ({"y_train": torch.zeros(200)}, "integer class labels 0..9"),
    ({"y_train": torch.full((200,), 10)}, "integer class labels 0..9"),
])
def test_a_conditional_model_refuses_missing_or_nonsense_labels(mnist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        T.fit(_LabelSpy(), mnist[0][:200], epochs=1, device="cpu", progress=False, **kwargs)


def test_labels_are_refused_where_they_mean_nothing(mnist):
    x, y = mnist[0][:100], torch.zeros(100, dtype=torch.long)
    with pytest.raises(ValueError, match="takes no labels"):
        T.fit(M.build(TINY), x, y_train=y, epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="carries its labels as"):
        T.fit(_LabelSpy(), DataLoader(TensorDataset(x, y), batch_size=50), y_train=y, epochs=1, device="cpu",
              progress=False)
    with pytest.raises(ValueError, match="batches \\(x, y\\)"):
        T.fit(_LabelSpy(), DataLoader(TensorDataset(x), batch_size=50), epochs=1, device="cpu", progress=False)


def test_fit_rejects_bad_arguments(mnist):
    x = mnist[0][:64]
    model = M.build(TINY)
    cases = [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(epochs=1, lr=-1.0), "lr must be a positive number"),
        (dict(epochs=1, binarize="static"), "binarize must be None or 'dynamic'"),
        (dict(epochs=1, loss_kwargs={"beta": 2.0}), r"does not accept \['beta'\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            T.fit(model, x, device="cpu", progress=False, **kwargs)
    with pytest.raises(ValueError, match="float images"):
        T.fit(model, (x * 255).to(torch.uint8), epochs=1, device="cpu", progress=False)


def test_progress_bar_follows_the_flag_and_the_environment(mnist, monkeypatch, capsys):
    x = mnist[0][:64]
    monkeypatch.setenv("LATENTBOOK_PROGRESS", "1")
    T.fit(M.build(TINY), x, epochs=2, device="cpu", progress=True)
    assert "epoch=2/2" in capsys.readouterr().err
    T.fit(M.build(TINY), x, epochs=1, device="cpu", progress=False)
    monkeypatch.setenv("LATENTBOOK_PROGRESS", "0")
    T.fit(M.build(TINY), x, epochs=1, device="cpu", progress=True)
    assert capsys.readouterr().err == ""




@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_fit_is_the_plain_loop_the_chapters_write_out(mnist, kind):
    """The autoencoder and VAE chapters train a model with a loop written in full and claim that
    ``fit`` takes the same steps. With the same fused Adam the two agree bit for bit: a shuffled
    permutation per epoch, then (VAE) a Bernoulli draw of the batch and the noise, from one generator."""
    import torch.nn.functional as F

    x = mnist[0][:600]
    model = (M.MLPAutoencoder(2, hidden=(16,)) if kind == "ae" else M.VAE(2, hidden=(16,)))
    twin = type(model)(2, hidden=(16,))
    twin.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    by_hand = []
    for _ in range(2):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 128):
            xb = x[order[i : i + 128]]
            if kind == "ae":
                logits = model.decoder(model.encoder(xb))
                kl = torch.zeros(len(xb))
            else:
                xb = torch.bernoulli(xb, generator=gen)
                mu, logvar = model.encoder(xb).chunk(2, dim=1)
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
                logits = model.decoder(z)
                kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)
            recon = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum((1, 2, 3))
            loss = (recon + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        by_hand.append(total / len(x))
    hist = T.fit(twin, x, epochs=2, batch_size=128, lr=1e-3, seed=3, device="cpu", progress=False,
                 binarize="dynamic" if kind == "vae" else None)
    assert hist["loss"] == pytest.approx(by_hand, rel=1e-6)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------------------------


def _lrs(kind, lr, total):
    """The learning rate of each of ``total`` steps under make_lr_schedule (as fit sets it)."""
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = T.make_lr_schedule(opt, kind, lr, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_lr_schedules_have_their_closed_forms():
    import math

    total, lr = 40, 3e-3
    assert _lrs("constant", lr, total) == [lr] * total
    cos = _lrs("cosine", lr, total)
    assert cos == pytest.approx([lr / 2 * (1 + math.cos(math.pi * t / total)) for t in range(total)], rel=1e-9)
    one = _lrs("onecycle", lr, total)
    peak = round(0.3 * total) - 1  # torch's OneCycleLR: the warm-up phase ends on this step
    assert one[0] == pytest.approx(lr / 25) and one[peak] == pytest.approx(lr) and max(one) == pytest.approx(lr)
    assert all(a < b for a, b in zip(one[:peak], one[1 : peak + 1]))  # up, then down
    assert all(a > b for a, b in zip(one[peak:], one[peak + 1 :]))
    assert one[-1] == pytest.approx(lr / 25e4, rel=0.2)


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
def test_fit_steps_the_schedule_once_per_batch(mnist, kind):
    """fit with a schedule = the plain loop with torch's scheduler stepped after every optimizer step, over
    epochs x ceil(N / batch) steps: bit-identical weights (the last batch of each epoch is a short one)."""
    import torch.nn.functional as F

    x = mnist[0][:600]
    model = M.MLPAutoencoder(2, hidden=(16,))
    twin = M.MLPAutoencoder(2, hidden=(16,))
    twin.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
    steps = 2 * -(-len(x) // 128)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if kind == "cosine"
             else torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps))
    for _ in range(2):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            xb = x[order[i : i + 128]]
            loss = F.binary_cross_entropy_with_logits(model.decoder(model.encoder(xb)), xb,
                                                      reduction="none").sum((1, 2, 3)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    T.fit(twin, x, epochs=2, batch_size=128, lr=3e-3, seed=3, device="cpu", progress=False, lr_schedule=kind)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_schedule_changes_the_key_and_a_constant_rate_does_not(mnist):
    from latentbook import store

    def key(**kw):
        return store.key_of(T.model_config(TINY, dataset="mnist", n_train=100, epochs=2, batch_size=32, lr=1e-3,
                                           seed=0, **kw))

    assert key() == key(lr_schedule="constant")  # models trained before schedules existed keep their keys
    assert len({key(), key(lr_schedule="cosine"), key(lr_schedule="onecycle")}) == 3
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        key(lr_schedule="linear")


def test_a_schedule_needs_to_know_the_number_of_steps(mnist):
    x = mnist[0][:64]
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        T.fit(M.build(TINY), x, epochs=1, device="cpu", progress=False, lr_schedule="step")
    batches = (b for b in [x[:32], x[32:]])  # a generator has no len()
    with pytest.raises(ValueError, match="needs the number of steps"):
        T.fit(M.build(TINY), batches, epochs=1, device="cpu", progress=False, lr_schedule="onecycle")
