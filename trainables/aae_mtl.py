"""Semi-supervised adversarial autoencoder with gender and speaker auxiliary tasks (the ``aae_mtl`` family).

Paper: S. Latif, R. Rana, S. Khalifa, R. Jurdak, J. Epps and B. W. Schuller, "Multi-task semi-supervised adversarial
autoencoding for speech emotion recognition", IEEE Trans. Affective Computing, 2020
(``papers/semi-supervised-aae-mtl-gender-speaker.txt``). Adversarial autoencoder: A. Makhzani et al., "Adversarial
autoencoders", ICLR 2016. d-vectors: E. Variani et al., ICASSP 2014.

An encoder E (three conv layers, each with batch norm before the ReLU and max pooling) maps a 256-frame spectrogram
window x to a latent code z = E(x) (16 x 16 x 32 in the paper); a decoder D of transposed convolutions mirrors it;
a discriminator D_w on z tells codes from samples d ~ N(0, I); classifiers C (one conv + max pool, two dense layers
with dropout 0.3 between them, softmax) read z for the primary task (emotion), gender and speaker (Sections 3, 4.3):

    L_AE   = ||x - D(E(x))||^2                                             (Eq. 3, as a mean over the window)
    L_disc = -mean log D_w(d) - mean log(1 - D_w(E(x)))                    (Eq. 4, minimised by the discriminator)
    L_gen  = -mean log D_w(E(x))                                           (Eq. 5's first term, see below)
    L_c    = beta * L_E + (1 - beta) * (L_G + L_S)                         (Eq. 2)
    L_MTAE = alpha * L_AE + L_c                                            (Eq. 1)

Every batch runs the phases in the paper's order, one optimizer step each over the parameters on its loss's path
(:data:`PHASES`): reconstruction (alpha * L_AE: E and D), regularisation (L_disc: D_w, then L_gen: E), classification
(L_c: E and the classifiers). Variants (Section 5.1, Fig. 3): ``cnn`` (E and the primary classifier, supervised),
``ae`` (no discriminator), ``aae_stl`` (L_c = beta * L_E) and ``aae_mtl`` with ``aux_tasks`` gender, speaker or both
(Table 5). Before that, ``aae_mtl`` pre-trains E and the gender/speaker classifiers for ``pretrain_epochs`` epochs on
the rows carrying those labels ("trained first on Librispeech for speaker and gender classification only").

Data: the ``spectrogram`` feature set (25 ms Hamming, 10 ms shift, 128 bins over 0-8 kHz), silence removed, cut into
``window``-frame windows labelled with their utterance's labels; an utterance's posterior is the mean of its
windows' (the loop pools per utterance). The primary target is ``primary``: ``emotion`` (4 classes), an attribute
in three levels (``levels`` encoder, Table 2) or V-A clusters (``kmeans`` encoder); gender and speaker come from the
``gender`` (``classes``) and ``speaker`` (``speakers``) targets, auxiliary LibriSpeech rows listing both.

Speaker verification (Section 5, 6.2): the d-vector is the speaker classifier's last hidden layer, averaged over an
utterance's windows. When the evaluated speakers are not training speakers (speaker-independent folds), each speaker's
first ``enrol_utterances`` utterances (by ``utt_id``) enrol (their mean d-vector), the rest are trials scored by cosine
against every enrolled speaker, and ``eer_speaker`` is their equal error rate (:func:`metrics.verification_trials`);
when they are (speaker 10-fold), ``acc_speaker_id`` is the identification accuracy.

Readings where the paper is silent or ambiguous:

* Which rows train what: a row with a primary label trains every phase; a row without one (auxiliary LibriSpeech rows,
  and labelled-corpus rows outside the primary's classes) feeds only the gender and speaker losses its masks allow
  ("when using additional auxiliary data with no labels for emotion, loss functions for gender and speaker are only
  calculated to update the encoder"). Each cross-entropy is the mean over its own labelled rows.
* Eq. 5 weighs L_AE with beta; Eq. 1 with alpha. Alpha is used (Eq. 1, and Section 6.3 tunes alpha as "the weight
  of the unsupervised task"). ``ae``, ``aae_stl`` weigh L_E by beta ("L_c = beta * L_E"); ``cnn`` has no alpha or
  beta. Pre-training weighs L_G + L_S by 1: with no primary loss there is nothing to trade them against.
* The generator step minimises -log D_w(E(x)), not Eq. 5's log(1 - D_w(E(x))): the same fixed point with useful
  gradients while the discriminator wins (Goodfellow et al. 2014; Makhzani et al.'s AAE).
* Image: ``x`` (B, T, F) is (B, 1, F, T), frequency the height. Pooling per layer is ``pools`` (frequency, time);
  (2, 2), (2, 2), (2, 4) make a 128 x 256 window the paper's 16 x 16 code. The code layer is conv -> max pool ->
  batch norm without ReLU: a ReLU code could never match the zero-mean prior, and batch norm starts it near N(0, I).
* The decoder mirrors each encoder block: nearest upsampling by the block's pool, a stride-1 transposed conv of the
  conv's weight shape, batch norm and ReLU; its output layer is linear (the input is z-scored).
* The classifiers' conv layer has batch norm before its ReLU ("after each convolutional layer") and a 2 x 2 max
  pool; the softmax layer follows the second dense layer, whose ReLU output is the d-vector. The discriminator has
  the same structure with one logit (a two-way softmax).
* Not reported, ours: 3 x 3 kernels, 64 and 64 filters before the 32-deep code, 32 filters and 256-unit dense layers
  in the heads, plain SGD (no momentum), non-overlapping windows, 2 pre-training epochs, one auxiliary example per
  labelled one in a batch (``aux_ratio``), 600 auxiliary speakers (Section 4.1.3: "we randomly select 600").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from data_io.examples import ExampleSpec
from data_io.feed import Feed, Sampling
from trainables import metrics as M
from trainables.base import DataSpec, SERModel

VARIANTS = ("cnn", "ae", "aae_stl", "aae_mtl")
AUX_TASKS = ("gender", "speaker", "both")
# Optimisation phases per variant, in the order a batch runs them (Section 3).
PHASES = {"cnn": ("classification",), "ae": ("reconstruction", "classification"),
          "aae_stl": ("reconstruction", "discriminator", "generator", "classification"),
          "aae_mtl": ("reconstruction", "discriminator", "generator", "classification")}
PRETRAIN_PHASES = ("classification",)  # gender and speaker only
HEAD_POOL = 2  # the classifiers' max pooling


@dataclass(frozen=True)
class AAEMTLConfig:
    """Hyper-parameters of the aae_mtl family; defaults are the paper's (Sections 4.3, 5.1) unless commented."""

    variant: str = "aae_mtl"
    primary: str = "emotion"  # the primary task's target (emotion, an attribute's levels, V-A clusters)
    aux_tasks: str = "both"  # aae_mtl's auxiliary tasks (Table 5)
    alpha: float = 0.4  # L_AE weight; the AAE's best on IEMOCAP categorical (Section 5.1)
    beta: float = 0.6  # L_E weight; likewise
    lr: float = 1e-4  # SGD, every phase
    momentum: float = 0.0  # not reported: plain SGD
    window: int = 256  # frames per window (Section 4.2)
    hop: int | None = None  # frames between windows; None: the window (not reported)
    channels: tuple[int, ...] = (64, 64, 32)  # encoder filters; the last is the code depth (32); the others ours
    kernel: int = 3  # square kernels (not reported)
    pools: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 4))  # (frequency, time): 128 x 256 -> 16 x 16
    head_filters: int = 32  # the classifiers' and discriminator's conv layer (not reported)
    dense: tuple[int, int] = (256, 256)  # their two dense layers; the second is the d-vector (not reported)
    dropout: float = 0.3  # between the two dense layers
    pretrain_epochs: int = 2  # gender/speaker-only epochs before the others (aae_mtl; count not reported)
    aux_ratio: float = 1.0  # auxiliary examples per labelled example in a batch (not reported)
    aux_speakers: int | None = 600  # auxiliary speakers kept (Section 4.1.3); None keeps all
    enrol_utterances: int = 20  # per speaker, for verification (Section 6.2)

    def __post_init__(self) -> None:
        # YAML gives lists; keep the frozen config hashable.
        try:
            channels = tuple(int(c) for c in self.channels)
            pools = tuple((int(f), int(t)) for f, t in self.pools)
            dense = tuple(int(d) for d in self.dense)
        except (TypeError, ValueError):
            raise ValueError(f"channels must be a list of sizes, pools a list of (frequency, time) pairs and dense "
                             f"two sizes, got channels={self.channels!r}, pools={self.pools!r}, "
                             f"dense={self.dense!r}") from None
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "pools", pools)
        object.__setattr__(self, "dense", dense)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.aux_tasks not in AUX_TASKS:
            raise ValueError(f"aux_tasks must be one of {list(AUX_TASKS)}, got {self.aux_tasks!r}")
        if not (isinstance(self.primary, str) and self.primary.isidentifier()) or self.primary in AUX_TASKS:
            raise ValueError(f"primary must name the primary task's target (emotion, arousal, valence, a kmeans "
                             f"target), not an auxiliary task, got {self.primary!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"0 < alpha <= 1 must hold (alpha weighs L_AE in Eq. 1), got {self.alpha}")
        if not 0 < self.beta < 1:
            raise ValueError(f"0 < beta < 1 must hold (beta and 1 - beta weigh L_E and L_G + L_S in Eq. 2), got "
                             f"{self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr > 0 must hold, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"0 <= momentum < 1 must hold, got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"0 <= dropout < 1 must hold, got {self.dropout}")
        if not self.aux_ratio > 0:
            raise ValueError(f"aux_ratio > 0 must hold (auxiliary examples per labelled one), got {self.aux_ratio}")
        sizes = {"window": self.window, "kernel": self.kernel, "head_filters": self.head_filters,
                 "enrol_utterances": self.enrol_utterances, **({"hop": self.hop} if self.hop is not None else {}),
                 **({"aux_speakers": self.aux_speakers} if self.aux_speakers is not None else {})}
        bad = {k: v for k, v in sizes.items() if not (_is_int(v) and v >= 1)}
        if bad:
            raise ValueError(f"sizes must be integers >= 1, got {bad}")
        if not (_is_int(self.pretrain_epochs) and self.pretrain_epochs >= 0):
            raise ValueError(f"pretrain_epochs must be an integer >= 0, got {self.pretrain_epochs!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (a 'same' convolution pads (kernel - 1) / 2 per side), got "
                             f"{self.kernel}")
        if not channels or min(channels) < 1 or len(pools) != len(channels) or any(min(p) < 1 for p in pools):
            raise ValueError(f"channels and pools must have one positive entry per encoder layer, got "
                             f"channels={channels}, pools={pools}")
        if len(dense) != 2 or min(dense) < 1:
            raise ValueError(f"dense must be two positive sizes (the classifiers' two dense layers), got {dense}")
        per_axis = (math.prod(p[0] for p in pools), math.prod(p[1] for p in pools))
        if self.window % per_axis[1]:
            raise ValueError(f"window must be a multiple of the encoder's time pooling {per_axis[1]} (pools "
                             f"{pools}), got {self.window}")

    def feed(self) -> Feed:
        """Speech-only windows of ``window`` frames, z-scored; ``aux_ratio`` auxiliary examples per labelled one,
        from ``aux_speakers`` auxiliary speakers (Sections 4.1.3, 4.2). The variants without auxiliary tasks ignore
        auxiliary rows; their batches still hold them (the feed cannot leave them out), but from every speaker."""
        speakers = self.aux_speakers if self.variant == "aae_mtl" else None
        return Feed(examples=ExampleSpec.windows(self.window, hop=self.hop, speech_only=True), normalization="zscore",
                    sampling=Sampling(aux_ratio=self.aux_ratio, aux_speakers=speakers))

    def unused_fields(self) -> frozenset[str]:
        """Fields this variant's model never reads (left out of its MLflow params)."""
        unused = set()
        if self.variant == "cnn":
            unused |= {"alpha", "beta"}
        if self.variant != "aae_mtl":
            unused |= {"aux_tasks", "pretrain_epochs", "aux_speakers"}
        if "speaker" not in self.tasks:
            unused.add("enrol_utterances")
        return frozenset(unused)

    @property
    def uses_decoder(self) -> bool:
        return self.variant != "cnn"

    @property
    def uses_discriminator(self) -> bool:
        return self.variant.startswith("aae")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The classifiers' targets, the primary first."""
        if self.variant != "aae_mtl":
            return (self.primary,)
        return (self.primary, *(("gender", "speaker") if self.aux_tasks == "both" else (self.aux_tasks,)))

    def task_weights(self, pretraining: bool) -> dict[str, float]:
        """Each classifier's weight in L_c (Eq. 2; see the module docstring for ``cnn`` and pre-training)."""
        if pretraining:
            return {t: (0.0 if t == self.primary else 1.0) for t in self.tasks}
        if self.variant == "cnn":
            return {self.primary: 1.0}
        return {t: (self.beta if t == self.primary else 1.0 - self.beta) for t in self.tasks}


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# ---- blocks ----------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """E: per layer conv -> batch norm -> ReLU -> max pool; the code layer conv -> max pool -> batch norm."""

    def __init__(self, channels: tuple[int, ...], pools: tuple[tuple[int, int], ...], k: int):
        super().__init__()
        layers, c_in = [], 1
        for i, (c_out, pool) in enumerate(zip(channels, pools, strict=True)):
            conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
            if i < len(channels) - 1:
                layers.append(nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(pool)))
            else:  # the code: no ReLU, normalised after pooling (module docstring)
                layers.append(nn.Sequential(conv, nn.MaxPool2d(pool), nn.BatchNorm2d(c_out)))
            c_in = c_out
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)  # (B, 1, F, T) -> (B, C_z, F / prod f_i, T / prod t_i)


class Decoder(nn.Module):
    """D: the encoder mirrored; per layer nearest upsampling by its pool, a stride-1 transposed conv, batch norm and
    ReLU; a linear output layer of one channel."""

    def __init__(self, channels: tuple[int, ...], pools: tuple[tuple[int, int], ...], k: int):
        super().__init__()
        outs = [*channels[::-1][1:], 1]
        layers = []
        for i, (c_in, c_out, pool) in enumerate(zip(channels[::-1], outs, pools[::-1], strict=True)):
            deconv = nn.ConvTranspose2d(c_in, c_out, k, padding=k // 2)  # the weight shape of the mirrored conv
            block: list[nn.Module] = [nn.Upsample(scale_factor=pool, mode="nearest"), deconv]
            if i < len(channels) - 1:
                block += [nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.Sequential(*block))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)  # (B, C_z, F', T') -> (B, 1, F, T)


class Head(nn.Module):
    """A classifier (or the discriminator): conv -> batch norm -> ReLU -> 2 x 2 max pool -> dense -> ReLU -> dropout
    -> dense -> ReLU (``h``, the d-vector of the speaker classifier) -> the softmax layer's logits."""

    def __init__(self, code: tuple[int, int, int], filters: int, dense: tuple[int, int], n_out: int, k: int,
                 dropout: float):
        super().__init__()
        depth, height, width = code
        self.conv = nn.Sequential(nn.Conv2d(depth, filters, k, padding=k // 2), nn.BatchNorm2d(filters), nn.ReLU(),
                                  nn.MaxPool2d(HEAD_POOL), nn.Flatten())
        flat = filters * (height // HEAD_POOL) * (width // HEAD_POOL)
        self.hidden = nn.Sequential(nn.Linear(flat, dense[0]), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(dense[0], dense[1]), nn.ReLU())
        self.out = nn.Linear(dense[1], n_out)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(self.conv(z))  # (B, dense[1])
        return h, self.out(h)  # (B, dense[1]), (B, n_out)


def adversarial_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_disc (Eq. 4): cross-entropy of "prior" (1) on prior samples plus that of "code" (0) on codes."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


# ---- the model -------------------------------------------------------------------------------------------------

class AAEMTLModel(SERModel):
    """The paper's four variants on one encoder (see the module docstring).

    Raises:
        ValueError: At construction, when ``x`` is not (T, F), the pooling does not divide it, the code is smaller
            than the heads' pooling, or a class target the variant classifies is missing.
    """

    def __init__(self, cfg: AAEMTLConfig, spec: DataSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        spec.require_frames("aae_mtl", "use the spectrogram feature set (128 bins)")
        frames, bins = (int(s) for s in spec.input_shape)  # T is cfg.window when built by the loop
        f_pool, t_pool = math.prod(p[0] for p in cfg.pools), math.prod(p[1] for p in cfg.pools)
        if bins % f_pool or frames % t_pool:
            raise ValueError(f"the encoder pools frequency by {f_pool} and time by {t_pool} (pools {cfg.pools}), so "
                             f"bins and frames must be multiples of them; got input_shape ({frames}, {bins}); use "
                             f"the 128-bin spectrogram and a window that is a multiple of {t_pool}")
        code = (cfg.channels[-1], bins // f_pool, frames // t_pool)
        if min(code[1:]) < HEAD_POOL:
            raise ValueError(f"the code is {code[1]} x {code[2]} (frequency x time), smaller than the heads' "
                             f"{HEAD_POOL} x {HEAD_POOL} max pooling; pool less or use larger windows")
        for t in cfg.tasks:
            spec.require_class(t, "aae_mtl")
        self.code_shape = code
        self.encoder = Encoder(cfg.channels, cfg.pools, cfg.kernel)
        self.decoder = Decoder(cfg.channels, cfg.pools, cfg.kernel) if cfg.uses_decoder else None
        self.heads = nn.ModuleDict({t: Head(code, cfg.head_filters, cfg.dense, int(spec.n_classes[t]), cfg.kernel,
                                            cfg.dropout) for t in cfg.tasks})
        self.discriminator = (Head(code, cfg.head_filters, cfg.dense, 1, cfg.kernel, cfg.dropout)
                              if cfg.uses_discriminator else None)

    # ---- optimisation ------------------------------------------------------------------------------------------
    @property
    def pretraining(self) -> bool:
        """The gender/speaker pre-training epochs (``aae_mtl`` only)."""
        return self.cfg.variant == "aae_mtl" and self.epoch < self.cfg.pretrain_epochs

    def phases(self) -> tuple[str, ...]:
        """The phases a batch of the current epoch runs, in order."""
        return PRETRAIN_PHASES if self.pretraining else PHASES[self.cfg.variant]

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each phase's optimizer updates: those on the path of its loss."""
        encoder = list(self.encoder.parameters())
        groups = {"classification": encoder + list(self.heads.parameters())}
        if self.decoder is not None:
            groups["reconstruction"] = encoder + list(self.decoder.parameters())
        if self.discriminator is not None:
            groups["discriminator"] = list(self.discriminator.parameters())
            groups["generator"] = encoder
        return {phase: groups[phase] for phase in PHASES[self.cfg.variant]}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One SGD per phase (``reconstruction``, ``discriminator``, ``generator``, ``classification`` as the variant
        has them); pre-training uses ``classification``'s."""
        return {phase: torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum)
                for phase, params in self.phase_parameters().items()}

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).unsqueeze(1)  # (B, T, F) -> (B, 1, F, T)

    # ---- phase losses ------------------------------------------------------------------------------------------
    def _phase_loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """The loss of one phase on ``batch``, the number of rows it uses, and its parts for logging."""
        x = batch["x"]  # (B, T, F)
        if phase == "classification":
            return self._classification_loss(batch)
        rows = torch.nonzero(batch[f"{self.cfg.primary}_mask"]).squeeze(1)  # rows with a primary label only
        if len(rows) == 0:
            return x.new_zeros(()), 0, {}
        image = self._image(x[rows])  # (m, 1, F, T)
        if phase == "reconstruction":
            mse = F.mse_loss(self.decoder(self.encoder(image)), image)
            return self.cfg.alpha * mse, len(rows), {"mse_reconstruction": float(mse.detach())}
        if phase == "discriminator":
            with torch.no_grad():
                z = self.encoder(image)  # (m, C_z, F', T'); the encoder is not this phase's to update
            prior = torch.randn_like(z)  # d ~ N(0, I)
            return adversarial_losses(self.discriminator(prior)[1], self.discriminator(z)[1]), len(rows), {}
        fake = self.discriminator(self.encoder(image))[1]  # generator: codes the discriminator takes for the prior
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)), len(rows), {}

    def _classification_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """L_c over the rows carrying a label of a task with weight > 0; each task's cross-entropy is the mean over
        its own labelled rows (the other rows never reach it)."""
        x = batch["x"]
        weights = {t: w for t, w in self.cfg.task_weights(self.pretraining).items() if w > 0}
        masks = {t: batch[f"{t}_mask"] for t in weights}
        used = torch.stack(list(masks.values())).any(dim=0)  # (B,)
        rows = torch.nonzero(used).squeeze(1)
        if len(rows) == 0:
            return x.new_zeros(()), 0, {f"ce_{t}": 0.0 for t in weights}
        z = self.encoder(self._image(x[rows]))  # (m, C_z, F', T')
        total, logs = x.new_zeros(()), {}
        for t, w in weights.items():
            own = torch.nonzero(masks[t][rows]).squeeze(1)  # positions among ``rows`` labelled for t
            if len(own) == 0:
                logs[f"ce_{t}"] = 0.0
                continue
            _, logits = self.heads[t](z[own])
            ce = F.cross_entropy(logits, batch[t][rows[own]])
            total = total + w * ce
            logs[f"ce_{t}"] = float(ce.detach())
        return total, len(rows), logs

    def training_step(self, batch: dict[str, torch.Tensor],
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One step of each phase of the epoch (:meth:`phases`), in order; a phase without rows is skipped.

        Returns:
            ``loss`` (the sum of the phase losses), ``loss_<phase>`` per phase and the parts (``ce_<task>``,
            ``mse_reconstruction``).
        """
        logs: dict[str, float] = {}
        for phase in self.phases():
            self.zero_grad(set_to_none=True)  # a phase's gradients must not leak into the next optimizer's step
            loss, used, parts = self._phase_loss(phase, batch)
            if used >= 1:
                loss.backward()
                optimizers[phase].step()
            logs[f"loss_{phase}"] = float(loss.detach())
            logs.update(parts)
        self.zero_grad(set_to_none=True)
        return {"loss": sum(v for k, v in logs.items() if k.startswith("loss_")), **logs}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of the epoch's phase losses on one batch, in one graph, and each part (for logging and checks;
        training alternates the phases in :meth:`training_step`)."""
        total, logs = batch["x"].new_zeros(()), {}
        for phase in self.phases():
            loss, _, parts = self._phase_loss(phase, batch)
            total = total + loss
            logs.update({f"loss_{phase}": float(loss.detach()), **parts})
        return total, logs

    # ---- inference ---------------------------------------------------------------------------------------------
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits (B, C) of each classified target and, with a speaker classifier, the ``speaker_embedding`` (B, H):
        its last hidden layer, the d-vector."""
        z = self.encoder(self._image(batch["x"]))  # (B, C_z, F', T')
        out = {}
        for t, head in self.heads.items():
            h, out[t] = head(z)
            if t == "speaker":
                out["speaker_embedding"] = h
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """D(E(x)) (B, T, F) on the model's z-scored input scale (variants with a decoder)."""
        if self.decoder is None:
            raise ValueError(f"variant {self.cfg.variant!r} has no decoder; use ae, aae_stl or aae_mtl")
        return self.decoder(self.encoder(self._image(x))).squeeze(1).transpose(1, 2)

    def extra_metrics(self, outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                      meta: pa.Table) -> dict[str, float]:
        """Speaker verification and identification (Sections 5, 6.2), with a speaker classifier:

        * ``eer_speaker``: EER of cosine-scored d-vector trials among the utterances whose speaker is not a training
          speaker (``speaker_mask`` False), when they hold two speakers with two utterances each.
        * ``acc_speaker_id``: identification accuracy over the utterances of training speakers.
        """
        emb = outputs.get("speaker_embedding")
        if emb is None or "speaker" not in self.heads or len(emb) == 0:
            return {}
        out = {}
        known = np.asarray(labels.get("speaker_mask", np.zeros(len(emb), bool)), dtype=bool)
        if known.any():
            pred = np.asarray(outputs["speaker"])[known].argmax(axis=1)
            out["acc_speaker_id"] = M.weighted_accuracy(pred, np.asarray(labels["speaker"])[known])
        unseen = np.flatnonzero(~known)
        if meta is None or not len(unseen) or "speaker" not in meta.column_names:
            return out
        part = meta.take(pa.array(unseen))
        speaker = [str(s) for s in part.column("speaker").to_pylist()]
        if "corpus" in part.column_names:  # speaker ids are only unique within a corpus
            speaker = [f"{c}/{s}" for c, s in zip(part.column("corpus").to_pylist(), speaker, strict=True)]
        order = part.column("utt_id").to_pylist() if "utt_id" in part.column_names else None
        scores, is_target = M.verification_trials(np.asarray(emb)[unseen], speaker, self.cfg.enrol_utterances, order)
        if is_target.any() and not is_target.all():
            out["eer_speaker"] = M.eer(scores, is_target)
        return out


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (decoder and discriminator included)."""
    return sum(p.numel() for p in model.parameters())
