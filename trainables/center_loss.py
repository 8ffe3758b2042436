"""Parallel CNN under softmax, center loss and reconstruction (the ``center_loss`` family).

Paper: S. Tripathi, A. Ramesh, A. Kumar, C. Singh and P. Yenigalla, "Learning discriminative features using center
loss and reconstruction as regularizer for speech emotion recognition", IJCAI 2019 Affective Computing workshop,
arXiv 1906.08873 (``papers/center-loss-reconstruction-cnn-1906.08873.txt``). Center loss and the centre update:
Y. Wen, K. Zhang, Z. Li and Y. Qiao, "A discriminative feature learning approach for deep face recognition",
ECCV 2016 (Eq. 2 and Algorithm 1).

Four parallel conv paths (200 filters each, kernels 4x6, 6x8, 8x10, 10x12) over an MFCC or mel image, max pooled,
flattened and concatenated, feed two independent FC branches with batch norm: a classifier (softmax and center
loss act on its last hidden layer ``h``) and a decoder that reconstructs the input through a sigmoid. Over a batch
with m emotion-labelled rows (Section 2.3-2.4):

    L_C = 1/(2m) sum_i ||h_i - c_{y_i}||^2             (Eq. 1)
    L   = L_S + lambda1 * L_C                          (Eq. 2, S+C)
    L   = L_S + lambda2 * L_A                          (Eq. 3, S+A)
    L   = L_S + lambda1 * L_C + lambda2 * L_A          (Eq. 4, S+A+C)

L_S is the cross-entropy, L_A the MSE between the decoder's output and the input. Variants (Tables 1 and 2): ``s``,
``s_a``, ``s_c``, ``s_a_c`` and ``a`` (reconstruction only).

Readings where the paper is silent or ambiguous:

* Orientation: ``x`` (B, T, F) is drawn as an image of height F (frequency) and width T (time), (B, 1, F, T); a
  kernel ``(4, 6)`` spans 4 bins by 6 frames. The paper gives the sizes only.
* Pooling: each path "extracts 200 x 4 features ... as the pool size is exactly half along the width and height
  of the convolution output". Read literally, the window is half the conv map's height and width: a 2 x 2 grid per
  filter, 4 features (``pooling="half_window"``, ``AdaptiveMaxPool2d((2, 2))``). This gives the paper's 0.26 M
  parameters for S+C (convs 55,200, FC 3200 -> 64 204,864, ...) for MFCC and mel alike. ``pooling="halve"``
  (``MaxPool2d(2)``, halving the map) is the other reading: far more features and parameters; an option only.
* Centre loss is the batch mean, like the cross-entropy (Wen et al. sum over the batch), so lambda1 keeps the
  paper's ratio between the two terms. Centres are a buffer (in checkpoints, not trained by the optimizer), updated
  after every optimizer step by Wen et al.'s Algorithm 1 from that batch's detached ``h``.
* Reconstruction target: ``x`` clamped to [0, 1]. The feed min-max scales with training-fold statistics
  ("we scale down the values of the input speech feature to also lie between 0 and 1"); validation and test rows
  can fall outside that range, and the target must stay in the sigmoid's. Unlabelled rows train it too.
* Variant ``a``: the paper's A has no classifier, but the sweep selects every variant on validation class accuracy.
  ``a`` trains the classifier branch as a probe on DETACHED trunk features: its cross-entropy never reaches the
  convs or the decoder, so it does not change what the trunk learns; it only gives A a validation score.
* Defaults the paper does not report: lambda2, the Adadelta learning rate, the centre learning rate alpha, the
  hidden sizes (64 from the 0.26 M count) and the decoder's "even more FC layers" (one of 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from data_io.examples import ExampleSpec
from data_io.feed import Feed
from trainables.base import DataSpec, SERModel

VARIANTS = ("s", "s_a", "s_c", "s_a_c", "a")  # S = softmax, A = reconstruction (MSE), C = center loss
POOLINGS = ("half_window", "halve")
OPTIMIZERS = ("adadelta", "adam")


@dataclass(frozen=True)
class CenterLossConfig:
    """Hyper-parameters of the center-loss family; defaults are the paper's (Section 2) unless commented."""

    variant: str = "s_a_c"
    lambda1: float = 4.0  # center-loss weight (searched 0.001..5, best 4)
    lambda2: float = 1.0  # reconstruction weight: "fine-tuned during training", value not reported
    dropout: float = 0.5  # both FC layers (the paper searched 0.25..0.75; mid-range)
    lr: float = 1.0  # Adadelta; the paper gives no learning rate (1.0 is the Keras-era default)
    # The paper's Adadelta; "adam" (lr ~1e-3) is for small demo corpora, where Adadelta's slow start (its first
    # steps are ~sqrt(eps) long) needs more epochs than a demo has. Not the paper's: say so when you use it.
    optimizer: str = "adadelta"
    rho: float = 0.95  # Adadelta decay (Keras default; not reported)
    center_alpha: float = 0.5  # centre learning rate alpha (not reported; Wen et al. 2016 use 0.5)
    frames: int = 188  # 6 s at hop 512, 16 kHz: 1 + 96000 // 512 frames (longer utterances cut, shorter padded)
    filters: int = 200  # per parallel path
    kernels: tuple[tuple[int, int], ...] = ((4, 6), (6, 8), (8, 10), (10, 12))  # (frequency, time)
    pooling: str = "half_window"  # see the module docstring
    hidden: int = 64  # the classifier's last hidden layer (not reported; 64 gives the paper's 0.26 M for S+C)
    decoder_hidden: tuple[int, ...] = (256,)  # the decoder's "even more FC layers" (not reported)

    def __post_init__(self) -> None:
        # YAML gives lists; keep the frozen config hashable.
        try:
            kernels = tuple(tuple(int(v) for v in k) for k in self.kernels)
            decoder_hidden = tuple(int(v) for v in self.decoder_hidden)
        except TypeError:
            raise ValueError(f"kernels must be a list of (height, width) pairs and decoder_hidden a list of sizes, "
                             f"got kernels={self.kernels!r}, decoder_hidden={self.decoder_hidden!r}") from None
        object.__setattr__(self, "kernels", kernels)
        object.__setattr__(self, "decoder_hidden", decoder_hidden)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if not (self.lambda1 >= 0 and self.lambda2 >= 0):
            raise ValueError(f"lambda1 >= 0 and lambda2 >= 0 must hold, got lambda1={self.lambda1}, "
                             f"lambda2={self.lambda2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"0 <= dropout < 1 must hold, got {self.dropout}")
        if not self.lr > 0:
            raise ValueError(f"lr > 0 must hold, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 < self.rho < 1:
            raise ValueError(f"0 < rho < 1 must hold, got {self.rho}")
        if not 0 < self.center_alpha <= 1:
            raise ValueError(f"0 < center_alpha <= 1 must hold, got {self.center_alpha}")
        if min(self.frames, self.filters, self.hidden) < 1:
            raise ValueError(f"frames, filters and hidden must be >= 1, got frames={self.frames}, "
                             f"filters={self.filters}, hidden={self.hidden}")
        if not kernels or any(len(k) != 2 or min(k) < 1 for k in kernels):
            raise ValueError(f"kernels must be a non-empty list of positive (height, width) pairs, got {kernels}")
        if decoder_hidden and min(decoder_hidden) < 1:
            raise ValueError(f"decoder_hidden sizes must be >= 1, got {decoder_hidden}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")

    def feed(self) -> Feed:
        """The first ``frames`` frames of each utterance (zero-padded), min-max scaled to [0, 1] (Section 2.2, 4)."""
        return Feed(examples=ExampleSpec.fixed(self.frames, anchor="start"), normalization="minmax")

    def unused_fields(self) -> frozenset[str]:
        """Fields this variant's model never reads (left out of its MLflow params)."""
        unused = set() if self.optimizer == "adadelta" else {"rho"}
        if not self.uses_center:
            unused |= {"lambda1", "center_alpha"}
        if not self.uses_reconstruction:
            unused |= {"lambda2", "decoder_hidden"}
        return frozenset(unused)

    @property
    def uses_softmax(self) -> bool:
        """The cross-entropy trains the whole network (``a`` trains only its detached probe)."""
        return "s" in self.variant.split("_")

    @property
    def uses_center(self) -> bool:
        return "c" in self.variant.split("_")

    @property
    def uses_reconstruction(self) -> bool:
        return "a" in self.variant.split("_")


# ---- losses ----------------------------------------------------------------------------------------------------

def center_loss(h: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Eq. 1 as a batch mean: ``1/(2m) sum_i ||h_i - c_{y_i}||^2``.

    Args:
        h: (m, H) deep features of the labelled rows.
        labels: (m,) int64 class indices.
        centers: (C, H) class centres (no gradient).

    Returns:
        Scalar; 0 (still attached to ``h``) when m = 0.
    """
    diff = h - centers[labels]  # (m, H)
    return diff.pow(2).sum() / (2 * max(len(labels), 1))


@torch.no_grad()
def update_centers(centers: torch.Tensor, h: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wen et al. (2016) Algorithm 1, in place: ``delta_c_j = sum_{i: y_i = j} (c_j - h_i) / (1 + n_j)``,
    ``c_j <- c_j - alpha * delta_c_j``. A class absent from the batch keeps its centre.

    Args:
        centers: (C, H) centres, updated in place.
        h: (m, H) detached features of the batch's labelled rows.
        labels: (m,) int64 class indices.
        alpha: Centre learning rate.

    Returns:
        ``centers``.
    """
    counts = torch.bincount(labels, minlength=centers.shape[0]).to(centers.dtype)[:, None]  # (C, 1)
    sums = torch.zeros_like(centers).index_add_(0, labels, h.to(centers.dtype))  # (C, H)
    centers -= alpha * (counts * centers - sums) / (1 + counts)
    return centers


def reconstruction_target(x: torch.Tensor) -> torch.Tensor:
    """``x`` clamped to the sigmoid's range [0, 1] (rows outside the training fold's min-max range)."""
    return x.clamp(0.0, 1.0)


# ---- blocks ----------------------------------------------------------------------------------------------------

class ParallelConv(nn.Module):
    """The shared trunk: per kernel, Conv2d -> ReLU -> max pool -> flatten (run as conv, pool, ReLU; see below);
    the paths concatenated.

    Raises:
        ValueError: A kernel does not fit the (F, T) image.
    """

    def __init__(self, image: tuple[int, int], filters: int, kernels: tuple[tuple[int, int], ...], pooling: str):
        super().__init__()
        height, width = image
        need = 2 if pooling == "halve" else 1  # halving needs a conv map of at least 2 x 2
        self.out_features = 0
        paths = []
        for kh, kw in kernels:
            oh, ow = height - kh + 1, width - kw + 1
            if oh < need or ow < need:
                raise ValueError(f"kernel ({kh}, {kw}) (frequency x time) does not fit the {height} x {width} "
                                 f"input image (bins x frames; input_shape ({width}, {height})): it must be at most "
                                 f"({height - need + 1}, {width - need + 1}) with pooling={pooling!r}; use smaller "
                                 f"kernels, more frames or a feature set with more bins")
            if pooling == "half_window":
                pool, cells = nn.AdaptiveMaxPool2d((2, 2)), 4
            else:
                pool, cells = nn.MaxPool2d(2), (oh // 2) * (ow // 2)
            # Pool, then ReLU: the same values and gradients as the paper's ReLU -> pool (ReLU is monotonic, so it
            # commutes with max), on the pooled grid instead of the full map. Channels-last conv weights: oneDNN
            # runs these single-channel convs faster. Together about 1.9x per CPU training step at paper size.
            conv = nn.Conv2d(1, filters, (kh, kw)).to(memory_format=torch.channels_last)
            paths.append(nn.Sequential(conv, pool, nn.ReLU(), nn.Flatten()))
            self.out_features += filters * cells
        self.paths = nn.ModuleList(paths)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([path(image) for path in self.paths], dim=1)  # (B, D)


class Classifier(nn.Module):
    """The lower FC branch: ``h = ReLU(BN(W z))`` (center loss and the t-SNE embedding), then dropout and logits."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(z)  # (B, hidden)
        return h, self.out(h)  # (B, hidden), (B, C)


class Decoder(nn.Module):
    """The upper FC branch: its own FC layer (BN, ReLU, dropout), ``decoder_hidden`` FC layers, a sigmoid output
    of the input's size."""

    def __init__(self, d_in: int, hidden: int, decoder_hidden: tuple[int, ...], out_shape: tuple[int, int],
                 dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout)]
        sizes = [hidden, *decoder_hidden]
        for a, b in pairwise(sizes):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers += [nn.Linear(sizes[-1], out_shape[0] * out_shape[1]), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.out_shape = out_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.out_shape)  # (B, T, F)


# ---- the model -------------------------------------------------------------------------------------------------

class CenterLossModel(SERModel):
    """The paper's network with the variant's losses (see the module docstring).

    Raises:
        ValueError: At construction, when ``x`` is not (T, F), the data have no class target ``emotion``, or a
            kernel does not fit the input.
    """

    def __init__(self, cfg: CenterLossConfig, spec: DataSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        spec.require_frames("center_loss", "use a frame feature set such as mfcc or logmel128")
        spec.require_class("emotion", "center_loss")
        frames, bins = (int(s) for s in spec.input_shape)  # T is cfg.frames when built by the loop
        n_classes = int(spec.n_classes["emotion"])
        self.trunk = ParallelConv((bins, frames), cfg.filters, cfg.kernels, cfg.pooling)
        self.classifier = Classifier(self.trunk.out_features, cfg.hidden, n_classes, cfg.dropout)
        self.decoder = (Decoder(self.trunk.out_features, cfg.hidden, cfg.decoder_hidden, (frames, bins), cfg.dropout)
                        if cfg.uses_reconstruction else None)
        # A buffer, not a parameter: in state_dict (checkpoints), moved by Algorithm 1, never by the optimizer.
        self.register_buffer("centers", torch.zeros(n_classes, cfg.hidden))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adadelta (the paper's optimiser), or Adam when ``cfg.optimizer`` says so; the centres are a buffer,
        outside it."""
        if self.cfg.optimizer == "adam":
            return {"main": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}
        return {"main": torch.optim.Adadelta(self.parameters(), lr=self.cfg.lr, rho=self.cfg.rho, eps=1e-6)}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        image = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T): frequency is the height, time the width
        return self.trunk(image)  # (B, D)

    # ---- losses ------------------------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
        """Eq. 2-4 for the variant: the total to back-propagate, its parts, and the labelled rows' ``h`` and labels
        (for the centre update)."""
        cfg, x = self.cfg, batch["x"]  # (B, T, F)
        z = self._features(x)  # (B, D)
        # Variant a: a probe on detached features (module docstring); the others train the trunk through it.
        h, logits = self.classifier(z.detach() if cfg.variant == "a" else z)  # (B, hidden), (B, C)
        mask = batch["emotion_mask"]
        y = batch["emotion"][mask]  # (m,)
        h_lab = h[mask]  # (m, hidden)
        # Sums over m, then / m: a batch without labelled rows gives 0, not NaN, and still back-propagates.
        ce = F.cross_entropy(logits[mask], y, reduction="sum") / max(len(y), 1)
        zero = x.new_zeros(())
        softmax = ce if cfg.uses_softmax else zero
        center = center_loss(h_lab, y, self.centers) if cfg.uses_center else zero
        recon = F.mse_loss(self.decoder(z), reconstruction_target(x)) if self.decoder is not None else zero
        total = softmax + cfg.lambda1 * center + cfg.lambda2 * recon
        logs = {"loss_softmax": float(softmax.detach()), "loss_center": float(center.detach()),
                "loss_recon": float(recon.detach())}
        if cfg.variant == "a":
            total = total + ce  # reaches the probe only
            logs["loss_probe"] = float(ce.detach())
        return total, logs, h_lab.detach(), y

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (Eq. 2-4 for the variant; plus the probe's cross-entropy for ``a``) and its parts."""
        total, logs, _, _ = self._losses(batch)
        return total, logs

    def training_step(self, batch: dict[str, torch.Tensor],
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One Adadelta step, then (C variants) the centre update of Wen et al.'s Algorithm 1 from this batch."""
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        total, logs, h, y = self._losses(batch)
        total.backward()
        opt.step()
        if self.cfg.uses_center:
            update_centers(self.centers, h, y, self.cfg.center_alpha)
        return {"loss": float(total.detach()), **logs}

    # ---- inference ---------------------------------------------------------------------------------------------
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``emotion`` logits (B, C), the ``embedding`` h (B, hidden) and, with a decoder, the per-example
        ``mse_reconstruction`` (B,) against the clamped input."""
        x = batch["x"]  # (B, T, F)
        z = self._features(x)  # (B, D)
        h, logits = self.classifier(z)
        out = {"emotion": logits, "embedding": h}
        if self.decoder is not None:
            out["mse_reconstruction"] = (self.decoder(z) - reconstruction_target(x)).pow(2).mean(dim=(1, 2))  # (B,)
        return out

    def extra_metrics(self, outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                      meta: pa.Table) -> dict[str, float]:
        """Table 2's reconstruction MSE (mean over utterances) for variants with a decoder."""
        mse = outputs.get("mse_reconstruction")
        if mse is None or len(mse) == 0:
            return {}
        return {"mse_reconstruction": float(np.mean(mse))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Export path: emotion posteriors (B, C); the decoder is not run."""
        _, logits = self.classifier(self._features(x))
        return torch.softmax(logits, dim=-1)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (the paper's 0.26 M for S+C); the centres are a buffer and not counted."""
    return sum(p.numel() for p in model.parameters())
