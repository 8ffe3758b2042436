"""The one model interface every architecture family implements (STYLE.md 3).

The shared loop (``trainables/loop.py``) never names a family: it builds the model from its config dataclass and a
:class:`DataSpec`, asks it for optimizers, calls :meth:`SERModel.training_step` per batch and
:meth:`SERModel.predict` for evaluation. Families with several optimizers (GAN generator/discriminator, the AAE's
three phases) or training phases (the DAE baseline's unsupervised pre-training) override ``training_step`` and
``configure_optimizers``; the loop still owns epochs, evaluation, reporting, checkpoints and seeding.

Batch layout (a dict of tensors, built by ``data_io.datasets``):
    ``x``              (B, *input_shape) float32 features, already z-normalised with training-fold statistics.
    ``<target>``       (B,) float32 for an attribute target (arousal/valence/dominance, scaled to [-1, 1]),
                       (B,) int64 for a class target (emotion, gender, speaker, style).
    ``<target>_mask``  (B,) bool, True where the row has that label (rows without labels still train the
                       unsupervised parts).
    ``utt_index``      (B,) int64 utterance index, for window-level training with utterance-level scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

REGRESSION_TARGETS = ("arousal", "valence", "dominance")


@dataclass(frozen=True)
class DataSpec:
    """Sizes that come from the data (filled from the shard manifest and the fold, never searched).

    Attributes:
        input_shape: Shape of one example without the batch axis: ``(D,)`` for functionals, ``(T, F)`` for
            frame features.
        targets: Names of the targets present in batches, e.g. ``("arousal", "valence", "dominance")``.
        n_classes: Number of classes per class target, e.g. ``{"emotion": 4, "gender": 2}``.
    """

    input_shape: tuple[int, ...]
    targets: tuple[str, ...]
    n_classes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.input_shape or any(int(s) <= 0 for s in self.input_shape):
            raise ValueError(f"input_shape must be non-empty with positive sizes, got {self.input_shape}")
        for t in self.targets:
            if t not in REGRESSION_TARGETS and self.n_classes.get(t, 0) < 2:
                raise ValueError(f"class target {t!r} needs n_classes[{t!r}] >= 2, got {self.n_classes.get(t)}")


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

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        """An input example for MLflow model logging (the registry needs a signature)."""
        return torch.zeros((batch_size, *self.spec.input_shape), dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Export path for the registry: stacked predictions of all targets, ``(B, n_outputs)``.

        Regression targets give one column each; class targets give their softmax probabilities; columns follow
        ``spec.targets`` order, skipping targets the model does not predict.
        """
        out = self.predict({"x": x})
        cols = []
        for t in (t for t in self.spec.targets if t in out):  # STL variants predict a subset of the targets
            y = out[t]
            cols.append(y.unsqueeze(-1) if y.dim() == 1 else torch.softmax(y, dim=-1))
        return torch.cat(cols, dim=-1)
