"""Numbers the prose states from a closed form rather than from a chapter's run, checked against an
oracle (``torch.distributions``, autograd), and found in the prose as written."""

import math
from pathlib import Path

import torch
import torch.distributions as dist

from latentbook import models as M

BOOK = Path(__file__).resolve().parents[1] / "book"


def _kl_to_posterior(variance_ratio: float) -> float:
    """KL(q || p) for 1-D Gaussians with one mean, q's variance ``variance_ratio`` times p's."""
    q = dist.Normal(0.0, math.sqrt(variance_ratio))
    p = dist.Normal(0.0, 1.0)
    return dist.kl_divergence(q, p).item()


def test_the_gap_favours_a_narrow_q():
    """elbo.md and latent-variable-models.md: a q with 1/9 of the posterior's variance costs 0.65 nats,
    one 9 times wider 2.90 nats (KL(q || posterior) is mode-seeking)."""
    narrow, wide = _kl_to_posterior(1 / 9), _kl_to_posterior(9.0)
    assert f"{narrow:.2f}" == "0.65" and f"{wide:.2f}" == "2.90"
    assert math.isclose(narrow, 0.5 * (1 / 9 - 1 + math.log(9)), rel_tol=1e-6)
    assert math.isclose(wide, 0.5 * (9 - 1 - math.log(9)), rel_tol=1e-6)
    for chapter in ("elbo.md", "latent-variable-models.md"):
        text = (BOOK / chapter).read_text()
        assert r"\approx 0.65$ nats" in text and r"\approx 2.90$ nats" in text, chapter


def test_l1_and_kl_push_a_quiet_unit_in_opposite_directions():
    """regularised.md's quiz: at a mean activation of 0.01 with target 0.05 the KL sparsity penalty's
    derivative is (0.01 - 0.05) / (0.01 * 0.99) = -4.0, the L1 penalty's (averaged) +1 per unit weight."""
    rho_hat = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    M.bernoulli_kl(0.05, rho_hat).backward()
    assert math.isclose(rho_hat.grad.item(), (0.01 - 0.05) / (0.01 * 0.99), rel_tol=1e-9)
    assert f"{rho_hat.grad.item():.1f}" == "-4.0"
    z = torch.full((8, 3), 0.01, dtype=torch.float64, requires_grad=True)  # a batch of sigmoid codes
    z.abs().sum(1).mean().backward()  # the L1 penalty, averaged over the batch = sum_j rho_hat_j
    assert torch.allclose(z.grad.sum(0), torch.ones(3, dtype=torch.float64))  # d/d rho_hat_j = 1 > 0
    assert r"\approx -4.0$" in (BOOK / "regularised.md").read_text()
