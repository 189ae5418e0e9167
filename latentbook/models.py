"""Autoencoders and variational autoencoders for 28×28 grey-level images.

Small, readable modules in the style of pytorch/examples. Every model takes images
``x: [B, 1, 28, 28]`` (flat ``[B, 784]`` is accepted too), and its decoder returns images
``[B, 1, 28, 28]``. Every model has ``loss(x, **kw) -> dict`` whose ``"loss"`` entry is the batch
mean to minimise; the other entries are the terms a chapter plots (batch means too).

The decoder network always ends in a *linear* layer; its output is what ``decode_logits`` returns.
``decode`` applies the output nonlinearity (a sigmoid for images in [0, 1]), while the losses work
on the logits (binary cross-entropy with logits), which stays finite where ``log(sigmoid(.))``
would underflow.

Models are described by JSON-able specs, so the trainer can cache them by a hash::

    model = build({"arch": "vae", "encoder": "conv", "latent_dim": 20})
    spec_of(model)   # {"arch": "vae", "latent_dim": 20, "encoder": "conv", ...}

Extending: ``@register("name")`` adds an architecture; ``@register_penalty("name")`` adds a
regulariser that autoencoder losses apply when asked, e.g. ``loss(x, penalties={"l1": 1e-3})``
(sparse and contractive autoencoders); a batch ``transform`` in the trainer corrupts the input
while the loss compares with the clean ``target`` (denoising autoencoders).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latentbook import checks, losses

__all__ = [
    "IMAGE_SHAPE",
    "ARCHS",
    "PENALTIES",
    "as_images",
    "register",
    "register_penalty",
    "build",
    "spec_of",
    "versions_of",
    "Autoencoder",
    "MLPAutoencoder",
    "LinearAutoencoder",
    "ConvAutoencoder",
    "VAE",
    "ConditionalVAE",
    "one_hot",
    "check_labels",
    "bernoulli_kl",
    "sigmoid_layer",
    "sigmoid_jacobian_sq",
    "jacobian_sq_estimate",
]

IMAGE_SHAPE = (1, 28, 28)
D = 28 * 28

ARCHS: dict[str, type[nn.Module]] = {}
"""Architecture name (the spec's ``"arch"``) -> model class. Filled by :func:`register`."""

PENALTIES: dict[str, Callable[..., Tensor]] = {}
"""Penalty name -> ``fn(model, x, z, *, generator=None, **params) -> [B] or scalar``.

Filled by :func:`register_penalty`. ``x: [B, 1, 28, 28]`` is the encoder's input and ``z: [B, d]``
its code; the penalty may re-run ``model.encode`` (e.g. for a Jacobian) and use ``generator`` for
random projections.
"""


def register(arch: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``build({"arch": arch, ...})`` construct this class.

    The class must carry an integer ``version`` of its own (bump it when a change alters the weights
    it trains to): it enters the store key of every trained model of the class (:func:`versions_of`).
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if not isinstance(vars(cls).get("version"), int):
            raise TypeError(f"{cls.__name__} needs a class attribute `version = 1` (an int) to be registered")
        if arch in ARCHS and ARCHS[arch] is not cls:
            raise ValueError(f"architecture {arch!r} is already registered to {ARCHS[arch].__name__}")
        cls.arch = arch
        ARCHS[arch] = cls
        return cls

    return deco


def register_penalty(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Function decorator: make ``loss(x, penalties={name: weight})`` add ``weight * fn(...).mean()``."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        PENALTIES[name] = fn
        return fn

    return deco


def as_images(x: Tensor) -> Tensor:
    """``x: [B, 1, 28, 28]`` or ``[B, 784]`` -> ``[B, 1, 28, 28]`` (a view, no copy)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype} (divide uint8 pixels by 255)")
    if x.ndim == 2 and x.shape[1] == D:
        return x.view(x.shape[0], *IMAGE_SHAPE)
    if x.ndim == 4 and tuple(x.shape[1:]) == IMAGE_SHAPE:
        return x
    raise ValueError(f"expected images [B, 1, 28, 28] or flat images [B, 784], got shape {tuple(x.shape)}")


def _decode_any(net: nn.Module, z: Tensor) -> Tensor:
    """Run ``net`` on codes ``z: [..., d]`` (any leading dims) -> ``[..., 1, 28, 28]``."""
    if z.ndim < 2:
        raise ValueError(f"expected codes [B, d] (or [S, B, d]), got shape {tuple(z.shape)}")
    lead = z.shape[:-1]
    return net(z.reshape(-1, z.shape[-1])).reshape(*lead, *IMAGE_SHAPE)


# ---------------------------------------------------------------------------------------------
# Building blocks: encoders map images to a vector, decoders map a vector to image logits.
# ---------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    """Linear layers ``sizes[0] -> sizes[1] -> ...`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return layers


def mlp_encoder(out_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``[B, 1, 28, 28] -> [B, out_dim]`` through ``784 -> hidden... -> out_dim``."""
    return nn.Sequential(nn.Flatten(), *_mlp([D, *hidden, out_dim]))


def mlp_decoder(latent_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``[B, d] -> [B, 1, 28, 28]`` logits through ``d -> reversed(hidden)... -> 784`` (the mirror)."""
    return nn.Sequential(*_mlp([latent_dim, *reversed(hidden), D]), nn.Unflatten(1, IMAGE_SHAPE))


def conv_encoder(out_dim: int, channels: Sequence[int]) -> nn.Sequential:
    """``[B, 1, 28, 28] -> [B, out_dim]``: 3×3 convs with stride 2 (28 -> 14 -> 7), then a dense layer."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),  # [B, c1, 14, 14]
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # [B, c2, 7, 7]
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, out_dim),
    )


def conv_decoder(latent_dim: int, channels: Sequence[int]) -> nn.Sequential:
    """``[B, d] -> [B, 1, 28, 28]`` logits: dense to 7×7×c2, then transposed convs 7 -> 14 -> 28."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Linear(latent_dim, c2 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (c2, 7, 7)),
        # output_padding=1 makes each stride-2 transposed conv exactly double the size (7->14->28).
        nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(c1, 1, 3, stride=2, padding=1, output_padding=1),
    )


def _int_tuple(name: str, v: Any, length: int | None = None) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f"{name} must be a list of positive integers, got {v!r}")
    out = tuple(checks.integer(f"each entry of {name}", h) for h in v)
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries, got {list(out)}")
    return out


def _choice(name: str, v: Any, allowed: Sequence[str]) -> str:
    if v not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {v!r}")
    return v


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ---------------------------------------------------------------------------------------------
# Autoencoders
# ---------------------------------------------------------------------------------------------


class Autoencoder(nn.Module):
    """An encoder ``f: x -> z`` and a decoder ``g: z -> x_hat``, trained on reconstruction error.

    Subclasses build ``self.encoder`` (``[B, 1, 28, 28] -> [B, d]``) and ``self.decoder``
    (``[B, d] -> [B, 1, 28, 28]`` logits) and list their constructor arguments in :meth:`config`.
    ``output`` is the decoder's output nonlinearity: ``"sigmoid"`` (images in [0, 1]; default loss
    binary cross-entropy from the logits) or ``"linear"`` (no nonlinearity; loss MSE only).
    """

    arch: ClassVar[str]
    version: ClassVar[int] = 1  # of the shared loss and penalties (see register)

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, output: str):
        super().__init__()
        self.latent_dim = latent_dim
        self.output = _choice("output", output, ("sigmoid", "linear"))
        self.encoder = encoder
        self.decoder = decoder

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able) that rebuild this model; see :func:`spec_of`."""
        raise NotImplementedError(f"{type(self).__name__} must list its constructor arguments in config()")

    def encode(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` (or ``[B, 784]``) -> code ``z: [B, d]``."""
        return self.encoder(as_images(x))

    def decode_logits(self, z: Tensor) -> Tensor:
        """``z: [..., d]`` -> the decoder's pre-activation output ``[..., 1, 28, 28]``."""
        return _decode_any(self.decoder, z)

    def decode(self, z: Tensor) -> Tensor:
        """``z: [..., d]`` -> reconstruction ``x_hat: [..., 1, 28, 28]`` (in [0, 1] for a sigmoid output)."""
        logits = self.decode_logits(z)
        return torch.sigmoid(logits) if self.output == "sigmoid" else logits

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` -> reconstruction ``x_hat: [B, 1, 28, 28]``."""
        return self.decode(self.encode(x))

    def default_recon_loss(self) -> str:
        return "bce" if self.output == "sigmoid" else "mse"

    def loss(
        self,
        x: Tensor,
        *,
        target: Tensor | None = None,
        recon_loss: str | None = None,
        penalties: dict[str, float | dict[str, Any]] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Reconstruction loss (+ optional penalties), batch means.

        x: ``[B, 1, 28, 28]`` input to the encoder; target: the image to reconstruct (default ``x``;
        a denoising autoencoder feeds a corrupted ``x`` and the clean ``target``).
        recon_loss: ``"bce"`` (binary cross-entropy from the logits, summed over pixels: nats per
        image; needs a sigmoid output) or ``"mse"`` (mean over pixels); default ``"bce"`` for a
        sigmoid output, ``"mse"`` for a linear one.
        penalties: ``{name: weight}`` or ``{name: {"weight": w, **params}}`` for functions in
        :data:`PENALTIES`; each adds ``weight * penalty.mean()`` to the loss and is reported under
        its name. generator: randomness for penalties that need it.

        Returns ``{"loss", "recon", <penalty names>}``. (For the per-pixel MSE of any model, as
        compared with PCA, use ``latentbook.evaluate``; computing it here would cost ~6% of a step.)
        """
        x = as_images(x)
        target = x if target is None else as_images(target)
        if target.shape != x.shape:
            raise ValueError(f"target {tuple(target.shape)} must have the shape of x {tuple(x.shape)}")
        recon_loss = self.default_recon_loss() if recon_loss is None else recon_loss
        _choice("recon_loss", recon_loss, ("bce", "mse"))
        if recon_loss == "bce" and self.output != "sigmoid":
            raise ValueError("recon_loss='bce' needs output='sigmoid' (BCE compares probabilities); use 'mse'")
        z = self.encode(x)
        logits = self.decode_logits(z)
        if recon_loss == "bce":
            recon = -losses.bernoulli_log_prob(logits, target).mean()
        else:
            x_hat = torch.sigmoid(logits) if self.output == "sigmoid" else logits
            recon = losses.mse(x_hat, target).mean()
        out = {"loss": recon, "recon": recon}
        for name, setting in (penalties or {}).items():
            weight, params = _penalty_setting(name, setting)
            if name not in PENALTIES:
                raise ValueError(f"unknown penalty {name!r}; registered penalties: {sorted(PENALTIES) or 'none'}")
            if name in out:
                raise ValueError(f"penalty name {name!r} clashes with a loss term; rename it")
            value = PENALTIES[name](self, x, z, generator=generator, **params).mean()
            out[name] = value
            out["loss"] = out["loss"] + weight * value
        return out


def _penalty_setting(name: str, setting: float | dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """``1e-3`` or ``{"weight": 1e-3, "rho": 0.05}`` -> ``(1e-3, {"rho": 0.05})``."""
    if isinstance(setting, dict):
        params = dict(setting)
        weight = params.pop("weight", None)
    else:
        weight, params = setting, {}
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"penalty {name!r} needs a weight >= 0 (a number or {{'weight': w, ...}}), got {setting!r}")
    return float(weight), params


@register("mlp_ae")
class MLPAutoencoder(Autoencoder):
    """Fully connected autoencoder ``784 -> hidden... -> d`` mirrored by ``d -> ...reversed(hidden) -> 784``.

    The default is the 784-512-256-128-d encoder with ReLUs and a sigmoid output.
    code_activation: ``"linear"`` (default: the code is the last layer's output) or ``"sigmoid"``
    (codes in (0, 1), as a sparsity penalty on mean activations needs; ``hidden=()`` then gives the
    one-sigmoid-layer encoder of the contractive autoencoder, whose Jacobian has a closed form).
    """

    version = 1  # bump when a change alters the weights it trains to (see register)

    def __init__(self, latent_dim: int = 2, hidden: Sequence[int] = (512, 256, 128), output: str = "sigmoid",
                 code_activation: str = "linear"):
        latent_dim = checks.integer("latent_dim", latent_dim)
        self.hidden = _int_tuple("hidden", hidden)
        self.code_activation = _choice("code_activation", code_activation, ("linear", "sigmoid"))
        encoder = mlp_encoder(latent_dim, self.hidden)
        if self.code_activation == "sigmoid":
            encoder.append(nn.Sigmoid())
        super().__init__(encoder, mlp_decoder(latent_dim, self.hidden), latent_dim, output)

    def config(self) -> dict[str, Any]:
        cfg = {"latent_dim": self.latent_dim, "hidden": list(self.hidden), "output": self.output}
        if self.code_activation != "linear":  # listed only when set, so existing specs keep their form
            cfg["code_activation"] = self.code_activation
        return cfg


@register("linear_ae")
class LinearAutoencoder(MLPAutoencoder):
    """``z = W_e x + b_e``, ``x_hat = W_d z + b_d``: no hidden layers, no nonlinearity, trained with MSE.

    Its optimum spans the top-d principal subspace (Baldi & Hornik 1989): the columns of
    ``decoder[0].weight`` (``[784, d]``) span the same space as PCA's first d components.
    """

    version = 1  # bump when a change alters the weights it trains to (see register)

    def __init__(self, latent_dim: int = 2):
        super().__init__(latent_dim, hidden=(), output="linear")

    @property
    def decoder_weight(self) -> Tensor:
        """``[784, d]``: the decoder's columns, one image-space direction per latent unit."""
        return self.decoder[0].weight

    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim}


@register("conv_ae")
class ConvAutoencoder(Autoencoder):
    """Convolutional autoencoder: Conv 1->32->64 (stride 2, 28->14->7), dense 7·7·64 -> d, mirrored
    with transposed convolutions; sigmoid output by default."""

    version = 1  # bump when a change alters the weights it trains to (see register)

    def __init__(self, latent_dim: int = 2, channels: Sequence[int] = (32, 64), output: str = "sigmoid"):
        latent_dim = checks.integer("latent_dim", latent_dim)
        self.channels = _int_tuple("channels", channels, length=2)
        super().__init__(conv_encoder(latent_dim, self.channels), conv_decoder(latent_dim, self.channels), latent_dim, output)

    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "channels": list(self.channels), "output": self.output}


# ---------------------------------------------------------------------------------------------
# Penalties of regularised autoencoders: loss(x, penalties={"l1": 1e-3}), {"kl_sparsity": ...},
# {"contractive": ...}. Each is a function of (model, x, z) registered by name (chapter "regularised").
# ---------------------------------------------------------------------------------------------


def bernoulli_kl(rho: float | Tensor, rho_hat: Tensor) -> Tensor:
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) elementwise, for rho and rho_hat in (0, 1)."""
    rho = torch.as_tensor(rho, dtype=rho_hat.dtype, device=rho_hat.device)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


@register_penalty("l1")
def l1_penalty(model: nn.Module, x: Tensor, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """``Σ_j |z_j|`` per image -> ``[B]``: pulls every code unit towards 0 (a sparse autoencoder)."""
    return z.abs().sum(1)


@register_penalty("kl_sparsity")
def kl_sparsity_penalty(
    model: nn.Module, x: Tensor, z: Tensor, *, generator: torch.Generator | None = None, rho: float = 0.05
) -> Tensor:
    """``Σ_j KL(ρ || ρ̂_j)`` -> scalar, where ``ρ̂_j`` is code unit j's mean activation over the batch.

    A unit is pushed to be active (near 1) on a fraction ``rho`` of the images only. The codes must
    lie in (0, 1): use ``code_activation="sigmoid"``. ``ρ̂_j`` is clamped to [1e-6, 1 - 1e-6].
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < 1:
        raise ValueError(f"rho (the target mean activation) must lie in (0, 1), got {rho!r}")
    if getattr(model, "code_activation", "sigmoid") != "sigmoid":
        raise ValueError("the kl_sparsity penalty needs codes in (0, 1): build the model with code_activation='sigmoid'")
    rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)
    return bernoulli_kl(rho, rho_hat).sum()


def sigmoid_layer(model: nn.Module) -> nn.Linear | None:
    """The linear layer of a one-sigmoid-layer encoder ``Flatten, Linear, Sigmoid``; None for any other."""
    enc = getattr(model, "encoder", None)
    if (isinstance(enc, nn.Sequential) and len(enc) == 3 and isinstance(enc[0], nn.Flatten)
            and isinstance(enc[1], nn.Linear) and isinstance(enc[2], nn.Sigmoid)):
        return enc[1]
    return None


def sigmoid_jacobian_sq(weight: Tensor, h: Tensor) -> Tensor:
    """``||∂h/∂x||_F²`` for ``h = sigmoid(W x + b)``: ``Σ_j (h_j (1 - h_j))² Σ_i W_ji²`` -> ``[B]``.

    weight: ``W [d, D]``; h: the codes ``[B, d]``. Exact, and differentiable in W and h.
    """
    return (h * (1 - h)) ** 2 @ (weight**2).sum(1)


def jacobian_sq_estimate(
    encode: Callable[[Tensor], Tensor], x: Tensor, n_proj: int = 1, *, generator: torch.Generator | None = None
) -> Tensor:
    """Random-projection estimate of ``||∂z/∂x||_F²`` per image -> ``[B]``, for any encoder.

    For ``v ~ N(0, I_d)``, ``E ||J^T v||² = tr(J J^T) = ||J||_F²``; ``J^T v`` is one backward pass.
    The estimate averages ``n_proj`` draws and is unbiased; the draws run as one batch of
    ``n_proj * B`` copies of the images (memory grows with ``n_proj``). With gradients enabled it is
    built with ``create_graph``, so it can be trained on (a contractive penalty for deep encoders).
    """
    n_proj = checks.integer("n_proj", n_proj)
    grad_on = torch.is_grad_enabled()
    b = x.shape[0]
    with torch.enable_grad():
        # one leaf per copy, so that each copy's gradient is its own J^T v
        x_in = x.detach().repeat(n_proj, *([1] * (x.ndim - 1))).requires_grad_(True)
        z = encode(x_in)
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        (g,) = torch.autograd.grad(z, x_in, grad_outputs=v, create_graph=grad_on)
    out = g.reshape(n_proj, b, -1).pow(2).sum(2).mean(0)
    return out if grad_on else out.detach()


@register_penalty("contractive")
def contractive_penalty(
    model: nn.Module, x: Tensor, z: Tensor, *, generator: torch.Generator | None = None,
    method: str = "auto", n_proj: int = 1,
) -> Tensor:
    """``||∂z/∂x||_F²`` per image -> ``[B]``: the contractive autoencoder's penalty (Rifai et al. 2011).

    method: ``"exact"`` (the closed form :func:`sigmoid_jacobian_sq`; needs a one-sigmoid-layer
    encoder), ``"projection"`` (:func:`jacobian_sq_estimate` with ``n_proj`` draws, any encoder) or
    ``"auto"`` (exact where possible).
    """
    _choice("method", method, ("auto", "exact", "projection"))
    layer = sigmoid_layer(model)
    if method == "exact" and layer is None:
        raise ValueError("method='exact' needs a one-sigmoid-layer encoder (mlp_ae with hidden=() and "
                         "code_activation='sigmoid'); use method='projection'")
    if layer is not None and method != "projection":
        return sigmoid_jacobian_sq(layer.weight, z)
    return jacobian_sq_estimate(model.encode, x, n_proj, generator=generator)


# ---------------------------------------------------------------------------------------------
# Variational autoencoder
# ---------------------------------------------------------------------------------------------


@register("vae")
class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling 2013) with a diagonal Gaussian q(z|x) and prior N(0, I).

    encoder: ``"mlp"`` (784 -> hidden... -> 2d) or ``"conv"`` (as :class:`ConvAutoencoder`); its
    output is split into ``mu`` and ``logvar`` (log σ², which keeps σ positive without constraints).
    likelihood: ``"bernoulli"`` (decoder gives pixel logits) or ``"gaussian"`` (decoder gives the
    mean, squashed by a sigmoid into [0, 1], with one global log σ² = ``obs_log_var``, learned when
    ``learn_obs_var``, else fixed).
    """

    arch: ClassVar[str]
    version: ClassVar[int] = 1  # see register

    def __init__(
        self,
        latent_dim: int = 2,
        encoder: str = "mlp",
        likelihood: str = "bernoulli",
        hidden: Sequence[int] = (512, 256, 128),
        channels: Sequence[int] = (32, 64),
        obs_log_var: float = 0.0,
        learn_obs_var: bool = True,
    ):
        super().__init__()
        self.latent_dim = checks.integer("latent_dim", latent_dim)
        self.encoder_type = _choice("encoder", encoder, ("mlp", "conv"))
        self.likelihood = _choice("likelihood", likelihood, ("bernoulli", "gaussian"))
        if self.encoder_type == "mlp":
            self.hidden = _int_tuple("hidden", hidden)
            self.encoder = mlp_encoder(2 * self.latent_dim, self.hidden)
            self.decoder = mlp_decoder(self.latent_dim, self.hidden)
        else:
            self.channels = _int_tuple("channels", channels, length=2)
            self.encoder = conv_encoder(2 * self.latent_dim, self.channels)
            self.decoder = conv_decoder(self.latent_dim, self.channels)
        if self.likelihood == "gaussian":
            if isinstance(obs_log_var, bool) or not isinstance(obs_log_var, (int, float)):
                raise ValueError(f"obs_log_var must be a number (log σ² of the pixel noise), got {obs_log_var!r}")
            self.learn_obs_var = bool(learn_obs_var)
            self.obs_log_var_init = float(obs_log_var)
            log_var = torch.tensor(self.obs_log_var_init)
            if self.learn_obs_var:
                self.obs_log_var = nn.Parameter(log_var)
            else:
                self.register_buffer("obs_log_var", log_var)

    def config(self) -> dict[str, Any]:
        """The constructor arguments that matter for this configuration (JSON-able)."""
        cfg: dict[str, Any] = {"latent_dim": self.latent_dim, "encoder": self.encoder_type, "likelihood": self.likelihood}
        if self.encoder_type == "mlp":
            cfg["hidden"] = list(self.hidden)
        else:
            cfg["channels"] = list(self.channels)
        if self.likelihood == "gaussian":
            # The spec holds the initial log σ², so build(spec_of(m)) is the untrained twin; the
            # learned value lives in the state_dict.
            cfg["obs_log_var"] = self.obs_log_var_init
            cfg["learn_obs_var"] = self.learn_obs_var
        return cfg

    # -- the two networks ---------------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x: [B, 1, 28, 28]`` (or ``[B, 784]``) -> ``(mu, logvar)``, each ``[B, d]``."""
        mu, logvar = self.encoder(as_images(x)).chunk(2, dim=-1)
        return mu, logvar

    def decode_logits(self, z: Tensor) -> Tensor:
        """``z: [..., d]`` -> the decoder network's raw output ``[..., 1, 28, 28]``
        (pixel logits for a Bernoulli likelihood; the pre-sigmoid mean for a Gaussian one)."""
        return _decode_any(self.decoder, z)

    def decoder_params(self, z: Tensor) -> dict[str, Tensor]:
        """Parameters of p(x|z) for ``z: [..., d]``: ``{"logits"}`` (Bernoulli) or
        ``{"mean", "log_var"}`` (Gaussian; ``log_var`` is a scalar tensor), each ``[..., 1, 28, 28]``."""
        raw = self.decode_logits(z)
        if self.likelihood == "bernoulli":
            return {"logits": raw}
        return {"mean": torch.sigmoid(raw), "log_var": self.obs_log_var}

    def decode(self, z: Tensor) -> Tensor:
        """``z: [..., d]`` -> the mean image E[x|z] ``[..., 1, 28, 28]`` (pixel probabilities for Bernoulli)."""
        return torch.sigmoid(self.decode_logits(z))  # both likelihoods: the mean is sigmoid(raw)

    def log_px_given_z(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats, summed over pixels: ``x: [B, 1, 28, 28]``, ``z: [B, d] -> [B]`` or
        ``z: [S, B, d] -> [S, B]`` (S samples of z per image)."""
        x = as_images(x)
        self._check_codes(x, z)
        return self._log_prob(x, self.decoder_params(z), z.shape[:-1])

    def _check_codes(self, x: Tensor, z: Tensor) -> None:
        if z.ndim not in (2, 3) or z.shape[-2] != x.shape[0] or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"z must be [B, d] or [S, B, d] with B = {x.shape[0]} images and d = {self.latent_dim}, got {tuple(z.shape)}"
            )

    def _log_prob(self, x: Tensor, params: dict[str, Tensor], lead: torch.Size) -> Tensor:
        """log p(x|z) ``[*lead]`` from the decoder's ``params`` (each ``[*lead, 1, 28, 28]``)."""
        xs = x.expand(*lead, *IMAGE_SHAPE).reshape(-1, *IMAGE_SHAPE)
        if self.likelihood == "bernoulli":
            lp = losses.bernoulli_log_prob(params["logits"].reshape(-1, *IMAGE_SHAPE), xs)
        else:
            lp = losses.gaussian_log_prob(params["mean"].reshape(-1, *IMAGE_SHAPE), xs, params["log_var"])
        return lp.reshape(lead)

    # -- what the chapters call ---------------------------------------------------------------

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``x: [B, 1, 28, 28]`` -> ``{"mu", "logvar", "z"}`` (each ``[B, d]``, z reparameterised)
        and ``"x_hat"``: the mean image decoded from z ``[B, 1, 28, 28]``."""
        mu, logvar = self.encode(x)
        z = losses.reparameterize(mu, logvar, generator)
        return {"mu": mu, "logvar": logvar, "z": z, "x_hat": self.decode(z)}

    def loss(
        self,
        x: Tensor,
        *,
        target: Tensor | None = None,
        beta: float = 1.0,
        free_bits: float = 0.0,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Negative ELBO with one reparameterised sample, batch means in nats per image.

        x: ``[B, 1, 28, 28]`` encoder input; target: the image whose likelihood is scored (default x).
        beta: KL weight of the β-VAE (1 = the VAE). kl_weight: an extra factor in [0, 1] that the
        trainer ramps up for KL annealing. free_bits: floor, in nats, on each latent dimension's
        batch-mean KL inside the loss (Kingma et al. 2016), against posterior collapse.

        Returns ``{"loss", "elbo", "recon", "kl"}`` with ``recon = -E_q[log p(x|z)]`` (a positive
        loss like every model's ``recon``), ``kl = KL(q(z|x) || p(z))`` and ``elbo = -(recon + kl)``
        (the true bound whatever beta, kl_weight and free_bits).
        """
        return self._negative_elbo(x, self.encode, self.log_px_given_z, target=target, beta=beta,
                                   free_bits=free_bits, kl_weight=kl_weight, generator=generator)

    def _negative_elbo(
        self,
        x: Tensor,
        encode: Callable[[Tensor], tuple[Tensor, Tensor]],
        log_px_given_z: Callable[[Tensor, Tensor], Tensor],
        *,
        target: Tensor | None,
        beta: float,
        free_bits: float,
        kl_weight: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """The body of :meth:`loss` with the encoder ``encode(x) -> (mu, logvar)`` and the likelihood
        ``log_px_given_z(x, z) -> [B]`` given as functions (a conditional VAE passes its label along)."""
        x = as_images(x)
        target = x if target is None else as_images(target)
        if target.shape != x.shape:
            raise ValueError(f"target {tuple(target.shape)} must have the shape of x {tuple(x.shape)}")
        if not 0.0 <= kl_weight <= 1.0:
            raise ValueError(f"kl_weight must be in [0, 1], got {kl_weight}")
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
        mu, logvar = encode(x)
        z = losses.reparameterize(mu, logvar, generator)
        log_px_z = log_px_given_z(target, z)
        kl = losses.gaussian_kl(mu, logvar)
        weight = beta * kl_weight
        terms = losses.elbo_terms(log_px_z, kl, weight)
        if free_bits > 0:
            # gaussian_kl sums over all but the first dim, so on [d, B] it gives each latent
            # dimension's KL summed over the batch. Swap the plain mean KL in the loss for the floored one.
            kl_per_dim = losses.gaussian_kl(mu.T, logvar.T) / x.shape[0]  # [d]
            floored = torch.clamp(kl_per_dim, min=free_bits).sum()
            terms["loss"] = terms["loss"] + weight * (floored - terms["kl"])
        # elbo_terms reports recon as mean log p(x|z); report it as a positive loss instead.
        terms["recon"] = -terms["recon"]
        return terms

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``[n, 1, 28, 28]``: the decoded means of z ~ N(0, I) (no gradients).

        generator: a seeded ``torch.Generator`` (any device) for reproducible samples.
        """
        n = checks.integer("n", n)
        device = generator.device if generator is not None else _device_of(self)
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z.to(_device_of(self)))

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, k: int = 5000, *, chunk_size: int = 128, generator: torch.Generator | None = None
    ) -> Tensor:
        """Importance-weighted estimate of log p(x) per image (Burda et al. 2015) -> ``[B]`` nats.

        ``x: [B, 1, 28, 28]`` (binary for a Bernoulli likelihood to be a true log-likelihood);
        ``k`` samples of q(z|x) per image, ``chunk_size`` at a time (memory ~ chunk_size·B images).
        """
        return losses.iwae_bound(self.encode, self.log_px_given_z, as_images(x), k, chunk_size=chunk_size, generator=generator)


# ---------------------------------------------------------------------------------------------
# Conditional variational autoencoder (chapter "conditional-vae")
# ---------------------------------------------------------------------------------------------


def check_labels(y: Any, n: int, n_classes: int = 10, name: str = "y") -> Tensor:
    """Class labels ``y: [n]`` (integers 0..n_classes-1) as a long tensor; refuses what is not a label: a
    float or bool tensor, a wrong length, a value outside 0..n_classes-1."""
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != n:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must be a tensor of {n} class labels [N] (one per image or code), got {got}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels 0..{n_classes - 1}, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name} must hold integer class labels 0..{n_classes - 1}, "
                         f"got values from {int(y.min())} to {int(y.max())}")
    return y.long()


def one_hot(y: Tensor, n: int, n_classes: int = 10) -> Tensor:
    """Class labels ``y: [n]`` (integers 0..n_classes-1, see :func:`check_labels`) -> one-hot rows
    ``[n, n_classes]`` (float)."""
    return torch.nn.functional.one_hot(check_labels(y, n, n_classes), n_classes).float()


@register("cvae")
class ConditionalVAE(VAE):
    """Conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y) and the prior p(z|y) = N(0, I).

    The label enters both networks as a one-hot vector concatenated to their input: the encoder is an
    MLP ``784 + 10 -> hidden... -> 2d`` (mu and logvar), the decoder ``d + 10 -> reversed(hidden)... -> 784``
    pixel logits (Bernoulli likelihood). Everything else is the VAE's: the ELBO, now of log p(x|y), the
    KL to N(0, I), the reparameterised sample and the importance-weighted bound. Labels ``y: [B]`` are
    integers 0..9, one per image (or code).
    """

    version = 1  # see register
    n_classes: ClassVar[int] = 10

    def __init__(self, latent_dim: int = 2, hidden: Sequence[int] = (512, 256, 128)):
        nn.Module.__init__(self)  # the VAE's networks take no label: build our own instead
        self.latent_dim = checks.integer("latent_dim", latent_dim)
        self.encoder_type, self.likelihood = "mlp", "bernoulli"
        self.hidden = _int_tuple("hidden", hidden)
        self.encoder = nn.Sequential(*_mlp([D + self.n_classes, *self.hidden, 2 * self.latent_dim]))
        self.decoder = mlp_decoder(self.latent_dim + self.n_classes, self.hidden)

    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "hidden": list(self.hidden)}

    def _one_hot(self, y: Tensor, n: int, like: Tensor) -> Tensor:
        return one_hot(y, n, self.n_classes).to(device=like.device, dtype=like.dtype)

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``x: [B, 1, 28, 28]``, ``y: [B]`` -> ``(mu, logvar)`` of q(z|x, y), each ``[B, d]``."""
        flat = as_images(x).flatten(1)  # [B, 784]
        mu, logvar = self.encoder(torch.cat([flat, self._one_hot(y, len(flat), flat)], 1)).chunk(2, dim=-1)
        return mu, logvar

    def decode_logits(self, z: Tensor, y: Tensor) -> Tensor:
        """``z: [B, d]`` (or ``[S, B, d]``), ``y: [B]`` -> pixel logits ``[B, 1, 28, 28]`` (or ``[S, B, ...]``)."""
        if z.ndim not in (2, 3) or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must be [B, d] or [S, B, d] with d = {self.latent_dim}, got {tuple(z.shape)}")
        label = self._one_hot(y, z.shape[-2], z).expand(*z.shape[:-1], self.n_classes)  # the same label for all S
        return _decode_any(self.decoder, torch.cat([z, label], -1))

    def decoder_params(self, z: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``{"logits"}`` of p(x|z, y), ``[..., 1, 28, 28]``."""
        return {"logits": self.decode_logits(z, y)}

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """``z: [B, d]``, ``y: [B]`` -> the mean image E[x|z, y] ``[B, 1, 28, 28]`` (pixel probabilities)."""
        return torch.sigmoid(self.decode_logits(z, y))

    def log_px_given_z(self, x: Tensor, z: Tensor, y: Tensor) -> Tensor:
        """log p(x|z, y) in nats: ``x: [B, 1, 28, 28]``, ``y: [B]``, ``z: [B, d] -> [B]`` or ``[S, B, d] -> [S, B]``."""
        x = as_images(x)
        self._check_codes(x, z)
        return self._log_prob(x, self.decoder_params(z, y), z.shape[:-1])

    def forward(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """As :meth:`VAE.forward`, given the labels ``y: [B]``."""
        mu, logvar = self.encode(x, y)
        z = losses.reparameterize(mu, logvar, generator)
        return {"mu": mu, "logvar": logvar, "z": z, "x_hat": self.decode(z, y)}

    def loss(
        self,
        x: Tensor,
        *,
        y: Tensor,
        target: Tensor | None = None,
        beta: float = 1.0,
        free_bits: float = 0.0,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The VAE's negative ELBO (see :meth:`VAE.loss`), now of log p(x|y): q(z|x, y) and p(x|z, y).

        ``y: [B]`` class labels of the images (the trainer passes them when a model's loss takes ``y``).
        """
        x = as_images(x)
        self._one_hot(y, len(x), x)  # check the labels before anything runs
        return self._negative_elbo(x, lambda xb: self.encode(xb, y), lambda t, z: self.log_px_given_z(t, z, y),
                                   target=target, beta=beta, free_bits=free_bits, kl_weight=kl_weight,
                                   generator=generator)

    @torch.no_grad()
    def sample(self, n: int, y: int | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``[n, 1, 28, 28]`` of class ``y`` (an int for all, or labels ``[n]``): the decoded
        means of z ~ N(0, I). ``generator``: a seeded ``torch.Generator`` for reproducible samples."""
        n = checks.integer("n", n)
        dev = _device_of(self)
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n,), y, dtype=torch.long)
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else dev)
        return self.decode(z.to(dev), y.to(dev) if isinstance(y, Tensor) else y)

    @torch.no_grad()
    def log_likelihood(  # type: ignore[override]
        self, x: Tensor, y: Tensor, k: int = 5000, *, chunk_size: int = 128,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Importance-weighted estimate of log p(x|y) per image -> ``[B]`` nats (k samples of q(z|x, y))."""
        x = as_images(x)
        self._one_hot(y, len(x), x)
        return losses.iwae_bound(lambda xb: self.encode(xb, y), lambda xb, z: self.log_px_given_z(xb, z, y), x, k,
                                 chunk_size=chunk_size, generator=generator)


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


def build(spec: dict[str, Any]) -> nn.Module:
    """A fresh model from a JSON-able spec, e.g. ``{"arch": "mlp_ae", "latent_dim": 2}``.

    ``"arch"`` picks the class (see :data:`ARCHS`); the other keys are its constructor arguments.
    Parameters are initialised from torch's global RNG (seed it first for reproducibility).
    """
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(f"a model spec is a dict with an 'arch' key (one of {sorted(ARCHS)}), got {spec!r}")
    kwargs = dict(spec)
    arch = kwargs.pop("arch")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known architectures: {sorted(ARCHS)}")
    cls = ARCHS[arch]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for arch {arch!r}; it accepts {accepted}")
    return cls(**kwargs)


def versions_of(cls: type) -> dict[str, int]:
    """The ``version`` of ``cls`` and of each base class that sets one: ``{"MLPAutoencoder": 1, ...}``.

    A subclass inherits its bases' code, so bumping a base's version changes the keys of its subclasses too.
    """
    return {c.__name__: vars(c)["version"] for c in cls.__mro__ if isinstance(vars(c).get("version"), int)}


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The canonical spec of ``model``: ``build(spec_of(m))`` is an untrained twin of ``m``."""
    arch = getattr(type(model), "arch", None)
    if arch not in ARCHS or not callable(getattr(model, "config", None)):
        raise ValueError(f"{type(model).__name__} is not a registered latentbook model; known: {sorted(ARCHS)}")
    return {"arch": arch, **model.config()}
