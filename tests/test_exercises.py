"""The self-checking exercises (latentbook.exercises), tested both ways: every chapter's reference solution
passes its checker, and the usual mistakes, written here as a learner would write them, fail with the right
hint. Each reference implementation is checked against an independent oracle."""

import math
import re
import textwrap
from pathlib import Path

import jupytext
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.metrics import roc_auc_score
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

import latentbook as lb
from latentbook import build
from latentbook import exercises as ex

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [s for s in build.chapters(ROOT) if s != "preface"]
CHECK_CALL = re.compile(r'lb\.exercises\.check\("(?P<name>[\w-]+)",\s*(?P<fn>\w+)\)')


def _learner(source: str):
    """The function a learner wrote in ``source`` (torch, math, F in scope)."""
    ns = {"torch": torch, "math": math, "F": F, "lb": lb}
    exec(textwrap.dedent(source), ns)
    (fn,) = [v for v in ns.values() if getattr(v, "__code__", None) is not None]
    return fn


# --------------------------------------------------------------------------------------------
# The chapters


def _coding_exercises(stem: str) -> dict[str, tuple[str, str, str, str]]:
    """``{label: (exercise name, function name, stub cell source, reference solution source)}`` of every
    exercise of the chapter whose next code cell ends with ``lb.exercises.check(...)``."""
    text = (ROOT / "book" / f"{stem}.md").read_text()
    out = {}
    for m in re.finditer(r"^```\{exercise\}[^\n]*\n:label: (?P<label>\S+)\n(?P<rest>.*?)(?=^```\{exercise\}|\Z)",
                         text, flags=re.M | re.S):
        label, rest = m["label"], m["rest"]
        cell = re.search(r"^```\{code-cell\}[^\n]*\n(?P<src>.*?)\n```\n", rest, flags=re.M | re.S)
        if not cell or "lb.exercises.check(" not in cell["src"]:
            continue
        stub = cell["src"]
        call = CHECK_CALL.search(stub.strip().splitlines()[-1])
        assert call, f"{stem}: the stub cell of {label} must end with lb.exercises.check(\"<name>\", <fn>)"
        sol = re.search(rf"^(`{{4,}}){{solution}} {label}\n:class: dropdown\n(?P<body>.*?)^\1$", rest,
                        flags=re.M | re.S)
        assert sol, f"{stem}: no folded solution to {label} (a four-backtick {{solution}} with :class: dropdown)"
        code = re.search(r"^```python\n(?P<code>.*?)^```$", sol["body"], flags=re.M | re.S)
        assert code, f"{stem}: the solution to {label} has no ```python block"
        out[label] = (call["name"], call["fn"], stub, code["code"])
    return out


CODING = [(stem, label) for stem in CHAPTERS for label in _coding_exercises(stem)]


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_chapter_has_a_self_checking_exercise(stem):
    coding = _coding_exercises(stem)
    assert f"ex-{stem}-code" in coding, f"{stem}: no self-checking exercise ex-{stem}-code"
    name, fn, stub, _ = coding[f"ex-{stem}-code"]
    assert name in ex.EXERCISES
    assert "raise NotImplementedError" in stub and f"def {fn}(" in stub
    text = (ROOT / "book" / f"{stem}.md").read_text()
    first = re.search(r"^## Exercises\n+```\{exercise\}[^\n]*\n:label: (\S+)", text, flags=re.M)
    assert first and first[1] == f"ex-{stem}-code", f"{stem}: the coding exercise comes first"


def _chapter_namespace(stem: str) -> dict:
    """What the chapter has imported by its end: its code cells' top-level import lines, executed."""
    nb = jupytext.read(ROOT / "book" / f"{stem}.md")
    lines = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
             if re.match(r"(import|from) \S+", line) and "latentbook.chapter" not in line]
    ns: dict = {}
    exec("\n".join(lines), ns)
    return ns


@pytest.mark.parametrize("stem,label", CODING, ids=[label for _, label in CODING])
def test_the_chapter_solution_passes_and_its_stub_is_not_attempted(stem, label):
    name, fn, stub, solution = _coding_exercises(stem)[label]
    ns = _chapter_namespace(stem)
    exec(stub, ns)  # the stub cell as the book executes it: it must not raise
    stub_feedback = ex.check(name, ns[fn])
    assert not stub_feedback.passed and not stub_feedback.attempted
    assert "not attempted yet" in stub_feedback.message
    ns = _chapter_namespace(stem)
    exec(solution, ns)
    feedback = ex.check(name, ns[fn])
    assert feedback.passed, feedback.message


def test_the_notebook_shows_the_feedback_of_the_stub():
    """The stub cell's value is the Feedback (no `;`), so the executed page shows "not attempted yet"."""
    for stem in CHAPTERS:
        nb = jupytext.read(ROOT / "book" / f"{stem}.md")
        cells = [c.source for c in nb.cells if c.cell_type == "code" and "lb.exercises.check(" in c.source]
        assert cells, stem
        assert all(not c.rstrip().endswith(";") for c in cells), stem


# --------------------------------------------------------------------------------------------
# The checker's behaviour


def test_at_least_eleven_exercises_with_specs_and_mistakes():
    assert len(ex.EXERCISES) >= 11
    for name, e in ex.EXERCISES.items():
        assert e.name == name and e.spec and e.cases and e.mistakes
        assert (ROOT / "book" / f"{e.chapter}.md").exists(), e.chapter
        assert ex.spec(name).startswith(name + "(")


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_reference_passes_and_each_declared_mistake_is_recognised(name):
    e = ex.EXERCISES[name]
    assert ex.check(name, e.reference).passed
    for m in e.mistakes:
        fb = ex.check(name, m.variant)
        assert not fb.passed and fb.hint == m.hint, (m.hint, fb.message)


def test_not_attempted_none_and_errors_are_reported_never_raised():
    def gaussian_kl(mu, logvar):
        raise NotImplementedError("your code here")

    fb = ex.check("gaussian_kl", gaussian_kl)
    assert not fb.passed and not fb.attempted and "not attempted yet" in fb.message
    assert "gaussian_kl(mu, logvar)" in fb.message  # says what to write

    def gaussian_kl(mu, logvar):
        0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)  # no return

    fb = ex.check("gaussian_kl", gaussian_kl)
    assert not fb.attempted and "returns None" in fb.message

    def gaussian_kl(mu, logvar):
        return 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(2)

    fb = ex.check("gaussian_kl", gaussian_kl)
    assert not fb.passed and fb.attempted
    assert "IndexError" in fb.message and "input (" in fb.message and "mu = tensor(" in fb.message

    assert "no exercise named" in ex.check("no-such-exercise", gaussian_kl).message
    assert "pass the function itself" in ex.check("gaussian_kl", 3.0).message
    fb = ex.check("pca_eigh", lambda X, k: X[:k])
    assert not fb.passed and "pair (components, variances)" in fb.message


def test_a_wrong_value_shows_input_expected_and_yours():
    fb = ex.check("gaussian_kl", lambda mu, logvar: (mu**2 + logvar.exp() - logvar - 1).sum(1))
    lines = fb.message.splitlines()
    assert lines[0].startswith("✗ gaussian_kl: wrong")
    assert any(line.startswith("input (") for line in lines)
    assert any("expected tensor(" in line for line in lines) and any("yours" in line for line in lines)
    assert lines[-1] == "hint: a missing 1/2 in front of the sum" == "hint: " + fb.hint


def test_a_wrong_shape_without_a_known_mistake_gets_the_shape_hint():
    fb = ex.check("mse_per_image", lambda x_hat, x: ((x_hat - x) ** 2).flatten(1).mean(1, keepdim=True))
    assert "expected shape (2,), yours (2, 1)" in fb.message and "hint: wrong shape" in fb.message


def test_one_number_may_come_as_a_float_or_a_one_element_tensor():
    def auc(normal, anomalous):
        diff = anomalous[:, None] - normal[None, :]
        return ((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()).reshape(1)

    assert ex.check("auc_from_scores", auc).passed
    assert ex.check("auc_from_scores", lambda n, a: float(auc(n, a))).passed


def test_feedback_displays_as_text_and_markdown():
    fb = ex.check("gaussian_kl", lambda mu, logvar: -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1))
    assert fb.passed and bool(fb) and repr(fb) == str(fb) == fb.message
    assert fb._repr_markdown_() == f"**{fb.message}**"
    wrong = ex.check("gaussian_kl", lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - logvar - 1).mean(1))
    md = wrong._repr_markdown_()
    assert md.startswith("**✗ gaussian_kl") and "```text\ninput (" in md and md.endswith("```")


def test_register_adds_an_exercise_and_refuses_a_duplicate():
    e = ex.Exercise(name="_test_double", chapter="background", signature="double(x)", spec="x: [n]; 2x.",
                    reference=lambda x: 2 * x, cases=(ex.Case("three", lambda: (torch.arange(3.0),)),),
                    mistakes=(ex.Mistake("that is x squared", lambda x: x**2),))
    try:
        ex.register(e)
        assert ex.check("_test_double", lambda x: x + x).passed
        assert ex.check("_test_double", lambda x: x * x).hint == "that is x squared"
        with pytest.raises(ValueError, match="exists already"):
            ex.register(e)
    finally:
        ex.EXERCISES.pop("_test_double", None)


def test_a_learner_cannot_corrupt_the_inputs_of_the_reference():
    def mse_per_image(x_hat, x):
        out = ((x_hat - x) ** 2).flatten(1).mean(1)
        x_hat.zero_()  # vandalism: the next call must still get fresh inputs
        return out

    assert ex.check("mse_per_image", mse_per_image).passed


# --------------------------------------------------------------------------------------------
# Mistakes as a learner writes them (independent of the package's variants): the right hint


LEARNER_MISTAKES = [
    ("pixel_stats", """
        def pixel_stats(x):
            return x.flatten(1).mean(1), x.flatten(1).std(1)
     """, "over the images, dim 0"),
    ("pixel_stats", """
        def pixel_stats(x):
            flat = x.reshape(len(x), -1)
            return flat.mean(dim=0), ((flat - flat.mean(dim=0)) ** 2).sum(0) / (len(x) - 1)
     """, "that is the variance"),
    ("pixel_stats", """
        def pixel_stats(x):
            flat = x.reshape(len(x), -1)
            m = flat.mean(0)
            return m, ((flat - m) ** 2).mean(0).sqrt()
     """, "divides by N - 1"),
    ("pca_eigh", """
        def pca_eigh(X, k):
            Xc = X - X.mean(0)
            vals, vecs = torch.linalg.eigh(Xc.T @ Xc / (len(X) - 1))
            return vecs[:, :k].T, vals[:k]
     """, "ascending order"),
    ("pca_eigh", """
        def pca_eigh(X, k):
            vals, vecs = torch.linalg.eigh(X.T @ X / (len(X) - 1))
            return vecs.flip(1)[:, :k].T, vals.flip(0)[:k]
     """, "centre the data"),
    ("pca_eigh", """
        def pca_eigh(X, k):
            vals, vecs = torch.linalg.eigh(torch.cov(X.T))
            return vecs[:, -k:].flip(1), vals[-k:].flip(0)
     """, "their transpose, one direction per row"),
    ("pca_eigh", """
        def pca_eigh(X, k):
            Xc = X - X.mean(0)
            vals, vecs = torch.linalg.eigh(Xc.T @ Xc / len(X))
            return vecs.flip(1)[:, :k].T, vals.flip(0)[:k]
     """, "divides by n - 1, not n"),
    ("mse_per_image", """
        def mse_per_image(x_hat, x):
            return F.mse_loss(x_hat, x)
     """, "one number for the whole batch"),
    ("mse_per_image", """
        def mse_per_image(x_hat, x):
            return ((x_hat - x) ** 2).sum(dim=(1, 2, 3))
     """, "a sum over the pixels"),
    ("mse_per_image", """
        def mse_per_image(x_hat, x):
            return ((x_hat - x) ** 2).mean(dim=0)
     """, "a mean over the images (dim 0)"),
    ("contractive_penalty", """
        def contractive_penalty(x, W, b):
            h = torch.sigmoid(x @ W.T + b)
            return (h * (1 - h)) @ (W ** 2).sum(dim=1)
     """, "square the factor z_j (1 - z_j) too"),
    ("contractive_penalty", """
        def contractive_penalty(x, W, b):
            h = torch.sigmoid(F.linear(x, W, b))
            J = (h * (1 - h))[:, :, None] * W  # [B, d, D]
            return torch.linalg.matrix_norm(J)  # Frobenius, not squared
     """, "squared Frobenius norm"),
    ("contractive_penalty", """
        def contractive_penalty(x, W, b):
            h = torch.sigmoid(x @ W.T + b)
            return ((h * (1 - h)) ** 2 @ (W ** 2).sum(1)).mean()
     """, "do not average over the batch"),
    ("mask_pixels", """
        def mask_pixels(x, p, generator):
            keep = torch.rand(x.shape, generator=generator) < p
            return x * keep
     """, "you mask a fraction 1 - p"),
    ("mask_pixels", """
        def mask_pixels(x, p, generator):
            x[torch.rand(x.shape, generator=generator) < p] = 0
            return x
     """, "changed in place"),
    ("mask_pixels", """
        def mask_pixels(x, p, generator):
            return torch.where(torch.rand_like(x) < p, torch.zeros_like(x), x)
     """, "draw the mask with the generator passed in"),
    ("auc_from_scores", """
        def auc_from_scores(normal, anomalous):
            return (normal[:, None] > anomalous[None, :]).float().mean().item() \\
                + 0.5 * (normal[:, None] == anomalous[None, :]).float().mean().item()
     """, "that is 1 - AUC"),
    ("auc_from_scores", """
        def auc_from_scores(normal, anomalous):
            wins = sum(float(a > n) for a in anomalous for n in normal)
            return wins / (len(normal) * len(anomalous))
     """, "you counted it as 0"),
    ("naive_log_px", """
        def naive_log_px(log_px_z):
            return torch.log(torch.mean(torch.exp(log_px_z), dim=0))
     """, "underflows to 0"),
    ("naive_log_px", """
        def naive_log_px(log_px_z):
            return torch.logsumexp(log_px_z, dim=0)
     """, "subtract log K"),
    ("naive_log_px", """
        def naive_log_px(log_px_z):
            return log_px_z.mean(0)
     """, "(Jensen)"),
    ("elbo_estimate", """
        def elbo_estimate(x, logits, z, mu, logvar):
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
            p = torch.distributions.Normal(0.0, 1.0)
            return rec + (q.log_prob(z) - p.log_prob(z)).sum()
     """, "minus the ELBO"),
    ("elbo_estimate", """
        def elbo_estimate(x, logits, z, mu, logvar):
            rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
            p = torch.distributions.Normal(0.0, 1.0)
            return rec + (p.log_prob(z) + q.log_prob(z)).sum()
     """, "log q(z|x) enters with a minus sign"),
    ("elbo_estimate", """
        def elbo_estimate(x, logits, z, mu, logvar):
            rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            q = torch.distributions.Normal(mu, torch.exp(logvar))
            p = torch.distributions.Normal(0.0, 1.0)
            return rec + (p.log_prob(z) - q.log_prob(z)).sum()
     """, "used it as the standard deviation"),
    ("elbo_estimate", """
        def elbo_estimate(x, logits, z, mu, logvar):
            rec = -F.binary_cross_entropy_with_logits(logits, x)
            q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
            p = torch.distributions.Normal(0.0, 1.0)
            return rec + (p.log_prob(z) - q.log_prob(z)).sum()
     """, "a sum over the pixels, not a mean"),
    ("elbo_estimate", """
        def elbo_estimate(x, logits, z, mu, logvar):
            rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            log_q = (-0.5 * math.log(2 * math.pi) - 0.5 * logvar
                     - (z - mu) ** 2 / logvar.exp()).sum()
            log_p = (-0.5 * math.log(2 * math.pi) - z ** 2).sum()
            return rec + log_p - log_q
     """, "a missing 1/2"),
    ("reparameterise", """
        def reparameterise(mu, logvar, eps):
            return torch.normal(mu, torch.exp(0.5 * logvar)).detach()
     """, "carries no gradient"),
    ("reparameterise", """
        def reparameterise(mu, logvar, eps):
            return mu + logvar.exp() * eps
     """, "exp(logvar) is the variance"),
    ("score_surrogate", """
        def score_surrogate(f, mu, logvar, eps):
            z = mu + torch.exp(0.5 * logvar) * eps
            log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
            return (f(z) * log_q).mean()
     """, "a forgotten detach"),
    ("score_surrogate", """
        def score_surrogate(f, mu, logvar, eps):
            z = (mu + torch.exp(0.5 * logvar) * eps).detach()
            log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
            return (f(z) * log_q).sum()
     """, "a sum over the S samples"),
    ("score_surrogate", """
        def score_surrogate(f, mu, logvar, eps):
            z = (mu + torch.exp(0.5 * logvar) * eps).detach()
            log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
            return -(f(z) * log_q).mean()
     """, "the sign"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            return 0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1)
     """, "the sign"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            return (mu ** 2 + logvar.exp() - logvar - 1).sum(dim=1)
     """, "a missing 1/2"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            var = logvar
            return 0.5 * (mu ** 2 + var - torch.log(var) - 1).sum(dim=1)
     """, "the variance is exp(logvar)"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            std = torch.exp(0.5 * logvar)
            return 0.5 * (mu ** 2 + std - logvar - 1).sum(dim=1)
     """, "needs the variance"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).mean(dim=1)
     """, "a mean over the d dimensions"),
    ("gaussian_kl", """
        def gaussian_kl(mu, logvar):
            return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
     """, "one value per image"),
    ("iwae_bound", """
        def iwae_bound(log_px_z, log_pz, log_qz):
            return (log_px_z + log_pz - log_qz).mean(0)
     """, "the ELBO estimate"),
    ("iwae_bound", """
        def iwae_bound(log_px_z, log_pz, log_qz):
            log_w = log_px_z + log_pz + log_qz
            return torch.logsumexp(log_w, 0) - math.log(len(log_w))
     """, "enters with a minus sign"),
    ("iwae_bound", """
        def iwae_bound(log_px_z, log_pz, log_qz):
            return torch.logsumexp(log_px_z + log_pz - log_qz, 0)
     """, "subtract log K"),
    ("entropy", """
        def entropy(p):
            return -(p * p.log()).sum(-1)
     """, "0 log 0"),
    ("entropy", """
        def entropy(p):
            return -(p * torch.log2(p.clamp_min(1e-300))).sum(-1)
     """, "in bits"),
    ("kl_categorical", """
        def kl_categorical(p, q):
            return torch.where(q > 0, q * torch.log(q / p), 0.0).sum(-1)
     """, "that is KL(q || p)"),
    ("kl_categorical", """
        def kl_categorical(p, q):
            return (p * torch.log(p / q)).sum(-1)
     """, "0 log 0"),
    ("one_hot_concat", """
        def one_hot_concat(h, y):
            return torch.cat([h, F.one_hot(y).to(h.dtype)], dim=1)
     """, "num_classes=10"),
    ("one_hot_concat", """
        def one_hot_concat(h, y):
            return torch.cat([h, y.unsqueeze(1).float().to(h.dtype)], 1)
     """, "not as one number"),
    ("one_hot_concat", """
        def one_hot_concat(h, y):
            onehot = torch.zeros(len(y), 10, dtype=h.dtype)
            onehot[torch.arange(len(y)), y] = 1
            return torch.cat([onehot, h], dim=1)
     """, "after the features"),
    ("code_perplexity", """
        def code_perplexity(indices, K):
            counts = torch.bincount(indices.flatten(), minlength=K).double()
            p = counts / counts.sum()
            return torch.exp(-(p * torch.log(p)).sum())
     """, "0 log 0"),
    ("code_perplexity", """
        def code_perplexity(indices, K):
            return len(torch.unique(indices))
     """, "counts the codes used at all"),
    ("code_perplexity", """
        def code_perplexity(indices, K):
            p = torch.bincount(indices.flatten(), minlength=K).double() / indices.numel()
            return -torch.special.xlogy(p, p).sum()
     """, "that is the entropy H"),
    ("noisy_version", """
        def noisy_version(x0, alpha_bar_t, eps):
            a = alpha_bar_t.unsqueeze(1)
            return a * x0 + (1 - a) * eps
     """, "scale by their square roots"),
    ("noisy_version", """
        def noisy_version(x0, alpha_bar_t, eps):
            return torch.sqrt(alpha_bar_t) * x0 + torch.sqrt(1 - alpha_bar_t) * eps
     """, "reshape it to [B, 1]"),
    ("noisy_version", """
        def noisy_version(x0, alpha_bar_t, eps):
            a = alpha_bar_t.view(-1, 1)
            return torch.sqrt(a) * x0 + (1 - a) * eps
     """, "not 1 - ᾱ_t"),
]


@pytest.mark.parametrize("name,source,hint", LEARNER_MISTAKES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(LEARNER_MISTAKES)])
def test_a_learners_mistake_fails_with_the_right_hint(name, source, hint):
    fb = ex.check(name, _learner(source))
    assert not fb.passed and fb.attempted
    assert fb.hint and hint in fb.hint, fb.message
    assert "hint: " + fb.hint.split()[0] in fb.message


def test_the_issue_s_mistakes_are_all_covered():
    """Wrong sign, missing ½, sum instead of mean, variance instead of log-variance, forgotten detach:
    each is the hint of some learner-written mistake above."""
    hints = " | ".join(h for _, _, h in LEARNER_MISTAKES)
    for needle in ("the sign", "a missing 1/2", "a sum over", "the variance is exp(logvar)", "forgotten detach",
                   "carries no gradient", "one value per image", "over the images, dim 0"):
        assert needle in hints, needle


# --------------------------------------------------------------------------------------------
# The references against independent oracles


def _args(name, i=-1):
    return ex.EXERCISES[name].cases[i].make()


def test_pixel_stats_against_numpy():
    for case in ex.EXERCISES["pixel_stats"].cases:
        (x,) = case.make()
        mean, std = ex.EXERCISES["pixel_stats"].reference(x)
        a = x.numpy().reshape(len(x), -1)
        np.testing.assert_allclose(mean.numpy(), a.mean(0), rtol=1e-12)
        np.testing.assert_allclose(std.numpy(), a.std(0, ddof=1), rtol=1e-12, atol=1e-15)


def test_pca_eigh_against_scikit_learn():
    for case in ex.EXERCISES["pca_eigh"].cases:
        X, k = case.make()
        comps, var = ex.EXERCISES["pca_eigh"].reference(X, k)
        sk = SklearnPCA(k, svd_solver="full").fit(X.numpy())
        np.testing.assert_allclose(var.numpy(), sk.explained_variance_, rtol=1e-9)
        cos = np.abs((comps.numpy() * sk.components_).sum(1))
        np.testing.assert_allclose(cos, 1.0, atol=1e-9)


def test_mse_per_image_against_numpy():
    x_hat, x = _args("mse_per_image")
    ref = ex.EXERCISES["mse_per_image"].reference(x_hat, x)
    np.testing.assert_allclose(ref.numpy(), ((x_hat.numpy() - x.numpy()) ** 2).reshape(len(x), -1).mean(1))


def test_contractive_penalty_against_the_autograd_jacobian():
    for case in ex.EXERCISES["contractive_penalty"].cases:
        x, W, b = case.make()
        ref = ex.EXERCISES["contractive_penalty"].reference(x, W, b)
        for i, xi in enumerate(x):
            J = torch.autograd.functional.jacobian(lambda v: torch.sigmoid(W @ v + b), xi)  # [d, D]
            assert torch.isclose(ref[i], (J**2).sum(), rtol=1e-10, atol=1e-14)


def test_mask_pixels_statistics():
    x, p, g = _args("mask_pixels", 0)
    x0 = x.clone()
    out = ex.EXERCISES["mask_pixels"].reference(x, p, g)
    assert torch.equal(x, x0) and out.shape == x.shape
    assert ((out == x) | (out == 0)).all()
    frac = (out == 0).double().mean().item()
    n = x.numel()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)  # binomial: within 4 standard deviations
    # the checker's tolerance (0.02) is over eight standard deviations of that fraction
    assert ex.EXERCISES["mask_pixels"].atol > 8 * math.sqrt(p * (1 - p) / n)


def test_auc_against_scikit_learn():
    for case in ex.EXERCISES["auc_from_scores"].cases:
        normal, anomalous = case.make()
        ref = float(ex.EXERCISES["auc_from_scores"].reference(normal, anomalous))
        y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        s = np.r_[normal.numpy(), anomalous.numpy()]
        if len(set(y)) == 2 and len(normal) + len(anomalous) > 2:
            assert ref == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        # and against lb.evaluate.roc_auc, the book's own helper
        assert ref == pytest.approx(lb.evaluate.roc_auc(normal, anomalous), abs=1e-12)


def test_naive_log_px_and_iwae_against_scipy_logsumexp():
    for case in ex.EXERCISES["naive_log_px"].cases:
        (lw,) = case.make()
        ref = ex.EXERCISES["naive_log_px"].reference(lw)
        want = scipy.special.logsumexp(lw.double().numpy(), axis=0, b=1 / lw.shape[0])
        np.testing.assert_allclose(ref.double().numpy(), want, rtol=1e-6)
    for case in ex.EXERCISES["iwae_bound"].cases:
        a, b, c = case.make()
        ref = ex.EXERCISES["iwae_bound"].reference(a, b, c)
        want = scipy.special.logsumexp((a + b - c).double().numpy(), axis=0, b=1 / a.shape[0])
        np.testing.assert_allclose(ref.double().numpy(), want, rtol=1e-6)
        assert torch.allclose(ref, lb.montecarlo.log_mean_exp(a + b - c))
    a, b, c = ex.EXERCISES["iwae_bound"].cases[1].make()  # K = 1: the bound is the ELBO estimate
    assert torch.allclose(ex.EXERCISES["iwae_bound"].reference(a, b, c), (a + b - c)[0])


def test_elbo_estimate_against_torch_distributions():
    for case in ex.EXERCISES["elbo_estimate"].cases:
        x, logits, z, mu, logvar = case.make()
        ref = ex.EXERCISES["elbo_estimate"].reference(x, logits, z, mu, logvar)
        want = (Bernoulli(logits=logits).log_prob(x).sum() + Normal(0.0, 1.0).log_prob(z).sum()
                - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum())
        assert torch.isclose(ref, want, rtol=1e-12)


def test_reparameterise_has_the_right_distribution_and_gradients():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)
    eps = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    z = ex.EXERCISES["reparameterise"].reference(mu, logvar, eps)
    assert torch.allclose(z.mean(0), mu, atol=0.01)
    assert torch.allclose(z.var(0), logvar.exp(), rtol=0.02)
    mu_, lv_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z = ex.EXERCISES["reparameterise"].reference(mu_, lv_, eps[:5])
    g_mu, g_lv = torch.autograd.grad(z.sum(), (mu_, lv_))
    assert torch.allclose(g_mu, torch.full_like(mu, 5.0))  # dz/dmu = 1 per sample
    assert torch.allclose(g_lv, (0.5 * torch.exp(0.5 * logvar) * eps[:5]).sum(0))  # dz/dlogvar = σ ε / 2


def test_score_surrogate_gradient_is_the_score_function_estimate():
    f, mu, logvar, eps = _args("score_surrogate", 0)
    mu_, lv_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    g_mu, g_lv = torch.autograd.grad(ex.EXERCISES["score_surrogate"].reference(f, mu_, lv_, eps), (mu_, lv_))
    # by hand: ∇_mu log q = (z - mu) / σ², ∇_logvar log q = ((z - mu)² / σ² - 1) / 2
    var = logvar.exp()
    z = mu + var.sqrt() * eps
    fz = f(z)[:, None]
    assert torch.allclose(g_mu, (fz * (z - mu) / var).mean(0))
    assert torch.allclose(g_lv, (fz * 0.5 * ((z - mu) ** 2 / var - 1)).mean(0))
    # unbiased: with many samples it approaches ∇ E|z|² = (2 mu, σ²) (E|z|² = |mu|² + Σσ²)
    eps = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu_, lv_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    g_mu, g_lv = torch.autograd.grad(ex.EXERCISES["score_surrogate"].reference(f, mu_, lv_, eps), (mu_, lv_))
    assert torch.allclose(g_mu, 2 * mu, atol=0.03) and torch.allclose(g_lv, var, atol=0.03)
    # and the package's estimator agrees in expectation
    pm, pl = lb.montecarlo.score_function_grad(f, mu, logvar, 400_000, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(pm[0], g_mu, atol=0.05) and torch.allclose(pl[0], g_lv, atol=0.05)


def test_gaussian_kl_against_torch_distributions():
    for case in ex.EXERCISES["gaussian_kl"].cases:
        mu, logvar = case.make()
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
        assert torch.allclose(ex.EXERCISES["gaussian_kl"].reference(mu, logvar), kl_divergence(q, p),
                              rtol=1e-12, atol=1e-12)


def test_entropy_and_kl_categorical_against_torch_and_scipy():
    for case in ex.EXERCISES["entropy"].cases:
        (p,) = case.make()
        ref = ex.EXERCISES["entropy"].reference(p)
        assert torch.allclose(ref, Categorical(probs=p).entropy(), atol=1e-12)
        np.testing.assert_allclose(ref.numpy(), scipy.stats.entropy(p.numpy(), axis=-1), atol=1e-12)
    for case in ex.EXERCISES["kl_categorical"].cases:
        p, q = case.make()
        ref = ex.EXERCISES["kl_categorical"].reference(p, q)
        assert torch.allclose(ref, kl_divergence(Categorical(probs=p), Categorical(probs=q)), atol=1e-12)
        np.testing.assert_allclose(ref.numpy(), scipy.stats.entropy(p.numpy(), q.numpy(), axis=-1), atol=1e-12)


def test_one_hot_concat_against_numpy():
    for case in ex.EXERCISES["one_hot_concat"].cases:
        h, y = case.make()
        expected = np.concatenate([h.numpy(), np.eye(10)[y.numpy()]], axis=1)
        np.testing.assert_array_equal(ex.EXERCISES["one_hot_concat"].reference(h, y).numpy(), expected)
    # the same concatenation the conditional VAE's encoder makes: its first layer sees [x, one-hot]
    torch.manual_seed(0)
    cvae = lb.models.ConditionalVAE(latent_dim=2, hidden=(8,))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 9, 3])
    with torch.no_grad():
        by_hand = cvae.encoder(ex.EXERCISES["one_hot_concat"].reference(x.flatten(1), y)).chunk(2, 1)
        for a, b in zip(by_hand, cvae.encode(x, y)):
            torch.testing.assert_close(a, b)


def test_code_perplexity_against_scipy_and_the_package():
    for case in ex.EXERCISES["code_perplexity"].cases:
        indices, K = case.make()
        counts = np.bincount(indices.flatten().numpy(), minlength=K)
        ref = ex.EXERCISES["code_perplexity"].reference(indices, K).item()
        assert math.isclose(ref, math.exp(scipy.stats.entropy(counts)), rel_tol=1e-12)
        assert math.isclose(ref, lb.vq.perplexity(indices, K), rel_tol=1e-12)


def test_diffusion_marginal_has_the_moments_of_the_forward_chain():
    """The reference against the forward chain run step by step (latentbook.diffusion.forward_chain)."""
    sched = lb.diffusion.linear_schedule(T=100, beta_T=0.05)
    x0 = torch.tensor([[0.7, -1.0]], dtype=torch.float64).expand(100_000, 2)
    t = 60
    chain = lb.diffusion.forward_chain(x0, t, sched, generator=torch.Generator().manual_seed(0))
    a = sched.alpha_bar[t - 1].expand(100_000)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = ex.EXERCISES["noisy_version"].reference(x0, a, eps)
    assert torch.allclose(ref.mean(0), chain.mean(0), atol=0.01)
    assert torch.allclose(ref.var(0), chain.var(0), rtol=0.02)
