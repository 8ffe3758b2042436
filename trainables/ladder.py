"""Ladder networks with multi-task learning for emotional attributes (the ``ladder`` family).

Paper: S. Parthasarathy and C. Busso, "Ladder networks for emotion recognition: using unsupervised
auxiliary tasks to improve predictions of emotional attributes", Interspeech 2018
(``papers/ladder-networks-mtl-msp-podcast.txt``). Ladder network: A. Rasmus et al., "Semi-supervised
learning with ladder networks", NeurIPS 2015. Denoising function g(): M. Pezeshki et al., "Deconstructing the
ladder network architecture", ICML 2016.

The model regresses arousal, valence and dominance from utterance functionals (``x``: (B, D)). Costs:

    C     = C_s + sum_l lambda_l * C_d^(l)                              (Eq. 1)
    C_MTL = alpha * C_aro + beta * C_val + (1 - alpha - beta) * C_dom   (Eq. 2; C_s of the MTL variants)

Each supervised cost is ``1 - CCC`` (Trigeorgis et al.) over the rows labelled for that attribute;
``C_d^(l)`` is the MSE between the decoder's reconstruction of layer l and the clean encoder's z_l.

Variants (Section 4.2): ``dnn_stl`` / ``dnn_mtl`` (MLP baselines), ``dae`` (denoising autoencoder
pre-trained without labels, then frozen under linear heads), ``ladder_stl`` / ``ladder_mtl`` (proposed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from data_io.examples import ExampleSpec
from data_io.feed import Feed
from trainables.base import REGRESSION_TARGETS, DataSpec, SERModel
from trainables.metrics import ccc_loss

VARIANTS = ("dnn_stl", "dnn_mtl", "dae", "ladder_stl", "ladder_mtl")
BN_EPS = 1e-5


@dataclass(frozen=True)
class LadderConfig:
    """Hyper-parameters of the ladder family; defaults are the paper's (Section 4.3) unless commented."""

    variant: str = "ladder_mtl"
    target: str = "arousal"  # the attribute STL variants train and predict
    hidden: tuple[int, ...] = (256, 256)
    noise_var: float = 0.3  # sigma^2 of the Gaussian noise at every encoder layer (std = sqrt(noise_var))
    lambdas: tuple[float, ...] | float = 1.0  # per layer, input first; the paper's grid best is 1 everywhere
    # The paper tunes alpha/beta per attribute (one MTL net per target attribute) and does not report them;
    # equal weights favour no attribute, matching the sweep's default objective (mean CCC).
    alpha: float = 1.0 / 3.0
    beta: float = 1.0 / 3.0
    lr: float = 5e-5  # NAdam
    dropout: float | None = None  # None: the paper's value per variant (0.5 DNN/DAE, 0.1 ladders)
    dae_pretrain_epochs: int = 10  # not in the paper (it does not say how long the autoencoder trained)
    denoise_hidden: int = 4  # g(): an MLP with 1 hidden layer of 4 units

    def __post_init__(self) -> None:
        # YAML gives lists; keep the frozen config hashable.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not isinstance(self.lambdas, int | float):
            object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.target not in REGRESSION_TARGETS:
            raise ValueError(f"target must be one of {list(REGRESSION_TARGETS)}, got {self.target!r}")
        if not self.hidden or min(self.hidden) <= 0:
            raise ValueError(f"hidden must be a non-empty tuple of positive sizes, got {self.hidden}")
        if not (self.alpha >= 0 and self.beta >= 0):
            raise ValueError(f"alpha >= 0 and beta >= 0 must hold, got alpha={self.alpha}, beta={self.beta}")
        if self.alpha + self.beta > 1 + 1e-9:
            raise ValueError(f"alpha + beta <= 1 must hold, got alpha={self.alpha}, beta={self.beta} "
                             f"(sum {self.alpha + self.beta:g})")
        if not self.noise_var >= 0:
            raise ValueError(f"noise_var >= 0 must hold, got {self.noise_var}")
        if not self.lr > 0:
            raise ValueError(f"lr > 0 must hold, got {self.lr}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"0 <= dropout < 1 must hold (None: the paper's value), got {self.dropout}")
        if isinstance(self.lambdas, tuple) and len(self.lambdas) != len(self.hidden) + 1:
            raise ValueError(f"lambdas needs len(hidden) + 1 = {len(self.hidden) + 1} entries (input layer "
                             f"first), got {len(self.lambdas)}: {self.lambdas}")
        if min(self.layer_lambdas) < 0:
            raise ValueError(f"lambdas >= 0 must hold, got {self.lambdas}")
        if self.dae_pretrain_epochs < 0 or self.denoise_hidden < 1:
            raise ValueError(f"dae_pretrain_epochs >= 0 and denoise_hidden >= 1 must hold, got "
                             f"{self.dae_pretrain_epochs} and {self.denoise_hidden}")

    def feed(self) -> Feed:
        """One z-normalised functionals vector per utterance, every labelled training row once per epoch."""
        return Feed(examples=ExampleSpec.vector())

    def unused_fields(self) -> frozenset[str]:
        """Fields this variant's model never reads: left out of its MLflow params, so a ``dnn_mtl`` run shows no
        ``noise_var`` and parallel coordinates compare only what a variant uses."""
        unused = set()
        if not self.is_ladder:
            unused |= {"lambdas", "denoise_hidden"}
            if self.variant != "dae":
                unused.add("noise_var")
        if self.variant != "dae":
            unused.add("dae_pretrain_epochs")
        if not self.is_mtl:
            unused |= {"alpha", "beta"}
        if self.is_mtl or self.variant == "dae":
            unused.add("target")  # MTL and the DAE predict every attribute in the data
        return frozenset(unused)

    @property
    def is_ladder(self) -> bool:
        return self.variant.startswith("ladder")

    @property
    def is_mtl(self) -> bool:
        return self.variant.endswith("_mtl")

    @property
    def p_drop(self) -> float:
        """Dropout at the input and the first hidden layer (Section 4.3)."""
        if self.dropout is not None:
            return self.dropout
        return 0.1 if self.is_ladder else 0.5

    @property
    def layer_lambdas(self) -> tuple[float, ...]:
        """lambda_l for l = 0 (input) .. L (top hidden layer)."""
        if isinstance(self.lambdas, tuple):
            return self.lambdas
        return (float(self.lambdas),) * (len(self.hidden) + 1)


# ---- blocks ------------------------------------------------------------------------------------------------

class Pass(NamedTuple):
    """One encoder pass. Lists run over layers l = 0 (input) .. L."""

    z: list[torch.Tensor]  # normalised pre-activations (+ noise on the noisy path), (B, n_l) each
    mean: list[torch.Tensor]  # batch mean of the pre-activations, (n_l,) (0 for the input; training only)
    std: list[torch.Tensor]  # batch std of the pre-activations, (n_l,) (1 for the input; training only)
    h: torch.Tensor  # top representation h_L, (B, n_L)


class Encoder(nn.Module):
    """MLP encoder shared by every variant (Rasmus et al., Alg. 1).

    Layer l >= 1: ``z_l = BN(W_l h_{l-1}) + noise``, ``h_l = ReLU(gamma_l * (z_l + beta_l))``, batch norm
    without affine parameters (gamma/beta are the learned scale and shift; for the DNN this is ordinary affine
    batch norm). Input layer: ``z_0 = h_0 = x + noise``; features arrive z-normalised with training-fold
    statistics, so batch-normalising or rectifying them again would only lose information.
    """

    def __init__(self, sizes: list[int], p_drop: float):
        super().__init__()
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        self.W = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in pairs)
        # Running statistics come from the clean path only; they normalise at inference.
        self.bn = nn.ModuleList(nn.BatchNorm1d(n, eps=BN_EPS, affine=False) for n in sizes[1:])
        self.gamma = nn.ParameterList(nn.Parameter(torch.ones(n)) for n in sizes[1:])
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes[1:])
        self.drop = nn.Dropout(p_drop)

    def forward(self, x: torch.Tensor, noise_std: float = 0.0, dropout: bool = False,
                track: bool = True) -> Pass:
        """One pass.

        Args:
            x: (B, D) features.
            noise_std: Std of the Gaussian noise added to every z_l (0: clean path).
            dropout: Apply dropout to h_0 and h_1 (the noisy/training path; laterals z_l stay dropout-free).
            track: Normalise with the running-stats batch norm (clean path: batch stats in training, running
                stats in eval). False: pure batch statistics (noisy path, which must not touch the running
                averages used at inference).
        """
        z = x + noise_std * torch.randn_like(x) if noise_std > 0 else x  # (B, D)
        zs, means, stds = [z], [x.new_zeros(())], [x.new_ones(())]
        h = self.drop(z) if dropout else z
        for i, (W, bn) in enumerate(zip(self.W, self.bn, strict=True)):
            pre = W(h)  # (B, n_l)
            if self.training:
                means.append(pre.mean(0))
                stds.append(torch.sqrt(pre.var(0, unbiased=False) + BN_EPS))
            z = bn(pre) if track else F.batch_norm(pre, None, None, training=True, eps=BN_EPS)
            if noise_std > 0:
                z = z + noise_std * torch.randn_like(z)
            zs.append(z)
            h = F.relu(self.gamma[i] * (z + self.beta[i]))  # (B, n_l)
            if dropout and i == 0:
                h = self.drop(h)
        return Pass(zs, means, stds, h)


class Combinator(nn.Module):
    """Pezeshki et al.'s MLP denoising function ``zhat = g(z_noisy, u)`` over ``[u, z_noisy, u * z_noisy]``.

    Per-unit reading: every unit i of a layer has its own small MLP (3 -> ``hidden`` -> 1) on
    ``(u_i, z_i, u_i z_i)``, stored as a (units, 3, hidden) weight contracted over its input axis. The paper's
    "MLP with 1 hidden layer and 4 hidden nodes" cannot be one layer-wide map (4 units would bottleneck a 256-
    or 6,373-wide layer), and Rasmus et al.'s vanilla g() is element-wise with per-unit parameters too. Hidden
    activation: leaky ReLU (slope 0.1), as in Pezeshki et al.'s MLP combinator.
    """

    def __init__(self, units: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(units, 3, hidden) / math.sqrt(3))
        self.b1 = nn.Parameter(torch.zeros(units, hidden))
        self.w2 = nn.Parameter(torch.randn(units, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(units))

    def forward(self, z_noisy: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # The contraction einsum("bni,nih->bnh", [u, z, u*z], w1) written as three broadcast products: torch
        # runs that einsum as one tiny matmul per unit, several times slower on CPU for 6,373 inputs.
        w = self.w1
        pre = (u.unsqueeze(-1) * w[:, 0] + z_noisy.unsqueeze(-1) * w[:, 1]
               + (u * z_noisy).unsqueeze(-1) * w[:, 2] + self.b1)  # (B, n, H)
        return (F.leaky_relu(pre, 0.1) * self.w2).sum(-1) + self.b2  # (B, n)


def _batch_norm(v: torch.Tensor) -> torch.Tensor:
    """Batch norm without affine or running statistics (the decoder runs only in training)."""
    return F.batch_norm(v, None, None, training=True, eps=BN_EPS)


class LadderDecoder(nn.Module):
    """Top-down decoder: ``u_L = BN(V_{L+1} h_L)``, ``zhat_l = g_l(z_noisy_l, u_l)``,
    ``u_{l-1} = BN(V_l zhat_l)``.

    Rasmus et al. start from the top softmax; here the head is a 1-3 unit linear regression, so the decoder
    starts from a learned projection of the noisy top hidden layer instead.
    """

    def __init__(self, sizes: list[int], denoise_hidden: int):
        super().__init__()
        # V[l] maps layer l+1 down to layer l; V[L] projects the top layer onto itself.
        above = sizes[1:] + sizes[-1:]
        self.V = nn.ModuleList(nn.Linear(b, a, bias=False) for a, b in zip(sizes, above, strict=True))
        self.g = nn.ModuleList(Combinator(n, denoise_hidden) for n in sizes)

    def forward(self, noisy: Pass) -> list[torch.Tensor]:
        zhat = []
        above = noisy.h  # (B, n_L)
        for i in range(len(noisy.z) - 1, -1, -1):
            u = _batch_norm(self.V[i](above))  # (B, n_l)
            above = self.g[i](noisy.z[i], u)  # (B, n_l)
            zhat.append(above)
        return zhat[::-1]  # input layer first


class MLPDecoder(nn.Module):
    """The DAE baseline's decoder: the encoder mirrored, from the top hidden layer back to the features."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        rev = sizes[::-1]
        layers: list[nn.Module] = []
        for a, b in zip(rev[:-2], rev[1:-1], strict=True):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(rev[-2], rev[-1]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)  # (B, D)


# ---- the model ---------------------------------------------------------------------------------------------

class LadderModel(SERModel):
    """The paper's five variants behind one interface (see the module docstring).

    Raises:
        ValueError: At construction, when the data lack an attribute the variant predicts, or ``x`` is not
            (D,).
    """

    def __init__(self, cfg: LadderConfig, spec: DataSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        if len(spec.input_shape) != 1:
            raise ValueError(f"the ladder family takes utterance functionals of shape (D,), got input_shape "
                             f"{spec.input_shape}; use feature_set 'functionals'")
        if cfg.is_mtl:
            missing = [t for t in REGRESSION_TARGETS if t not in spec.targets]
            if missing:
                raise ValueError(f"{cfg.variant} predicts {list(REGRESSION_TARGETS)}, but the data lack "
                                 f"{missing} (targets {list(spec.targets)}); use an _stl variant")
            self.attrs: tuple[str, ...] = REGRESSION_TARGETS
        elif cfg.variant == "dae":
            self.attrs = tuple(t for t in spec.targets if t in REGRESSION_TARGETS)
            if not self.attrs:
                raise ValueError(f"dae needs one of {list(REGRESSION_TARGETS)} in the data targets, "
                                 f"got {list(spec.targets)}")
        else:
            if cfg.target not in spec.targets:
                raise ValueError(f"{cfg.variant} trains target={cfg.target!r}, which is not in the data "
                                 f"targets {list(spec.targets)}")
            self.attrs = (cfg.target,)
        sizes = [int(spec.input_shape[0]), *cfg.hidden]
        self.encoder = Encoder(sizes, cfg.p_drop)
        self.head = nn.Linear(sizes[-1], len(self.attrs))  # linear outputs (Section 4.3)
        self.decoder: nn.Module | None = None
        if cfg.is_ladder:
            self.decoder = LadderDecoder(sizes, cfg.denoise_hidden)
        elif cfg.variant == "dae":
            self.decoder = MLPDecoder(sizes)
        self.noise_std = math.sqrt(cfg.noise_var)

    # ---- phases (dae only) -------------------------------------------------------------------------------
    @property
    def encoder_frozen(self) -> bool:
        """True once the DAE baseline has finished unsupervised pre-training."""
        return self.cfg.variant == "dae" and self.epoch >= self.cfg.dae_pretrain_epochs

    def train(self, mode: bool = True) -> LadderModel:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # frozen weights and activations: no dropout, running batch-norm statistics
        return self

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.train(self.training)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """NAdam at ``cfg.lr`` (the paper's optimiser). The frozen DAE encoder gets no gradients, so NAdam
        leaves it as it is."""
        return {"main": torch.optim.NAdam(self.parameters(), lr=self.cfg.lr)}

    # ---- losses ------------------------------------------------------------------------------------------
    def _supervised(self, y: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2 for MTL; ``1 - CCC`` of the one target for STL; the mean over the DAE's heads."""
        losses = {a: ccc_loss(y[:, i], batch[a], batch.get(f"{a}_mask")) for i, a in enumerate(self.attrs)}
        if self.cfg.is_mtl:
            a, b = self.cfg.alpha, self.cfg.beta
            sup = a * losses["arousal"] + b * losses["valence"] + (1 - a - b) * losses["dominance"]
        else:
            sup = torch.stack(list(losses.values())).mean()
        return sup, {f"loss_ccc_{k}": float(v.detach()) for k, v in losses.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (Eq. 1, with Eq. 2 as C_s for MTL) and its parts."""
        x = batch["x"]  # (B, D)
        recon = x.new_zeros(())
        if self.cfg.is_ladder:
            clean = self.encoder(x)  # reconstruction targets; its statistics serve inference
            noisy = self.encoder(x, self.noise_std, dropout=True, track=False)
            sup, logs = self._supervised(self.head(noisy.h), batch)  # supervised on the NOISY path
            zhat = self.decoder(noisy)
            # Rasmus et al.: normalise zhat_l with the clean batch's statistics, compare with the clean z_l.
            # Gradients flow into the clean path too (their Algorithm 1 has no stop-gradient); batch norm
            # holds z_l at unit variance, so the encoder cannot shrink it to make reconstruction trivial.
            for i, lam in enumerate(self.cfg.layer_lambdas):
                zbn = (zhat[i] - clean.mean[i]) / clean.std[i]  # (B, n_l)
                recon = recon + lam * F.mse_loss(zbn, clean.z[i])
        elif self.cfg.variant == "dae":
            if self.encoder_frozen:
                with torch.no_grad():
                    feats = self.encoder(x).h  # (B, n_L), eval mode: see train()
            else:
                # Unsupervised: reconstruct x from a noisy x. The clean pass below, not this one, feeds the
                # running batch-norm statistics the frozen encoder will use.
                noisy = self.encoder(x + self.noise_std * torch.randn_like(x), dropout=True, track=False)
                recon = F.mse_loss(self.decoder(noisy.h), x)
                with torch.no_grad():  # heads learn on detached clean features: validation stays meaningful
                    feats = self.encoder(x).h
            sup, logs = self._supervised(self.head(feats), batch)
        else:
            sup, logs = self._supervised(self.head(self.encoder(x, dropout=True).h), batch)
        total = sup + recon
        return total, {"loss_sup": float(sup.detach()), "loss_recon": float(recon.detach()), **logs}

    # ---- inference ---------------------------------------------------------------------------------------
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Clean-path predictions ``{attribute: (B,)}`` of the attributes this variant predicts."""
        y = self.head(self.encoder(batch["x"]).h)  # (B, n_attrs)
        return {a: y[:, i] for i, a in enumerate(self.attrs)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Export path: ``(B, n_attrs)`` in ``self.attrs`` order.

        The base version stacks every target in ``spec.targets``; an STL variant predicts only
        ``cfg.target``, and this family predicts no class targets, so it would fail on those.
        """
        out = self.predict({"x": x})
        return torch.stack([out[a] for a in self.attrs], dim=-1)
