"""The one model interface every architecture family implements (STYLE.md 3).

The shared loop (``trainables/loop.py``) never names a family: it builds the model from its config dataclass and a
:class:`DataSpec`, asks it for optimizers, calls :meth:`SERModel.training_step` per batch and
:meth:`SERModel.predict` for evaluation. Families with several optimizers (GAN generator/discriminator, the AAE's
three phases) or training phases (the DAE baseline's unsupervised pre-training) override ``training_step`` and
``configure_optimizers``; the loop still owns epochs, evaluation, reporting, checkpoints and seeding.

Batch layout (a dict of tensors, built by ``data_io.feed`` from the family's ``cfg.feed()``):
    ``x``              (B, *input_shape) float32 features, normalised with training-fold statistics.
    ``<target>``       by the target's kind (``DataSpec.kinds``): ``regression`` (B,) float32 (attributes scaled to
                       [-1, 1]); ``class`` (B,) int64 class index (emotion, gender, speaker, style, attribute
                       levels, V-A clusters); ``soft`` (B, C) float32 label distribution (fuzzy 5-point labels).
    ``<target>_mask``  (B,) bool, True where the row feeds that target's loss. Rows without the label, and
                       auxiliary rows whose shard set does not list the target, are False; they still train the
                       unsupervised parts.
    ``utt_index``      (B,) int64 store row of the example's utterance (several windows share one).

Evaluation is per utterance: the loop averages an utterance's example outputs (class posteriors, not logits) and
scores those; :meth:`SERModel.extra_metrics` lets a family add the paper's own metrics over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from torch import nn

REGRESSION_TARGETS = ("arousal", "valence", "dominance")
TARGET_KINDS = ("regression", "class", "soft")


@dataclass(frozen=True)
class DataSpec:
    """Sizes that come from the data (filled from the shard manifest and the fold, never searched).

    Attributes:
        input_shape: Shape of one example without the batch axis: ``(D,)`` for functionals, ``(T, F)`` for
            frame features.
        targets: Names of the targets present in batches, e.g. ``("arousal", "valence", "dominance")``.
        n_classes: Number of classes per class or soft target, e.g. ``{"emotion": 4, "gender": 2}``.
        kinds: ``regression``, ``class`` or ``soft`` per target; a target not listed is ``regression`` when it is
            an attribute and ``class`` otherwise.
        classes: Class names per class or soft target, in index order, when the encoders know them (e.g.
            ``{"emotion": ("neutral", "happy", "sad", "angry")}``), so a model can find a class by name.
    """

    input_shape: tuple[int, ...]
    targets: tuple[str, ...]
    n_classes: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.input_shape or any(int(s) <= 0 for s in self.input_shape):
            raise ValueError(f"input_shape must be non-empty with positive sizes, got {self.input_shape}")
        kinds = {t: self.kinds.get(t, "regression" if t in REGRESSION_TARGETS else "class") for t in self.targets}
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "classes", {t: tuple(str(c) for c in names) for t, names in self.classes.items()})
        for t, names in self.classes.items():
            if t in self.n_classes and len(names) != self.n_classes[t]:
                raise ValueError(f"target {t!r} has {self.n_classes[t]} classes but {len(names)} class names "
                                 f"{list(names)}")
        for t, kind in kinds.items():
            if kind not in TARGET_KINDS:
                raise ValueError(f"target {t!r} has kind {kind!r}; kinds are {TARGET_KINDS}")
            if kind != "regression" and self.n_classes.get(t, 0) < 2:
                raise ValueError(f"{kind} target {t!r} needs n_classes[{t!r}] >= 2, got {self.n_classes.get(t)}")

    def kind(self, target: str) -> str:
        """``regression``, ``class`` or ``soft``."""
        return self.kinds[target]

    def require_frames(self, family: str, hint: str) -> None:
        """Raise ValueError unless examples are frame matrices ``(T, F)``; ``hint`` says which feature set to use."""
        if len(self.input_shape) != 2:
            raise ValueError(f"the {family} family takes frame features of shape (T, F), got input_shape "
                             f"{self.input_shape}; {hint}")

    def require_class(self, target: str, family: str) -> None:
        """Raise ValueError unless ``target`` is in the data as a class target."""
        if target not in self.targets or self.kind(target) != "class":
            raise ValueError(f"the {family} family classifies the class target {target!r}; the data targets are "
                             f"{list(self.targets)} ({target} kind {self.kinds.get(target)!r}); add {target} with "
                             f"the class encoder")


class SERModel(nn.Module):
    """Base class of every family's model.

    Subclasses implement :meth:`loss` and :meth:`predict`; most keep the default single-optimizer
    :meth:`training_step`. ``self.epoch`` is set by the loop before each epoch so phased training (DAE
    pre-training, GAN warm-up) can switch behaviour without the loop knowing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name. Default: one ``Adam`` over all parameters at ``self.cfg.lr``."""
        return {"main": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def training_step(self, batch: dict[str, torch.Tensor],
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step on one batch; returns scalar logs (must include ``loss``)."""
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        loss, logs = self.loss(batch)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **logs}

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop at the start of every epoch (0-based)."""
        self.epoch = epoch

    # ---- what families implement ----------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one batch (train mode) and scalar logs of its parts."""
        raise NotImplementedError

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inference outputs (eval mode, no noise): ``{attribute: (B,)}`` for regression targets and
        ``{class_target: (B, C) logits}`` for class targets."""
        raise NotImplementedError

    def extra_metrics(self, outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                      meta: pa.Table) -> dict[str, float]:
        """The family's own metrics over utterance-level outputs (the paper's evaluation details).

        Called by the loop for validation and by the driver for test, on all utterances and on each corpus's.

        Args:
            outputs: Pooled per utterance: ``(U,)`` for regression targets, ``(U, C)`` posteriors for class and soft
                targets, and any other key ``predict`` returns, averaged over the utterance's examples.
            labels: Encoded targets and ``<target>_mask`` of the utterances (numpy).
            meta: The utterances' metadata (corpus, speaker, raw ratings on the corpus scale, ...).

        Returns:
            ``{name: value}``, names without the ``val_``/``test_`` prefix (e.g. ``"acc_fuzzy_valence"``).
        """
        return {}

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        """An input example for MLflow model logging (the registry needs a signature)."""
        return torch.zeros((batch_size, *self.spec.input_shape), dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Export path for the registry: stacked predictions of all targets, ``(B, n_outputs)``.

        Regression targets give one column each; class and soft targets give their softmax probabilities; columns
        follow ``spec.targets`` order, skipping targets the model does not predict.
        """
        out = self.predict({"x": x})
        cols = []
        for t in (t for t in self.spec.targets if t in out):  # STL variants predict a subset of the targets
            y = out[t]
            cols.append(y.unsqueeze(-1) if self.spec.kind(t) == "regression" else torch.softmax(y, dim=-1))
        return torch.cat(cols, dim=-1)
