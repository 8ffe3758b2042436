"""Throughput of the ``center_loss`` family at the paper's size: training steps and inference, utterances per second.

Models: the paper-size S+A+C and S+C networks (``trainables.center_loss``, default config: 4 paths x 200 filters,
half-window pooling, hidden 64, decoder (256,)) on MFCC ``(188, 40)`` and mel ``(188, 128)`` inputs (6 s at hop
512), 4 emotion classes, batch 32 of random [0, 1] features, every row labelled.

Figures (one run each, nothing asserted):

1. **Training step**: ``model.training_step`` (forward, the variant's losses, backward, Adadelta, the centre update),
   utterances per second.
2. **Inference**: ``model.predict`` in eval mode under ``torch.no_grad`` (emotion logits, the embedding and, for
   S+A+C, the per-example reconstruction MSE), utterances per second.

On the CPU with ``torch.set_num_threads(1)`` ("per core") and with every core the process may use, and on CUDA when
``torch.cuda.is_available()`` (one GPU, synchronised before each clock read). Each figure runs a few warm-up steps,
then timed steps until both ``--steps`` steps and ``--seconds`` seconds have passed.

Usage::

    .venv/bin/python benchmarks/center_loss.py            # 3 warm-up steps, >= 5 timed steps and >= 5 s per figure
    .venv/bin/python benchmarks/center_loss.py --quick    # 1 warm-up step, >= 2 timed steps and >= 1 s per figure
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.model_throughput import main as throughput_main  # noqa: E402
from trainables.base import DataSpec  # noqa: E402
from trainables.center_loss import CenterLossConfig, CenterLossModel  # noqa: E402

INPUTS = {"mfcc": (188, 40), "mel": (188, 128)}
MODELS = {"S+A+C": "s_a_c", "S+C": "s_c"}
N_CLASSES = 4


def make_batch(shape: tuple[int, int], batch_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.rand(batch_size, *shape, generator=g),
            "emotion": torch.randint(0, N_CLASSES, (batch_size,), generator=g),
            "emotion_mask": torch.ones(batch_size, dtype=torch.bool)}


def build(model_name: str, shape: tuple[int, int]) -> CenterLossModel:
    spec = DataSpec(input_shape=shape, targets=("emotion",), n_classes={"emotion": N_CLASSES})
    return CenterLossModel(CenterLossConfig(variant=MODELS[model_name], frames=shape[0]), spec)


if __name__ == "__main__":
    throughput_main(__doc__.split("\n\n")[0], INPUTS, list(MODELS), build, make_batch)
