"""Throughput of the ``dcgan`` family: training steps (the GAN's four phases next to a CNN's one or two) and inference,
crops per second.

Models: the four variants (``trainables.dcgan``, default config: 4 stride-2 convolutions of 64 -> 512 filters,
5x5 kernels, FC 256, z of 100) on ``spectrogram1024`` crops ``(128, 128)`` (128 frames of 16 ms, 128 rows), batch
32 of random crops in [-1, 1]: half labelled with random 5-point soft valence and arousal labels, half unlabeled
(auxiliary rows, as ``aux_ratio: 1`` feeds them), so the GAN variants' extra phases are costed on the same batch.

Figures (one run each, nothing asserted):

1. **Training step**: ``model.training_step`` (the variant's phases in the paper's order: generator,
   discriminator, valence, activation; each its own forward, backward and Adam step), crops per second; the
   ``ms/step`` column puts a GAN step next to a CNN step.
2. **Inference**: ``model.predict`` in eval mode under ``torch.no_grad``, crops per second.

On the CPU with ``torch.set_num_threads(1)`` ("per core") and with every core the process may use, and on CUDA when
``torch.cuda.is_available()`` (one GPU, synchronised before each clock read).

Usage::

    .venv/bin/python benchmarks/dcgan.py            # 3 warm-up steps, >= 5 timed steps and >= 5 s per figure
    .venv/bin/python benchmarks/dcgan.py --quick    # 1 warm-up step, >= 2 timed steps and >= 1 s per figure
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.model_throughput import main as throughput_main  # noqa: E402
from trainables.base import DataSpec  # noqa: E402
from trainables.dcgan import LEVELS, VARIANTS, DCGANConfig, DCGANModel  # noqa: E402

INPUTS = {"spectrogram1024": (128, 128)}
TARGETS = ("valence", "arousal")


def make_batch(shape: tuple[int, int], batch_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labelled = torch.arange(batch_size) < batch_size // 2
    batch = {"x": torch.rand(batch_size, *shape, generator=g) * 2 - 1, "utt_index": torch.arange(batch_size)}
    for t in TARGETS:
        batch[t] = torch.softmax(3 * torch.randn(batch_size, LEVELS, generator=g), dim=-1) * labelled[:, None]
        batch[f"{t}_mask"] = labelled.clone()
    return batch


def build(variant: str, shape: tuple[int, int]) -> DCGANModel:
    spec = DataSpec(input_shape=shape, targets=TARGETS, n_classes={t: LEVELS for t in TARGETS},
                    kinds={t: "soft" for t in TARGETS})
    return DCGANModel(DCGANConfig(variant=variant, crop_width=shape[0]), spec)


if __name__ == "__main__":
    throughput_main(__doc__.split("\n\n")[0], INPUTS, list(VARIANTS), build, make_batch)
