"""BiLSTM multi-head self-attention with (selective) multi-task style learning (the ``selective_mtl`` family).

Paper: H. Zhang, M. Mimura, T. Kawahara and K. Ishizuka, "Selective multi-task learning for speech emotion
recognition using corpora of different styles", ICASSP 2022 (``papers/selective-mtl-acted-spontaneous.txt``).
Attention after S. Yoon et al. (ICASSP 2019) and Y. Li, T. Zhao and T. Kawahara (Interspeech 2019).

A BiLSTM encodes 40 log mel filter-bank frames ``X`` into ``H`` (T, 2 d_LSTM); each of n_Head self-attention heads
pools it over time and the heads are concatenated (Section 2.1):

    alpha_i = softmax_t(w_{2,i} tanh(W_{1,i} H^T))           (Eq. 1)
    H_att   = Concatenate(alpha_1 H, ..., alpha_n H)          (Eq. 2)

FC1 -> FC2 (ReLU) -> emotion logits. The multi-task settings add an FC style head (acted / spontaneous) on
``H_att`` and train on (Section 2.2)

    L = lambda L_SER + (1 - lambda) L_Style                   (Eq. 3)

``selective_mtl`` (Section 2.3) drops the style loss of neutral rows: "the style recognition loss is not computed
for the neutral category. The value of lambda becomes 1 for the neutral category."

Settings (Table 3; ``variant``): ``separate`` (the baseline: one network per corpus), ``combined`` (one network on
both corpora, L_SER only), ``mtl`` (Eq. 3) and ``selective_mtl``; ``half=True`` is the "(half)" rows of Table 3.
Sizes are Table 2's: d_LSTM 256, d_Att 512, FC1 4096, FC2 1024, 8 heads, one attention layer; lambda 0.8 (4.2).

Readings where the paper is silent or ambiguous:

* Per-row loss weights (:func:`loss_weights`): ``w_ser = 1, w_style = 0`` for neutral rows of ``selective_mtl``,
  ``w_ser = lambda, w_style = 1 - lambda`` otherwise; ``L = sum_i w_ser_i ce_ser_i / m_emo + sum_i w_style_i
  ce_style_i / m_style`` over the emotion- and style-labelled rows (the batch means of Eq. 3). A row without an
  emotion label is not known to be neutral and keeps its style loss.
* W_1 has no bias (Eq. 1 shows none); all heads' W_1 are one ``Linear(2 d_LSTM -> heads d_Att)``, w_2 a
  ``(heads, d_Att)`` weight. The batch carries no lengths: zero-padded frames (7.5 s fixed input, Section 4.1)
  take part in attention, as they do in the paper's fixed-length input.
* "a 1e-5 decay rate" is read as Adam weight decay. Bi-LSTM depth is not reported: one layer. Its 0.2 dropout is
  applied to the BiLSTM's output (and between layers when ``lstm_layers > 1``).
* The style head ("the added network of FC", Fig. 1) is one linear layer on ``H_att``; ``separate`` and
  ``combined`` have none (``style_head is None``).
* ``separate``: one whole network per style class, indexed by the ``style`` class index; every row goes through
  its own style's network in training and evaluation, so each network trains on its corpus only. Export (``x``
  alone, no style to route by) returns the mean of the networks' emotion posteriors (``predict`` gives it as
  logits, ``log`` of the mean softmax).
* The spontaneous corpus's neutral rows are capped at 2,000 per training fold (Section 3.2; the paper also removed
  back-channel and noise utterances first, which the feed cannot know); ``half`` keeps half of the labelled training
  rows after the corpora are combined (Section 4.3).
* The neutral class is found by name (``neutral_class``) in the data's emotion classes (``DataSpec.classes``);
  ``neutral_index`` overrides it (and serves specs without class names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from data_io.examples import ExampleSpec
from data_io.feed import Feed, Sampling
from trainables.base import DataSpec, SERModel

SETTINGS = ("separate", "combined", "mtl", "selective_mtl")
MTL_SETTINGS = ("mtl", "selective_mtl")  # the settings with a style head and Eq. 3
N_STYLES = 2  # acted, spontaneous


@dataclass(frozen=True)
class SelectiveMTLConfig:
    """Hyper-parameters of the selective-MTL family; defaults are the paper's (Section 4, Table 2) unless
    commented."""

    variant: str = "selective_mtl"  # one of SETTINGS
    half: bool = False  # the "(half)" setting: keep half of the labelled training rows
    lam: float = 0.8  # lambda of Eq. 3, the weight of L_SER (searched 0.1-0.9)
    lr: float = 1e-4  # Adam
    weight_decay: float = 1e-5  # the paper's "1e-5 decay rate", read as Adam weight decay
    dropout: float = 0.2  # Bi-LSTM dropout
    lstm_cells: int = 256  # d_LSTM, per direction
    lstm_layers: int = 1  # not reported; one
    attention_size: int = 512  # d_Att
    heads: int = 8  # n_Head
    fc1: int = 4096  # d_Den1
    fc2: int = 1024  # d_Den2
    frames: int = 750  # 7.5 s at a 10 ms hop (fbank40), first 7.5 s kept, shorter zero padded
    neutral_cap: int = 2000  # most neutral training rows of the spontaneous corpus per fold
    spontaneous_corpus: str = "csv"  # the corpus the cap applies to (the call-centre corpus is ingested as csv)
    neutral_class: str = "neutral"
    neutral_index: int | None = None  # index of neutral_class among the emotion classes; None: found by name

    def __post_init__(self) -> None:
        if self.variant not in SETTINGS:
            raise ValueError(f"variant must be one of {list(SETTINGS)}, got {self.variant!r}")
        if not isinstance(self.half, bool):
            raise ValueError(f"half must be a bool, got {self.half!r}")
        if not 0 < self.lam <= 1:
            raise ValueError(f"0 < lam <= 1 must hold (lam weighs L_SER in Eq. 3), got {self.lam}")
        if not self.lr > 0:
            raise ValueError(f"lr > 0 must hold, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay >= 0 must hold, got {self.weight_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"0 <= dropout < 1 must hold, got {self.dropout}")
        sizes = {"lstm_cells": self.lstm_cells, "lstm_layers": self.lstm_layers, "attention_size": self.attention_size,
                 "heads": self.heads, "fc1": self.fc1, "fc2": self.fc2, "frames": self.frames,
                 "neutral_cap": self.neutral_cap}
        bad = {k: v for k, v in sizes.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ValueError(f"sizes must be integers >= 1, got {bad}")
        if not (self.spontaneous_corpus and self.neutral_class):
            raise ValueError(f"spontaneous_corpus and neutral_class must be non-empty, got "
                             f"spontaneous_corpus={self.spontaneous_corpus!r}, neutral_class={self.neutral_class!r}")
        if self.neutral_index is not None and not (isinstance(self.neutral_index, int) and self.neutral_index >= 0):
            raise ValueError(f"neutral_index must be None or an integer >= 0, got {self.neutral_index!r}")

    def feed(self) -> Feed:
        """The first ``frames`` frames (zero padded), z-scored; the spontaneous corpus's neutral training rows capped
        at ``neutral_cap``; half the labelled training rows with ``half`` (Sections 3.2, 4.1, 4.3)."""
        sampling = Sampling(caps=((self.spontaneous_corpus, self.neutral_class, self.neutral_cap),),
                            cap_target="emotion", fraction=0.5 if self.half else 1.0)
        return Feed(examples=ExampleSpec.fixed(self.frames, anchor="start"), normalization="zscore",
                    sampling=sampling)

    def unused_fields(self) -> frozenset[str]:
        """Fields this setting's model never reads (left out of its MLflow params)."""
        unused = set()
        if self.variant not in MTL_SETTINGS:
            unused.add("lam")
        if self.variant != "selective_mtl":
            unused.add("neutral_index")
        return frozenset(unused)


# ---- losses ----------------------------------------------------------------------------------------------------

def loss_weights(emotion: torch.Tensor, emotion_mask: torch.Tensor, style_mask: torch.Tensor,
                 neutral_index: int | None, lam: float, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row weights of the emotion and style cross-entropies (Eq. 3; Section 2.3 for ``selective_mtl``).

    Args:
        emotion: (B,) int64 emotion class indices.
        emotion_mask: (B,) bool, rows with an emotion label.
        style_mask: (B,) bool, rows with a style label.
        neutral_index: Index of the neutral class (read by ``selective_mtl`` only).
        lam: lambda of Eq. 3.
        variant: One of :data:`SETTINGS`.

    Returns:
        ``(w_ser, w_style)``, each (B,) float32, zero on rows without the label: ``separate``/``combined``
        ``(1, 0)``; ``mtl`` ``(lam, 1 - lam)``; ``selective_mtl`` ``(1, 0)`` on neutral rows and ``(lam, 1 - lam)``
        on the others.
    """
    emo, sty = emotion_mask.float(), style_mask.float()
    if variant not in MTL_SETTINGS:
        return emo, torch.zeros_like(sty)
    w_ser, w_style = lam * emo, (1 - lam) * sty
    if variant == "selective_mtl":
        neutral = emotion_mask & (emotion == neutral_index)  # (B,)
        w_ser = torch.where(neutral, torch.ones_like(w_ser), w_ser)
        w_style = torch.where(neutral, torch.zeros_like(w_style), w_style)
    return w_ser, w_style


# ---- blocks ----------------------------------------------------------------------------------------------------

class MultiHeadSelfAttention(nn.Module):
    """Eq. 1-2, all heads batched: ``alpha_i = softmax_t(w_{2,i} tanh(W_{1,i} H^T))``, ``H_att = [alpha_i H]_i``."""

    def __init__(self, d_in: int, attention_size: int, heads: int):
        super().__init__()
        self.heads, self.attention_size = heads, attention_size
        self.w1 = nn.Linear(d_in, heads * attention_size, bias=False)  # W_{1,i} stacked
        self.w2 = nn.Parameter(torch.empty(heads, attention_size))  # w_{2,i}
        nn.init.xavier_uniform_(self.w2)
        self.out_features = heads * d_in

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape  # (B, T, D)
        u = torch.tanh(self.w1(h)).view(b, t, self.heads, self.attention_size)  # (B, T, n, A)
        alpha = torch.softmax(torch.einsum("btna,na->bnt", u, self.w2), dim=-1)  # (B, n, T)
        return torch.bmm(alpha, h).reshape(b, -1)  # (B, n * D)


class EmotionNetwork(nn.Module):
    """The baseline network of Fig. 1: BiLSTM -> multi-head self-attention -> FC1 -> FC2 -> emotion logits."""

    def __init__(self, cfg: SelectiveMTLConfig, bins: int, n_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(bins, cfg.lstm_cells, num_layers=cfg.lstm_layers, batch_first=True, bidirectional=True,
                            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention = MultiHeadSelfAttention(2 * cfg.lstm_cells, cfg.attention_size, cfg.heads)
        self.head = nn.Sequential(nn.Linear(self.attention.out_features, cfg.fc1), nn.ReLU(),
                                  nn.Linear(cfg.fc1, cfg.fc2), nn.ReLU(), nn.Linear(cfg.fc2, n_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.lstm(x)  # (B, T, 2 * cells)
        h_att = self.attention(self.dropout(h))  # (B, heads * 2 * cells)
        return h_att, self.head(h_att)  # H_att, (B, C) logits


# ---- the model -------------------------------------------------------------------------------------------------

class SelectiveMTLModel(SERModel):
    """The paper's network in one of its four settings (see the module docstring).

    Raises:
        ValueError: At construction, when ``x`` is not (T, F), ``emotion`` is not a class target, a setting other
            than ``combined`` lacks a 2-class ``style`` target, or ``selective_mtl`` has no valid ``neutral_index``.
    """

    def __init__(self, cfg: SelectiveMTLConfig, spec: DataSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        spec.require_frames("selective_mtl", "use a frame feature set such as fbank40")
        spec.require_class("emotion", "selective_mtl")
        n_emotion = int(spec.n_classes["emotion"])
        if cfg.variant != "combined" and ("style" not in spec.targets or spec.kind("style") != "class"
                                          or spec.n_classes.get("style") != N_STYLES):
            raise ValueError(f"variant {cfg.variant!r} needs the class target 'style' with {N_STYLES} classes "
                             f"(acted, spontaneous); the data targets are {list(spec.targets)} with n_classes "
                             f"{spec.n_classes}; add style to data.targets or use variant 'combined'")
        names = spec.classes.get("emotion", ())
        self.neutral_index = cfg.neutral_index
        if self.neutral_index is None and cfg.neutral_class in names:
            self.neutral_index = names.index(cfg.neutral_class)
        if cfg.variant == "selective_mtl" and (self.neutral_index is None or not self.neutral_index < n_emotion):
            raise ValueError(f"selective_mtl needs the class {cfg.neutral_class!r} among the emotion classes "
                             f"{list(names) or '(no names in the data spec)'} or neutral_index in [0, {n_emotion}), "
                             f"got neutral_index {cfg.neutral_index}; add it to data.emotion_classes")
        bins = int(spec.input_shape[1])
        n_nets = N_STYLES if cfg.variant == "separate" else 1
        self.networks = nn.ModuleList(EmotionNetwork(cfg, bins, n_emotion) for _ in range(n_nets))
        self.style_head = (nn.Linear(self.networks[0].attention.out_features, N_STYLES)
                           if cfg.variant in MTL_SETTINGS else None)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam at ``lr`` with ``weight_decay`` (Section 4.2)."""
        return {"main": torch.optim.Adam(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def _routed(self, x: torch.Tensor, style: torch.Tensor, routable: torch.Tensor) -> torch.Tensor:
        """``separate``: emotion logits (B, C) of each routable row from its style's network; other rows get the
        mixture. A network without rows is not run, so its gradients stay None and Adam leaves it unchanged."""
        logits: torch.Tensor | None = None
        rest = ~routable
        for s, net in enumerate(self.networks):
            rows = torch.nonzero(routable & (style == s)).squeeze(1)  # (b_s,)
            if len(rows) == 0:
                continue
            out = net(x[rows])[1]  # (b_s, C)
            if logits is None:
                logits = out.new_zeros(len(x), out.shape[1])
            logits = logits.index_copy(0, rows, out)
        if bool(rest.any()):
            rows = torch.nonzero(rest).squeeze(1)
            out = self._mixture(x[rows])
            logits = out.new_zeros(len(x), out.shape[1]) if logits is None else logits
            logits = logits.index_copy(0, rows, out)
        return logits

    def _mixture(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean of the networks' emotion posteriors (B, C): ``separate`` without a style."""
        logp = torch.stack([F.log_softmax(net(x)[1], dim=-1) for net in self.networks])  # (S, B, C)
        return torch.logsumexp(logp, dim=0) - np.log(len(self.networks))

    def _outputs(self, batch: dict[str, torch.Tensor], routable: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x = batch["x"]  # (B, T, F)
        if self.cfg.variant == "separate":
            if routable is None:
                return {"emotion": self._mixture(x)}
            return {"emotion": self._routed(x, batch["style"], routable)}
        h_att, logits = self.networks[0](x)  # (B, heads * 2 * cells), (B, C)
        out = {"emotion": logits}
        if self.style_head is not None:
            out["style"] = self.style_head(h_att)  # (B, 2)
        return out

    # ---- losses ------------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 3 with :func:`loss_weights`' per-row weights (L_SER alone for ``separate`` and ``combined``).

        ``separate`` trains on the style-labelled rows only (a row without a style has no network)."""
        cfg = self.cfg
        emotion_mask = batch["emotion_mask"]
        style_mask = batch.get("style_mask", torch.zeros_like(emotion_mask))
        if cfg.variant == "separate":
            emotion_mask = emotion_mask & style_mask
            if not bool(emotion_mask.any()):
                # No routable labelled rows: a 0 that backpropagates into no parameter (their grads stay None).
                return batch["x"].new_zeros((), requires_grad=True), {"loss_ser": 0.0, "loss_style": 0.0}
            keep = torch.nonzero(emotion_mask).squeeze(1)
            batch = {k: v[keep] for k, v in batch.items()}
            emotion_mask, style_mask = batch["emotion_mask"] & batch["style_mask"], batch["style_mask"]
            out = self._outputs(batch, routable=style_mask)
        else:
            out = self._outputs(batch, routable=None)
        emotion = batch["emotion"]
        w_ser, w_style = loss_weights(emotion, emotion_mask, style_mask, self.neutral_index, cfg.lam, cfg.variant)
        # Labels of unlabelled rows may be anything; their weight is 0, but cross_entropy must not see -1 indices.
        ce_ser = F.cross_entropy(out["emotion"], torch.where(emotion_mask, emotion, 0), reduction="none")  # (B,)
        ser = (w_ser * ce_ser).sum() / max(int(emotion_mask.sum()), 1)
        style = ser.new_zeros(())
        if "style" in out:
            ce_style = F.cross_entropy(out["style"], torch.where(style_mask, batch["style"], 0), reduction="none")
            style = (w_style * ce_style).sum() / max(int(style_mask.sum()), 1)
        total = ser + style
        return total, {"loss_ser": float(ser.detach()), "loss_style": float(style.detach())}

    # ---- inference ---------------------------------------------------------------------------------------------
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``emotion`` logits (B, C), plus ``style`` logits (B, 2) with a style head. ``separate`` routes each row by
        ``batch["style"]`` where ``style_mask`` allows, else gives the networks' mean posterior as logits."""
        routable = None
        if self.cfg.variant == "separate" and "style" in batch:
            routable = batch.get("style_mask", torch.ones_like(batch["style"], dtype=torch.bool))
        return self._outputs(batch, routable)

    def extra_metrics(self, outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                      meta: pa.Table) -> dict[str, float]:
        """Per-class emotion accuracy (recall, Tables 4-5) of the classes present: ``acc_emotion_<class name>``
        (``acc_emotion_class<k>`` when the data spec has no class names)."""
        post, y, mask = outputs.get("emotion"), labels.get("emotion"), labels.get("emotion_mask")
        if post is None or y is None or mask is None or not np.any(mask):
            return {}
        pred, y = np.asarray(post)[mask].argmax(axis=1), np.asarray(y)[mask].astype(np.int64)
        names = self.spec.classes.get("emotion") or tuple(f"class{k}" for k in range(np.asarray(post).shape[1]))
        return {f"acc_emotion_{names[k]}": float(np.mean(pred[y == k] == k))
                for k in range(np.asarray(post).shape[1]) if np.any(y == k)}


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())
