"""Coding exercises that check themselves: ``lb.exercises.check("gaussian_kl", gaussian_kl)``.

Each chapter ends with a stub the learner fills in (otter-grader's ``grader.check("q1")`` convention).
:func:`check` runs the learner's function and the reference on the exercise's inputs and returns a
:class:`Feedback`, which a notebook shows as text. It never raises: an unfilled stub (raising
``NotImplementedError`` or returning None) is "not attempted yet"; an exception is named with the input
that caused it; a wrong value comes with the failing input, the expected value and the learner's, and,
when the wrong answer equals what a known mistake gives on that input, a hint for that mistake.

An exercise is one row of :data:`EXERCISES`: a short spec, the reference implementation (tested against
independent oracles in ``tests/test_exercises.py``), fixed inputs (:class:`Case`, seeded, with edge
cases) and the usual mistakes (:class:`Mistake`: the mistaken implementation and its hint). To add one,
build an :class:`Exercise` and pass it to :func:`register`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentbook import losses, montecarlo

__all__ = ["Feedback", "Case", "Mistake", "Exercise", "EXERCISES", "register", "check", "names", "spec"]

LOG_2PI = math.log(2 * math.pi)
WIDTH = 76  # feedback lines wrap here: they fit the code column of the website and of a notebook


# --------------------------------------------------------------------------------------------
# What the learner sees


@dataclass(frozen=True)
class Feedback:
    """The verdict on one attempt: shown as text in a notebook (``repr``) and as Markdown in Jupyter."""

    name: str
    passed: bool
    message: str
    attempted: bool = True
    hint: str | None = None  # the recognised mistake's hint, if any

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        head, _, rest = self.message.partition("\n")
        body = f"\n\n```text\n{rest.strip(chr(10))}\n```" if rest.strip() else ""
        return f"**{head}**{body}"


# --------------------------------------------------------------------------------------------
# What an exercise is


@dataclass(frozen=True)
class Case:
    """One input: ``make()`` returns a fresh tuple of arguments (so a learner's in-place change or a
    gradient cannot leak from one call to the next); ``shown`` replaces how an argument is printed
    (e.g. a function, by its formula)."""

    label: str
    make: Callable[[], tuple]
    shown: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Mistake:
    """A usual mistake: ``variant`` is the mistaken implementation (same signature as the reference).
    The learner's answer is said to be this mistake when its observation equals the variant's, on
    ``keys`` only if given (e.g. only the gradients, for a sample drawn from the wrong generator)."""

    hint: str
    variant: Callable[..., Any]
    keys: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Exercise:
    """A coding exercise: what to write (``spec``), the oracle (``reference``), the inputs and the
    usual mistakes. ``observe(fn, args)`` turns a function's answer into named values to compare
    (default: the return value, split into ``outputs`` when it is a tuple); a custom one runs ``fn``
    through :func:`_call` (which tells an unfilled stub and the learner's own errors apart) and may
    return gradients or statistics instead of values (see ``reparameterise`` and ``mask_pixels``).
    Values are compared with ``rtol`` and ``atol``; a :class:`Mistake` is recognised on the same terms."""

    name: str
    chapter: str
    signature: str  # e.g. "gaussian_kl(mu, logvar)"
    spec: str
    reference: Callable[..., Any]
    cases: tuple[Case, ...]
    mistakes: tuple[Mistake, ...] = ()
    outputs: tuple[str, ...] = ("value",)
    observe: Callable[..., dict[str, Any]] | None = None
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def params(self) -> list[str]:
        inside = self.signature.split("(", 1)[1].rsplit(")", 1)[0]
        return [p.strip() for p in inside.split(",") if p.strip()]


EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to :data:`EXERCISES` (its name must be new)."""
    if exercise.name in EXERCISES:
        raise ValueError(f"an exercise named {exercise.name!r} exists already")
    EXERCISES[exercise.name] = exercise
    return exercise


def names() -> list[str]:
    return list(EXERCISES)


def spec(name: str) -> str:
    """What the exercise ``name`` asks for: its signature and spec."""
    ex = _get(name)
    return f"{ex.signature}: {ex.spec}"


def _get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise KeyError(f"no exercise named {name!r}; there are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


# --------------------------------------------------------------------------------------------
# Checking


class _NotAttempted(Exception):
    pass


class _LearnerError(Exception):
    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Malformed(Exception):
    """The answer has the wrong form (not a tensor, not a pair...)."""


def _call(fn: Callable, args: tuple) -> Any:
    """``fn(*args)``, sorting out an unfilled stub and an exception raised by the learner's code."""
    try:
        out = fn(*args)
    except NotImplementedError as e:
        raise _NotAttempted(str(e)) from None
    except Exception as e:
        raise _LearnerError(e) from None
    if out is None:
        raise _NotAttempted("it returns None")
    return out


def _as_tensor(v: Any, what: str = "the answer") -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().cpu()
    if isinstance(v, (bool, int, float)):
        return torch.tensor(float(v), dtype=torch.float64)
    try:
        import numpy as np

        if isinstance(v, (np.ndarray, np.generic)):
            return torch.as_tensor(np.asarray(v, dtype=np.float64))
    except ImportError:  # pragma: no cover
        pass
    raise _Malformed(f"{what} is a {type(v).__name__}; a tensor (or a number) was expected")


def _default_observe(outputs: tuple[str, ...]) -> Callable[[Callable, tuple], dict[str, Any]]:
    def observe(fn: Callable, args: tuple) -> dict[str, Any]:
        out = _call(fn, args)
        if len(outputs) == 1:
            return {outputs[0]: _as_tensor(out)}
        if not isinstance(out, (tuple, list)) or len(out) != len(outputs):
            raise _Malformed(f"the answer should be a tuple ({', '.join(outputs)}); "
                             f"got a {type(out).__name__}")
        return {k: _as_tensor(v, k) for k, v in zip(outputs, out)}

    return observe


def _observe(ex: Exercise, fn: Callable, case: Case) -> dict[str, Any]:
    return (ex.observe or _default_observe(ex.outputs))(fn, case.make())


def _same(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        one_number = a.numel() == b.numel() == 1 and a.ndim <= 1 and b.ndim <= 1  # 0.5 and [0.5] alike
        if a.shape != b.shape and not one_number:
            return False
        return bool(torch.allclose(a.double().reshape(b.shape), b.double(), rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (math.isnan(a) and math.isnan(b))
    return a == b


def _differing(expected: dict, got: dict, ex: Exercise, keys: Sequence[str] | None = None) -> list[str]:
    """The keys on which two observations differ (a key missing from both does not differ)."""
    out = []
    for k in keys or expected:
        if (k in expected) != (k in got) or (k in got and not _same(expected[k], got[k], ex.rtol, ex.atol)):
            out.append(k)
    return out


def _fmt_number(x: float) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x + 0.0:.6g}"  # + 0.0: no "-0"


def _show(v: Any) -> str:
    """A value, compactly: a small tensor in full (4 significant digits), a large one by its shape
    and range."""
    if isinstance(v, Tensor):
        v = v.detach().cpu()
        if v.dtype == torch.bool:
            v = v.to(torch.int64)
        if v.numel() <= 16:
            if v.ndim == 0:
                return _fmt_number(v.item())

            def nest(t):
                return "[" + ", ".join(nest(s) if s.ndim else f"{s.item() + 0:.4g}" for s in t) + "]"

            return f"tensor({nest(v)})"
        finite = v[torch.isfinite(v)] if v.is_floating_point() else v
        span = (f", values from {finite.min().item():.4g} to {finite.max().item():.4g}"
                if finite.numel() else "")
        extra = ""
        if v.is_floating_point() and not torch.isfinite(v).all():
            extra = f", {int((~torch.isfinite(v)).sum())} not finite (nan or inf)"
        return f"tensor of shape {tuple(v.shape)}{span}{extra}"
    if isinstance(v, torch.Generator):
        return f"torch.Generator (seed {v.initial_seed()})"
    if isinstance(v, float):
        return _fmt_number(v)
    if callable(v):
        return getattr(v, "__name__", repr(v))
    return repr(v)


def _show_input(ex: Exercise, case: Case) -> str:
    args = case.make()
    params = ex.params
    lines = [f"input ({case.label}):"]
    for i, a in enumerate(args):
        name = params[i] if i < len(params) else f"argument {i + 1}"
        shown = case.shown.get(name, _show(a))
        lines.append(f"  {name} = {shown}")
    return "\n".join(lines)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def _shape(v: Any) -> str:
    return str(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__


def check(name: str, fn: Callable) -> Feedback:
    """Check the learner's ``fn`` for the exercise ``name``; never raises (see the module's docstring)."""
    try:
        ex = _get(name)
    except KeyError as e:
        return Feedback(name, False, f"✗ {name}: {e.args[0]}", attempted=False)
    if not callable(fn):
        return Feedback(name, False, f"✗ {name}: pass the function itself, not {_show(fn)}", attempted=False)
    try:
        return _check(ex, fn)
    except Exception as e:  # the checker itself must never take the notebook down
        return Feedback(name, False, f"✗ {name}: the checker could not use your answer\n"
                                     f"{_wrap(f'{type(e).__name__}: {e}')}")


def _check(ex: Exercise, fn: Callable) -> Feedback:
    title = f"{ex.name}"
    for case in ex.cases:
        try:
            got = _observe(ex, fn, case)
        except _NotAttempted as e:
            why = f" ({e})" if str(e) and str(e) != "your code here" else ""
            return Feedback(ex.name, False, f"… {title}: not attempted yet{why}.\n"
                                            + _wrap(f"Write {ex.signature}: {ex.spec}"), attempted=False)
        except _LearnerError as e:
            err = e.error
            return Feedback(ex.name, False, f"✗ {title}: your function raised {type(err).__name__}\n"
                                            f"{_wrap(f'{type(err).__name__}: {err}')}\n{_show_input(ex, case)}")
        except _Malformed as e:
            return Feedback(ex.name, False, f"✗ {title}: not the expected form\n{_wrap(str(e))}\n"
                                            f"{_show_input(ex, case)}")
        expected = _observe(ex, ex.reference, case)
        wrong = _differing(expected, got, ex)
        if not wrong:
            continue
        lines = [f"✗ {title}: wrong {' and '.join(wrong)}", _show_input(ex, case)]
        for k in wrong:
            e, g = expected[k], got.get(k, "(missing)")
            if isinstance(e, Tensor) and isinstance(g, Tensor) and e.shape != g.shape:
                lines.append(f"{k}: expected shape {_shape(e)}, yours {_shape(g)}")
            lines.append(f"{k}: expected {_show(e)}")
            lines.append(f"{' ' * len(k)}  yours    {_show(g)}")
        hint = _diagnose(ex, case, expected, got)
        if hint:
            lines.append(_wrap(f"hint: {hint}", "      "))
        elif any(isinstance(expected[k], Tensor) and isinstance(got.get(k), Tensor)
                 and expected[k].shape != got[k].shape for k in wrong):
            lines.append("hint: wrong shape; check which dimensions you reduce over (the spec gives the shapes)")
        return Feedback(ex.name, False, "\n".join(lines), hint=hint)
    labels = ", ".join(c.label for c in ex.cases)
    return Feedback(ex.name, True, f"✓ {title}: correct on all {len(ex.cases)} inputs ({labels})")


def _diagnose(ex: Exercise, case: Case, expected: dict, got: dict) -> str | None:
    """The hint of the first mistake whose variant gives what the learner gave on this input."""
    for m in ex.mistakes:
        try:
            theirs = _observe(ex, m.variant, case)
        except Exception:
            continue
        keys = m.keys or tuple(expected)
        if _differing(expected, theirs, ex, keys) and not _differing(theirs, got, ex, keys):
            return m.hint
    return None


# --------------------------------------------------------------------------------------------
# Inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(seed: int, *shape: int, scale: float = 1.0, shift: float = 0.0, dtype=torch.float64) -> Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype) * scale + shift


def _rand(seed: int, *shape: int, low: float = 0.0, high: float = 1.0, dtype=torch.float64) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=_gen(seed), dtype=dtype)


def _t(values, dtype=torch.float64) -> Tensor:
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------------------------
# data: per-pixel statistics


def _pixel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    flat = x.flatten(1)  # [N, H*W]: one row per image
    return flat.mean(0), flat.std(0)


register(Exercise(
    name="pixel_stats",
    chapter="data",
    signature="pixel_stats(x)",
    spec="x: images [N, 1, H, W]. Return (mean, std), each [H*W]: the mean and the standard deviation of "
         "each pixel over the N images (torch's default std, which divides by N - 1).",
    reference=_pixel_stats,
    outputs=("mean", "std"),
    cases=(
        Case("three 2x2 images", lambda: (_t([[[[0.0, 1.0], [0.5, 0.0]]], [[[0.0, 0.5], [1.0, 0.0]]],
                                                [[[0.0, 0.0], [0.5, 1.0]]]]),)),
        Case("two equal images: no spread", lambda: (_t([[[[0.2, 0.8], [0.0, 1.0]]]]).repeat(2, 1, 1, 1),)),
        Case("five random 28x28 images", lambda: (_rand(1, 5, 1, 28, 28),)),
    ),
    mistakes=(
        Mistake("statistics over the pixels of each image (one value per image); take them over the images, "
                "dim 0 of x.flatten(1)", lambda x: (x.flatten(1).mean(1), x.flatten(1).std(1))),
        Mistake("flatten the images first: x.flatten(1) is [N, H*W]", lambda x: (x.mean(0), x.std(0))),
        Mistake("that is the variance; the standard deviation is its square root (x.std)",
                lambda x: (x.flatten(1).mean(0), x.flatten(1).var(0))),
        Mistake("torch's std divides by N - 1 (its default); yours divides by N",
                lambda x: (x.flatten(1).mean(0), x.flatten(1).std(0, unbiased=False))),
        Mistake("a sum over the images, not a mean", lambda x: (x.flatten(1).sum(0), x.flatten(1).std(0))),
    ),
))


# --------------------------------------------------------------------------------------------
# pca: PCA by an eigendecomposition


def _pca_eigh(X: Tensor, k: int) -> tuple[Tensor, Tensor]:
    Xc = X - X.mean(0)
    C = Xc.T @ Xc / (X.shape[0] - 1)  # [D, D] covariance
    evals, evecs = torch.linalg.eigh(C)  # ascending
    return evecs.flip(1)[:, :k].T, evals.flip(0)[:k]


def _sign_fixed(V: Tensor) -> Tensor:
    """Each row of ``V`` times the sign of its entry of largest magnitude: directions up to sign."""
    if V.ndim != 2 or V.numel() == 0:
        return V
    idx = V.abs().argmax(1, keepdim=True)
    s = torch.sign(V.gather(1, idx))
    return V * torch.where(s == 0, torch.ones_like(s), s)


def _observe_pca(fn: Callable, args: tuple) -> dict[str, Any]:
    out = _call(fn, args)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise _Malformed(f"the answer should be a pair (components, variances); got a {type(out).__name__}")
    comps, var = _as_tensor(out[0], "components"), _as_tensor(out[1], "variances")
    return {"components (up to sign)": _sign_fixed(comps), "variances": var}


def _pca_cloud(seed: int, n: int, D: int) -> Tensor:
    scales = torch.linspace(3.0, 0.5, D, dtype=torch.float64)  # distinct variances: no ties
    rot = torch.linalg.qr(_randn(seed + 1, D, D)).Q
    return (_randn(seed, n, D) * scales) @ rot.T + _randn(seed + 2, D, scale=2.0)


register(Exercise(
    name="pca_eigh",
    chapter="pca",
    signature="pca_eigh(X, k)",
    spec="X: data [n, D] (one row per point), k: an int. Return (components, variances): the top k "
         "principal directions as the rows of a [k, D] tensor, largest variance first, and their "
         "variances [k] (eigenvalues of the covariance, which divides by n - 1). Use torch.linalg.eigh.",
    reference=_pca_eigh,
    observe=_observe_pca,
    cases=(
        Case("five points in 2-D, k = 1", lambda: (_t([[2.0, 1.0], [0.0, 0.0], [4.0, 3.0], [1.0, 2.0],
                                                         [3.0, 4.0]]), 1)),
        Case("40 points in 5-D, k = 2", lambda: (_pca_cloud(3, 40, 5), 2)),
        Case("30 points in 4-D, every component (k = D)", lambda: (_pca_cloud(7, 30, 4), 4)),
    ),
    mistakes=(
        Mistake("eigh returns the eigenvalues in ascending order: flip them (and the eigenvectors) so the "
                "largest comes first",
                lambda X, k: (lambda e, v: (v[:, :k].T, e[:k]))(
                    *torch.linalg.eigh((X - X.mean(0)).T @ (X - X.mean(0)) / (X.shape[0] - 1)))),
        Mistake("centre the data first (subtract the mean of each column)",
                lambda X, k: (lambda e, v: (v.flip(1)[:, :k].T, e.flip(0)[:k]))(
                    *torch.linalg.eigh(X.T @ X / (X.shape[0] - 1)))),
        Mistake("the eigenvectors are the columns of eigh's second output: the components are their "
                "transpose, one direction per row",
                lambda X, k: (_pca_eigh(X, k)[0].T, _pca_eigh(X, k)[1])),
        Mistake("the covariance divides by n - 1, not n",
                lambda X, k: (_pca_eigh(X, k)[0], _pca_eigh(X, k)[1] * (X.shape[0] - 1) / X.shape[0])),
    ),
))


# --------------------------------------------------------------------------------------------
# autoencoders: reconstruction error per image


def _mse_per_image(x_hat: Tensor, x: Tensor) -> Tensor:
    return ((x_hat - x) ** 2).flatten(1).mean(1)


register(Exercise(
    name="mse_per_image",
    chapter="autoencoders",
    signature="mse_per_image(x_hat, x)",
    spec="x_hat, x: images [B, 1, H, W]. Return [B]: each image's mean squared error, the mean over its "
         "pixels of (x_hat - x)^2.",
    reference=_mse_per_image,
    cases=(
        Case("two 2x2 images", lambda: (_t([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [0.0, 0.0]]]]),
                                         _t([[[[0.0, 0.5], [0.5, 1.0]]], [[[1.0, 0.0], [0.0, 0.0]]]]))),
        Case("a perfect reconstruction", lambda: (_rand(2, 3, 1, 4, 4), _rand(2, 3, 1, 4, 4))),
        Case("four random 28x28 images", lambda: (_rand(3, 4, 1, 28, 28), _rand(4, 4, 1, 28, 28))),
        Case("one image", lambda: (_rand(5, 1, 1, 28, 28), _rand(6, 1, 1, 28, 28))),
    ),
    mistakes=(
        Mistake("a sum over the pixels; the MSE is their mean", lambda a, b: ((a - b) ** 2).flatten(1).sum(1)),
        Mistake("one number for the whole batch; keep one per image (reduce over dims 1, 2, 3 only)",
                lambda a, b: ((a - b) ** 2).mean()),
        Mistake("a mean over the images (dim 0); average over each image's pixels instead",
                lambda a, b: ((a - b) ** 2).mean(0)),
        Mistake("square the differences: that is the mean absolute error",
                lambda a, b: (a - b).abs().flatten(1).mean(1)),
        Mistake("no square root: that is the root mean squared error",
                lambda a, b: ((a - b) ** 2).flatten(1).mean(1).sqrt()),
    ),
))


# --------------------------------------------------------------------------------------------
# regularised: the contractive penalty of a sigmoid layer, and masking noise


def _contractive_penalty(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    z = torch.sigmoid(x @ W.T + b)  # [B, d]
    return (z * (1 - z)) ** 2 @ (W**2).sum(1)  # Σ_j (z_j (1 - z_j))² Σ_i W_ji²


register(Exercise(
    name="contractive_penalty",
    chapter="regularised",
    signature="contractive_penalty(x, W, b)",
    spec="x: flattened images [B, D]; W: [d, D] and b: [d], the weights of the encoder z = sigmoid(x W^T + b). "
         "Return [B]: the squared Frobenius norm of the encoder's Jacobian dz/dx at each image, by the "
         "closed form (no autograd).",
    reference=_contractive_penalty,
    cases=(
        Case("one image, D = 3, d = 2", lambda: (_t([[0.5, -1.0, 2.0]]), _t([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]),
                                                  _t([0.0, 0.1]))),
        Case("W = 0: a constant code", lambda: (_rand(1, 2, 5), torch.zeros(3, 5, dtype=torch.float64),
                                                _t([0.0, 1.0, -1.0]))),
        Case("four random images, D = 784, d = 16", lambda: (_rand(2, 4, 784), _randn(3, 16, 784, scale=0.05),
                                                             _randn(4, 16, scale=0.1))),
    ),
    mistakes=(
        Mistake("each entry of the Jacobian is z_j (1 - z_j) W_ji: square the factor z_j (1 - z_j) too",
                lambda x, W, b: (lambda z: (z * (1 - z)) @ (W**2).sum(1))(torch.sigmoid(x @ W.T + b))),
        Mistake("the penalty is the squared Frobenius norm; you took its square root",
                lambda x, W, b: _contractive_penalty(x, W, b).sqrt()),
        Mistake("the sigmoid's derivative is z (1 - z), not z",
                lambda x, W, b: (lambda z: z**2 @ (W**2).sum(1))(torch.sigmoid(x @ W.T + b))),
        Mistake("one value per image: do not average over the batch",
                lambda x, W, b: _contractive_penalty(x, W, b).mean()),
    ),
))


def _mask_pixels(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype) >= p  # each pixel kept w.p. 1 - p
    return x * keep


def _observe_masking(fn: Callable, args: tuple) -> dict[str, Any]:
    x, p, generator = args
    seed = generator.initial_seed()
    x0 = x.clone()
    out = _as_tensor(_call(fn, args))
    obs: dict[str, Any] = {"shape": tuple(out.shape), "input left unchanged": torch.equal(x, x0)}
    if out.shape != x0.shape:
        return obs
    zeroed = (out == 0) & (x0 != 0)
    obs["every changed pixel is 0"] = bool((out[out != x0] == 0).all())
    obs["fraction of pixels set to 0"] = (zeroed.sum() / (x0 != 0).sum()).item()
    again = _as_tensor(_call(fn, (x0.clone(), p, _gen(seed))))
    obs["the same seed gives the same output"] = torch.equal(out, again)
    return obs


register(Exercise(
    name="mask_pixels",
    chapter="regularised",
    signature="mask_pixels(x, p, generator)",
    spec="x: images [N, 1, H, W]; p: a probability; generator: a torch.Generator. Return a corrupted copy "
         "of x, same shape: each pixel set to 0 with probability p (independently), drawn from generator, "
         "with x itself left unchanged.",
    reference=_mask_pixels,
    observe=_observe_masking,
    rtol=0.0,
    atol=0.02,  # the masked fraction of 64 x 784 pixels: its standard deviation is about 0.002
    cases=(
        Case("64 random images, p = 0.3", lambda: (_rand(1, 64, 1, 28, 28, low=0.05), 0.3, _gen(11))),
        Case("p = 0: nothing masked", lambda: (_rand(2, 8, 1, 28, 28, low=0.05), 0.0, _gen(12))),
        Case("p = 1: everything masked", lambda: (_rand(3, 8, 1, 28, 28, low=0.05), 1.0, _gen(13))),
    ),
    mistakes=(
        Mistake("you mask a fraction 1 - p: p is the probability of setting a pixel to 0, not of keeping it",
                lambda x, p, g: x * (torch.rand(x.shape, generator=g, dtype=x.dtype) < p),
                keys=("fraction of pixels set to 0",)),
        Mistake("x was changed in place: work on a copy (x.clone(), or x * mask)",
                lambda x, p, g: x.mul_(torch.rand(x.shape, generator=g, dtype=x.dtype) >= p),
                keys=("input left unchanged",)),
        Mistake("draw the mask with the generator passed in (torch.rand(..., generator=generator)), so that "
                "a seed reproduces it",
                lambda x, p, g: x * (torch.rand(x.shape, dtype=x.dtype) >= p),
                keys=("the same seed gives the same output",)),
    ),
))


# --------------------------------------------------------------------------------------------
# applications: ROC AUC from anomaly scores


def _auc_from_scores(normal: Tensor, anomalous: Tensor) -> Tensor:
    diff = anomalous[:, None] - normal[None, :]  # [m, n]: every (anomaly, normal) pair
    return (diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()


register(Exercise(
    name="auc_from_scores",
    chapter="applications",
    signature="auc_from_scores(normal, anomalous)",
    spec="normal: anomaly scores [n] of normal inputs; anomalous: scores [m] of anomalies (higher = more "
         "anomalous). Return the ROC AUC, a number: the fraction of the n*m (anomaly, normal) pairs in which "
         "the anomaly scores higher, a tie counting one half.",
    reference=_auc_from_scores,
    cases=(
        Case("separated scores", lambda: (_t([0.1, 0.2, 0.3]), _t([0.5, 0.9]))),
        Case("with ties", lambda: (_t([0.1, 0.5, 0.5, 0.2]), _t([0.5, 0.7, 0.1]))),
        Case("overlapping, 40 normal and 30 anomalies", lambda: (_randn(1, 40), _randn(2, 30, shift=1.0))),
        Case("one of each, equal", lambda: (_t([0.4]), _t([0.4]))),
    ),
    mistakes=(
        Mistake("that is 1 - AUC: count the pairs where the anomaly's score is higher than the normal one's",
                lambda n, a: 1 - _auc_from_scores(n, a)),
        Mistake("a tie counts one half; you counted it as 0 (use > and add half of ==)",
                lambda n, a: (a[:, None] > n[None, :]).double().mean()),
        Mistake("a tie counts one half; you counted it as 1",
                lambda n, a: (a[:, None] >= n[None, :]).double().mean()),
    ),
))


# --------------------------------------------------------------------------------------------
# latent-variable-models: naive Monte Carlo in log space


def _naive_log_px(log_px_z: Tensor) -> Tensor:
    return montecarlo.log_mean_exp(log_px_z, 0)


register(Exercise(
    name="naive_log_px",
    chapter="latent-variable-models",
    signature="naive_log_px(log_px_z)",
    spec="log_px_z: [K, B], log p(x_b | z_k) for K codes z_k drawn from the prior and B images. Return [B]: "
         "the naive Monte Carlo estimate log((1/K) sum_k p(x_b | z_k)), computed in log space.",
    reference=_naive_log_px,
    cases=(
        Case("K = 3, B = 2, small values", lambda: (_t([[-1.0, -2.0], [-0.5, -3.0], [-2.0, -1.0]]),)),
        Case("one sample (K = 1)", lambda: (_t([[-3.0, -7.5, -0.2]]),)),
        Case("K = 5, B = 3, log-likelihoods near -300 (float32)",
             lambda: (_randn(2, 5, 3, scale=30.0, shift=-300.0, dtype=torch.float32),)),
    ),
    mistakes=(
        Mistake("exp of log-likelihoods this small underflows to 0 (and log 0 = -inf): stay in log space "
                "with torch.logsumexp", lambda lw: torch.log(torch.exp(lw).mean(0))),
        Mistake("logsumexp gives the log of the sum: subtract log K to get the log of the mean",
                lambda lw: torch.logsumexp(lw, 0)),
        Mistake("that is the mean of the log-likelihoods, E[log p(x|z)], which is smaller than log p(x) "
                "(Jensen): average the likelihoods, in log space", lambda lw: lw.mean(0)),
        Mistake("reduce over the samples, dim 0 (one value per image)",
                lambda lw: torch.logsumexp(lw, 1) - math.log(lw.shape[1])),
    ),
))


# --------------------------------------------------------------------------------------------
# elbo: one image's ELBO, Bernoulli decoder, Gaussian q


def _elbo_estimate(x: Tensor, logits: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    return log_px_z + losses.log_normal_diag(z, 0.0, 0.0) - losses.log_normal_diag(z, mu, logvar)


def _elbo_variant(rec_reduce: str = "sum", q_sign: float = -1.0, half: float = 0.5, var_of=torch.exp,
                  prior: bool = True, sign: float = 1.0) -> Callable:
    def elbo(x, logits, z, mu, logvar):
        rec = -F.binary_cross_entropy_with_logits(logits, x, reduction=rec_reduce)
        var = var_of(logvar)
        log_q = (-0.5 * (LOG_2PI + torch.log(var)) - half * (z - mu) ** 2 / var).sum()
        log_p = (-0.5 * LOG_2PI - half * z**2).sum() if prior else 0.0
        return sign * (rec + log_p + q_sign * log_q)

    return elbo


register(Exercise(
    name="elbo_estimate",
    chapter="elbo",
    signature="elbo_estimate(x, logits, z, mu, logvar)",
    spec="One image: x [D], binary pixels; logits [D], the decoder's output at the code z [d]; mu, logvar [d], "
         "the Gaussian q(z|x) = N(mu, diag exp(logvar)) that z was drawn from. Return a number: the one-sample "
         "ELBO estimate log p(x|z) + log p(z) - log q(z|x), with a Bernoulli decoder and p(z) = N(0, I).",
    reference=_elbo_estimate,
    cases=(
        Case("D = 4 pixels, d = 2", lambda: (_t([1.0, 0.0, 1.0, 1.0]), _t([2.0, -1.0, 0.5, -0.5]),
                                             _t([0.3, -1.2]), _t([0.5, -1.0]), _t([-1.0, 0.4]))),
        Case("z = mu, logvar = 0", lambda: (_t([0.0, 1.0, 0.0]), _t([-3.0, 3.0, 0.0]), _t([1.0, -2.0]),
                                            _t([1.0, -2.0]), _t([0.0, 0.0]))),
        Case("D = 784, d = 32, random", lambda: ((_rand(1, 784) > 0.7).double(), _randn(2, 784, scale=3.0),
                                                  _randn(3, 32), _randn(4, 32, scale=0.5),
                                                  _randn(5, 32, scale=0.5, shift=-1.0))),
    ),
    mistakes=(
        Mistake("that is minus the ELBO (the loss a VAE minimises); the ELBO itself is asked for",
                _elbo_variant(sign=-1.0)),
        Mistake("log q(z|x) enters with a minus sign: ELBO = log p(x|z) + log p(z) - log q(z|x)",
                _elbo_variant(q_sign=1.0)),
        Mistake("a missing 1/2: log N(z; mu, s^2) = -1/2 log(2 pi s^2) - (z - mu)^2 / (2 s^2)",
                _elbo_variant(half=1.0)),
        Mistake("logvar is log s^2: the variance is exp(logvar), not logvar itself",
                _elbo_variant(var_of=lambda lv: lv)),
        Mistake("exp(logvar) is the variance s^2; you used it as the standard deviation",
                _elbo_variant(var_of=lambda lv: torch.exp(2 * lv))),
        Mistake("log p(x|z) is a sum over the pixels, not a mean", _elbo_variant(rec_reduce="mean")),
        Mistake("the prior's term log p(z) is missing", _elbo_variant(prior=False)),
    ),
))


# --------------------------------------------------------------------------------------------
# reparameterisation: a reparameterised sample, and the score-function surrogate


def _reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    return mu + torch.exp(0.5 * logvar) * eps


def _grads(out: Tensor, leaves: Sequence[Tensor]) -> list[Tensor]:
    """d out.sum() / d leaf for each leaf; zeros where no gradient reaches it."""
    if not out.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    gs = torch.autograd.grad(out.sum(), list(leaves), allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g.detach() for leaf, g in zip(leaves, gs)]


def _observe_reparameterise(fn: Callable, args: tuple) -> dict[str, Any]:
    mu, logvar, eps = args
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z = _call(fn, (mu, logvar, eps))
    if not isinstance(z, Tensor):
        raise _Malformed(f"the sample is a {type(z).__name__}; a tensor was expected")
    g_mu, g_lv = _grads(z, (mu, logvar)) if z.is_floating_point() else (None, None)
    return {"z": z.detach(), "gradient of z.sum() w.r.t. mu": g_mu, "gradient of z.sum() w.r.t. logvar": g_lv}


register(Exercise(
    name="reparameterise",
    chapter="reparameterisation",
    signature="reparameterise(mu, logvar, eps)",
    spec="mu, logvar: [B, d], a diagonal Gaussian N(mu, diag exp(logvar)); eps: [B, d], standard normal noise. "
         "Return the sample z [B, d] as a differentiable function of mu and logvar (gradients must reach both).",
    reference=_reparameterise,
    observe=_observe_reparameterise,
    cases=(
        Case("B = 1, d = 3", lambda: (_t([[0.0, 1.0, -2.0]]), _t([[0.0, -1.0, 2.0]]), _t([[1.0, 0.5, -1.0]]))),
        Case("eps = 0: z = mu", lambda: (_t([[0.5, -0.5]]), _t([[1.0, -3.0]]), torch.zeros(1, 2,
                                                                                         dtype=torch.float64))),
        Case("B = 4, d = 8, random", lambda: (_randn(1, 4, 8), _randn(2, 4, 8), _randn(3, 4, 8))),
    ),
    mistakes=(
        Mistake("that sample carries no gradient to mu and logvar (it was drawn, not computed from eps): "
                "write z = mu + sigma * eps with the eps given",
                lambda mu, lv, eps: torch.distributions.Normal(mu, torch.exp(0.5 * lv)).sample(),
                keys=("gradient of z.sum() w.r.t. mu", "gradient of z.sum() w.r.t. logvar")),
        Mistake("exp(logvar) is the variance; eps is scaled by the standard deviation exp(logvar / 2)",
                lambda mu, lv, eps: mu + torch.exp(lv) * eps),
        Mistake("logvar is log sigma^2, not sigma: the standard deviation is exp(logvar / 2)",
                lambda mu, lv, eps: mu + lv * eps),
    ),
))


def _score_surrogate(f: Callable[[Tensor], Tensor], mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    z = (mu + torch.exp(0.5 * logvar) * eps).detach()  # samples: no path back to mu, logvar
    return (f(z).detach() * losses.log_normal_diag(z, mu, logvar)).mean()


def _observe_surrogate(fn: Callable, args: tuple) -> dict[str, Any]:
    f, mu, logvar, eps = args
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    out = _call(fn, (f, mu, logvar, eps))
    if not isinstance(out, Tensor):
        raise _Malformed(f"the surrogate is a {type(out).__name__}; a tensor that carries gradients "
                         "was expected")
    if out.numel() != 1:
        return {"shape": tuple(out.shape)}
    g_mu, g_lv = _grads(out, (mu, logvar))
    return {"shape": (), "gradient w.r.t. mu": g_mu, "gradient w.r.t. logvar": g_lv}


def _sum_sq(z: Tensor) -> Tensor:
    return (z**2).sum(-1)


def _first(z: Tensor) -> Tensor:
    return torch.tanh(z[..., 0]) + z[..., -1]


register(Exercise(
    name="score_surrogate",
    chapter="reparameterisation",
    signature="score_surrogate(f, mu, logvar, eps)",
    spec="f: a function of codes [S, d] -> [S]; mu, logvar: [d], q = N(mu, diag exp(logvar)); eps: [S, d], "
         "standard normal noise, giving the S samples z = mu + exp(logvar / 2) * eps. Return a scalar "
         "surrogate whose gradient with respect to (mu, logvar) is the score-function estimate "
         "(1/S) sum_s f(z_s) grad log q(z_s): no gradient may flow through z_s or f(z_s).",
    reference=_score_surrogate,
    observe=_observe_surrogate,
    cases=(
        Case("f(z) = |z|^2, d = 2, S = 3", lambda: (_sum_sq, _t([0.5, -1.0]), _t([0.0, -0.5]),
                                                     _t([[1.0, 0.0], [-0.5, 2.0], [0.3, -1.0]])),
             shown={"f": "lambda z: (z ** 2).sum(-1)"}),
        Case("one sample (S = 1)", lambda: (_sum_sq, _t([1.0, 2.0, -1.0]), _t([0.2, 0.0, -1.0]),
                                            _t([[0.5, -0.5, 1.5]])),
             shown={"f": "lambda z: (z ** 2).sum(-1)"}),
        Case("f(z) = tanh(z_1) + z_d, d = 4, S = 16", lambda: (_first, _randn(1, 4), _randn(2, 4, scale=0.5),
                                                               _randn(3, 16, 4)),
             shown={"f": "lambda z: torch.tanh(z[..., 0]) + z[..., -1]"}),
    ),
    mistakes=(
        Mistake("a forgotten detach: gradient flows through the sample z (and f(z)); detach z before "
                "computing f(z) and log q(z)",
                lambda f, mu, lv, eps: (lambda z: (f(z) * losses.log_normal_diag(z, mu, lv)).mean())(
                    mu + torch.exp(0.5 * lv) * eps)),
        Mistake("the sign: the surrogate's gradient must be + f(z) grad log q(z)",
                lambda f, mu, lv, eps: -_score_surrogate(f, mu, lv, eps)),
        Mistake("a sum over the S samples; the estimate is their mean",
                lambda f, mu, lv, eps: _score_surrogate(f, mu, lv, eps) * eps.shape[0]),
        Mistake("log q must keep its gradient to mu and logvar: detach only the sample and f(z)",
                lambda f, mu, lv, eps: _score_surrogate(f, mu, lv, eps).detach()),
        Mistake("one scalar: average f(z_s) log q(z_s) over the samples",
                lambda f, mu, lv, eps: (lambda z: f(z) * losses.log_normal_diag(z, mu, lv))(
                    (mu + torch.exp(0.5 * lv) * eps).detach())),
        Mistake("a missing 1/2 in log q: log N(z; mu, s^2) = -1/2 log(2 pi s^2) - (z - mu)^2 / (2 s^2)",
                lambda f, mu, lv, eps: (lambda z: (f(z) * (-0.5 * (LOG_2PI + lv) - (z - mu) ** 2
                                                           / torch.exp(lv)).sum(-1)).mean())(
                    (mu + torch.exp(0.5 * lv) * eps).detach())),
    ),
))


# --------------------------------------------------------------------------------------------
# vae: the Gaussian KL to the prior


register(Exercise(
    name="gaussian_kl",
    chapter="vae",
    signature="gaussian_kl(mu, logvar)",
    spec="mu, logvar: [B, d], the encoder's q(z|x) = N(mu, diag exp(logvar)) for B images. Return [B]: "
         "KL(q(z|x) || N(0, I)) in closed form, summed over the d dimensions.",
    reference=losses.gaussian_kl,
    cases=(
        Case("q = N(0, I): KL = 0", lambda: (torch.zeros(2, 3, dtype=torch.float64),
                                             torch.zeros(2, 3, dtype=torch.float64))),
        Case("B = 2, d = 3", lambda: (_t([[1.0, 0.0, -0.5], [0.0, 2.0, 0.3]]),
                                      _t([[0.0, -1.0, 0.5], [1.0, 0.0, -2.0]]))),
        Case("B = 3, d = 1", lambda: (_t([[0.5], [-1.5], [0.0]]), _t([[-0.3], [0.8], [-4.0]]))),
        Case("B = 8, d = 32, random", lambda: (_randn(1, 8, 32), _randn(2, 8, 32, shift=-1.0))),
    ),
    mistakes=(
        Mistake("the sign: KL is never negative; KL = +1/2 sum(mu^2 + s^2 - log s^2 - 1)",
                lambda mu, lv: -losses.gaussian_kl(mu, lv)),
        Mistake("a missing 1/2 in front of the sum", lambda mu, lv: 2 * losses.gaussian_kl(mu, lv)),
        Mistake("logvar is log s^2: the variance is exp(logvar), and log s^2 is logvar itself",
                lambda mu, lv: 0.5 * (mu**2 + lv - torch.log(lv) - 1).sum(1)),
        Mistake("exp(logvar / 2) is the standard deviation; the formula needs the variance exp(logvar)",
                lambda mu, lv: 0.5 * (mu**2 + torch.exp(0.5 * lv) - lv - 1).sum(1)),
        Mistake("a mean over the d dimensions; the KL of a diagonal Gaussian is their sum",
                lambda mu, lv: 0.5 * (mu**2 + torch.exp(lv) - lv - 1).mean(1)),
        Mistake("one value per image: sum over dim 1 only, not over the batch",
                lambda mu, lv: losses.gaussian_kl(mu, lv).sum()),
        Mistake("the -1 inside the sum is missing (KL(p || p) must be 0)",
                lambda mu, lv: 0.5 * (mu**2 + torch.exp(lv) - lv).sum(1)),
    ),
))


# --------------------------------------------------------------------------------------------
# side-by-side: the importance-weighted bound


def _iwae_bound(log_px_z: Tensor, log_pz: Tensor, log_qz: Tensor) -> Tensor:
    return montecarlo.log_mean_exp(log_px_z + log_pz - log_qz, 0)  # [K, B] log-weights -> [B]


register(Exercise(
    name="iwae_bound",
    chapter="side-by-side",
    signature="iwae_bound(log_px_z, log_pz, log_qz)",
    spec="log_px_z, log_pz, log_qz: [K, B], log p(x_b | z_kb), log p(z_kb) and log q(z_kb | x_b) for K codes "
         "z_kb drawn from q(z | x_b), for B images. Return [B]: the importance-weighted bound "
         "L_K = log((1/K) sum_k p(x, z_k) / q(z_k | x)), computed in log space.",
    reference=_iwae_bound,
    cases=(
        Case("K = 3, B = 2", lambda: (_t([[-1.0, -2.0], [-0.5, -3.0], [-2.0, -1.0]]),
                                      _t([[-1.0, -1.5], [-2.0, -1.0], [-1.2, -0.9]]),
                                      _t([[-0.5, 0.2], [-1.0, -0.3], [0.1, -0.7]]))),
        Case("K = 1: the ELBO estimate", lambda: (_t([[-2.0, -4.0, -1.0]]), _t([[-1.0, -2.0, -3.0]]),
                                                  _t([[0.5, -1.0, 0.0]]))),
        Case("K = 6, B = 4, MNIST-sized values (float32)",
             lambda: (_randn(1, 6, 4, scale=10.0, shift=-120.0, dtype=torch.float32),
                      _randn(2, 6, 4, scale=3.0, shift=-40.0, dtype=torch.float32),
                      _randn(3, 6, 4, scale=3.0, shift=20.0, dtype=torch.float32))),
    ),
    mistakes=(
        Mistake("log q(z|x) enters with a minus sign: log w = log p(x|z) + log p(z) - log q(z|x)",
                lambda a, b, c: _iwae_bound(a, b, -c)),
        Mistake("that is the mean of the log-weights, the ELBO estimate; L_K is the log of the mean of the "
                "weights (log-mean-exp)", lambda a, b, c: (a + b - c).mean(0)),
        Mistake("logsumexp gives the log of the sum: subtract log K for the log of the mean",
                lambda a, b, c: torch.logsumexp(a + b - c, 0)),
        Mistake("exp of log-weights this small underflows to 0 (and log 0 = -inf): use torch.logsumexp",
                lambda a, b, c: torch.log(torch.exp(a + b - c).mean(0))),
        Mistake("reduce over the K samples, dim 0 (one value per image)",
                lambda a, b, c: torch.logsumexp(a + b - c, 1) - math.log(a.shape[1])),
    ),
))


# --------------------------------------------------------------------------------------------
# background (the appendix on probability and information): entropy and KL of categoricals


def _entropy(p: Tensor) -> Tensor:
    return -torch.special.xlogy(p, p).sum(-1)  # xlogy(0, 0) = 0: 0 log 0 counts 0


def _kl_categorical(p: Tensor, q: Tensor) -> Tensor:
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


_PROBS = (
    Case("uniform over 4 outcomes", lambda: (torch.full((4,), 0.25, dtype=torch.float64),)),
    Case("certain: (0, 1, 0)", lambda: (_t([0.0, 1.0, 0.0]),)),
    Case("a batch of 3 distributions over 5 outcomes", lambda: (torch.softmax(_randn(1, 3, 5, scale=2.0), -1),)),
)

register(Exercise(
    name="entropy",
    chapter="background",
    signature="entropy(p)",
    spec="p: probabilities [..., n] (each row sums to 1; entries may be 0). Return [...]: the entropy "
         "H(p) = -sum_i p_i log p_i in nats, with 0 log 0 = 0.",
    reference=_entropy,
    cases=_PROBS,
    mistakes=(
        Mistake("the sign: H(p) = -sum p log p is never negative", lambda p: -_entropy(p)),
        Mistake("0 log 0 is nan in floating point, but its limit is 0: use torch.special.xlogy(p, p), "
                "or leave out the zero entries", lambda p: -(p * torch.log(p)).sum(-1)),
        Mistake("that is in bits (log base 2); the book measures in nats (natural log)",
                lambda p: _entropy(p) / math.log(2)),
        Mistake("sum over the last dimension, the outcomes", lambda p: -torch.special.xlogy(p, p).sum(0)),
    ),
))

register(Exercise(
    name="kl_categorical",
    chapter="background",
    signature="kl_categorical(p, q)",
    spec="p, q: probabilities [..., n] (rows sum to 1; q > 0 wherever p > 0; p may have zeros). Return [...]: "
         "KL(p || q) = sum_i p_i log(p_i / q_i) in nats, with 0 log 0 = 0.",
    reference=_kl_categorical,
    cases=(
        Case("p = q: KL = 0", lambda: (_t([0.2, 0.3, 0.5]), _t([0.2, 0.3, 0.5]))),
        Case("two outcomes", lambda: (_t([0.9, 0.1]), _t([0.5, 0.5]))),
        Case("p with a zero", lambda: (_t([0.0, 0.6, 0.4]), _t([0.2, 0.3, 0.5]))),
        Case("a batch of 3 distributions over 5 outcomes",
             lambda: (torch.softmax(_randn(1, 3, 5, scale=2.0), -1), torch.softmax(_randn(2, 3, 5), -1))),
    ),
    mistakes=(
        Mistake("that is KL(q || p): KL is not symmetric, and the weights are p's",
                lambda p, q: _kl_categorical(q, p)),
        Mistake("the sign: KL(p || q) = sum p log(p / q) is never negative", lambda p, q: -_kl_categorical(p, q)),
        Mistake("0 log 0 is nan in floating point, but its limit is 0: use torch.special.xlogy, or leave out "
                "the entries where p = 0", lambda p, q: (p * torch.log(p / q)).sum(-1)),
        Mistake("that is in bits (log base 2); the book measures in nats", lambda p, q: _kl_categorical(p, q)
                / math.log(2)),
        Mistake("sum over the last dimension, the outcomes",
                lambda p, q: (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(0)),
    ),
))


# --------------------------------------------------------------------------------------------
# conditional-vae: the label as a one-hot vector appended to a network's input


def _one_hot_concat(h: Tensor, y: Tensor) -> Tensor:
    return torch.cat([h, F.one_hot(y, 10).to(h.dtype)], dim=1)


register(Exercise(
    name="one_hot_concat",
    chapter="conditional-vae",
    signature="one_hot_concat(h, y)",
    spec="h: a network's input [B, k] (float); y: class labels [B] (integers 0..9). Return [B, k + 10]: each "
         "row of h with the one-hot vector of its label appended on the right (10 columns, a 1 in column y), "
         "in h's dtype.",
    reference=_one_hot_concat,
    cases=(
        Case("3 rows, labels 0, 5 and 9", lambda: (_randn(1, 3, 2), torch.tensor([0, 5, 9]))),
        Case("labels that leave out 9", lambda: (_randn(2, 4, 4), torch.tensor([1, 2, 3, 2]))),
        Case("one row of 6 features, label 3", lambda: (_randn(3, 1, 6), torch.tensor([3]))),
    ),
    mistakes=(
        Mistake("append the one-hot vector after the features (on the right), as the networks expect",
                lambda h, y: torch.cat([F.one_hot(y, 10).to(h.dtype), h], dim=1)),
        Mistake("F.one_hot(y) alone makes only max(y) + 1 columns: pass num_classes=10",
                lambda h, y: torch.cat([h, F.one_hot(y).to(h.dtype)], dim=1)),
        Mistake("the label enters as a one-hot vector of 10 columns, not as one number (a number would "
                "tell the network that 9 is 'more' than 1)",
                lambda h, y: torch.cat([h, y[:, None].to(h.dtype)], dim=1)),
    ),
))


# --------------------------------------------------------------------------------------------
# vq-vae: the perplexity of a codebook's usage


def _code_perplexity(indices: Tensor, K: int) -> Tensor:
    counts = torch.bincount(indices.reshape(-1), minlength=K).double()
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy(0, 0) = 0: unused codes count 0


def _codes(seed: int, shape: tuple[int, ...], high: int) -> Tensor:
    return torch.randint(high, shape, generator=_gen(seed))


register(Exercise(
    name="code_perplexity",
    chapter="vq-vae",
    signature="code_perplexity(indices, K)",
    spec="indices: code indices [B, m] (integers in 0..K-1); K: the codebook size. Return the perplexity of "
         "the codes' usage, exp(H) with H = -sum_k p_k log p_k in nats, p_k the share of all B*m entries that "
         "are code k (0 log 0 = 0).",
    reference=_code_perplexity,
    cases=(
        Case("uneven usage of all 4 codes", lambda: (torch.tensor([[0, 0, 1], [0, 2, 3], [0, 1, 1]]), 4)),
        Case("codes 5..7 never used (K = 8)", lambda: (_codes(1, (6, 4), 5), 8)),
        Case("every entry the same code", lambda: (torch.full((3, 2), 2), 4)),
        Case("each code used equally often", lambda: (torch.arange(12).reshape(4, 3) % 6, 6)),
    ),
    mistakes=(
        Mistake("that is the entropy H; the perplexity is exp(H), the number of equally used codes with that "
                "entropy", lambda i, K: torch.log(_code_perplexity(i, K))),
        Mistake("0 log 0 is nan in floating point, but its limit is 0: an unused code adds nothing. Use "
                "torch.special.xlogy(p, p), or leave out the zero counts",
                lambda i, K: torch.exp(-(lambda p: (p * p.log()).sum())(
                    torch.bincount(i.reshape(-1), minlength=K).double() / i.numel()))),
        Mistake("that counts the codes used at all; the perplexity weighs each code by how often it is used",
                lambda i, K: (torch.bincount(i.reshape(-1), minlength=K) > 0).sum().double()),
        Mistake("exp goes with an entropy in nats; with log2 (bits) the perplexity is 2**H",
                lambda i, K: torch.exp(torch.log(_code_perplexity(i, K)) / math.log(2))),
    ),
))


# --------------------------------------------------------------------------------------------
# diffusion: the forward marginal q(x_t | x_0) of a DDPM, one noise level per row


def _diffusion_marginal(x0: Tensor, alpha_bar_t: Tensor, eps: Tensor) -> Tensor:
    a = alpha_bar_t[:, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _levels(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


register(Exercise(
    name="noisy_version",
    chapter="diffusion",
    signature="noisy_version(x0, alpha_bar_t, eps)",
    spec="x0: [B, D] clean data; alpha_bar_t: [B] the level ᾱ_t of each row, in (0, 1]; eps: [B, D] standard "
         "normal noise. Return [B, D]: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps, row by row.",
    reference=_diffusion_marginal,
    cases=(
        # square first (B = D): there a level broadcast over the columns gives a wrong value, not an error
        Case("4 rows of 4 values, levels 0.9, 0.5, 0.1, 0.01",
             lambda: (_randn(30, 4, 4), _levels(0.9, 0.5, 0.1, 0.01), _randn(31, 4, 4))),
        Case("ᾱ_t = 1 (t = 0): x_t is x0", lambda: (_randn(32, 2, 5), _levels(1.0, 1.0), _randn(33, 2, 5))),
        Case("3 binary images of 6 pixels in {-1, +1}",
             lambda: (torch.sign(_randn(34, 3, 6)), _levels(0.999, 0.3, 4e-5), _randn(35, 3, 6))),
    ),
    mistakes=(
        Mistake("ᾱ_t and 1 - ᾱ_t are the variances of the two parts: scale by their square roots",
                lambda x0, a, e: a[:, None] * x0 + (1 - a[:, None]) * e),
        Mistake("the noise's scale is sqrt(1 - ᾱ_t), not 1 - ᾱ_t (1 - ᾱ_t is its variance)",
                lambda x0, a, e: a[:, None].sqrt() * x0 + (1 - a[:, None]) * e),
        Mistake("swapped: the signal keeps sqrt(ᾱ_t) (near 1 at small t) and the noise gets sqrt(1 - ᾱ_t)",
                lambda x0, a, e: (1 - a[:, None]).sqrt() * x0 + a[:, None].sqrt() * e),
        Mistake("alpha_bar_t has one level per row: reshape it to [B, 1] (alpha_bar_t[:, None]); as [B] it "
                "broadcasts over the columns", lambda x0, a, e: a.sqrt() * x0 + (1 - a).sqrt() * e),
    ),
))
