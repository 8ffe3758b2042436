"""Throughput of the ``aae_mtl`` family at the paper's size: training steps (its phases) and inference, windows per
second.

Models: the four variants (``trainables.aae_mtl``, default config: encoder 64 -> 64 -> 32 filters with the paper's
16 x 16 x 32 code, mirrored decoder, latent discriminator, classifiers of 32 filters and two dense layers of 256)
on ``spectrogram`` windows ``(256, 128)`` (256 frames of 10 ms, 128 rows), 4 emotions, 2 genders, 610 speakers
(IEMOCAP's 10 and 600 LibriSpeech speakers), batch 32 of random z-scored windows: half labelled with every target,
half auxiliary rows with gender and speaker only (as ``aux_ratio: 1`` feeds them).

Figures (one run each, nothing asserted):

1. **Training step**: ``model.training_step`` (the variant's phases in the paper's order: reconstruction,
   discriminator, generator, classification, each a forward, backward and SGD step), windows per second.
2. **Inference**: ``model.predict`` in eval mode under ``torch.no_grad`` (every head and the d-vector), windows per
   second.

On the CPU with ``torch.set_num_threads(1)`` ("per core") and with every core the process may use, and on CUDA when
``torch.cuda.is_available()`` (one GPU, synchronised before each clock read).

Usage::

    .venv/bin/python benchmarks/aae_mtl.py            # 3 warm-up steps, >= 5 timed steps and >= 5 s per figure
    .venv/bin/python benchmarks/aae_mtl.py --quick    # 1 warm-up step, >= 2 timed steps and >= 1 s per figure
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.model_throughput import main as throughput_main  # noqa: E402
from trainables.aae_mtl import VARIANTS, AAEMTLConfig, AAEMTLModel  # noqa: E402
from trainables.base import DataSpec  # noqa: E402

INPUTS = {"spectrogram": (256, 128)}
CLASSES = {"emotion": 4, "gender": 2, "speaker": 610}


def make_batch(shape: tuple[int, int], batch_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labelled = torch.arange(batch_size) < batch_size // 2
    batch = {"x": torch.randn(batch_size, *shape, generator=g), "utt_index": torch.arange(batch_size)}
    for target, n in CLASSES.items():
        batch[target] = torch.randint(0, n, (batch_size,), generator=g)
        batch[f"{target}_mask"] = labelled.clone() if target == "emotion" else torch.ones(batch_size, dtype=torch.bool)
    return batch


def build(variant: str, shape: tuple[int, int]) -> AAEMTLModel:
    spec = DataSpec(input_shape=shape, targets=tuple(CLASSES), n_classes=dict(CLASSES))
    return AAEMTLModel(AAEMTLConfig(variant=variant, window=shape[0], pretrain_epochs=0), spec)


if __name__ == "__main__":
    throughput_main(__doc__.split("\n\n")[0], INPUTS, list(VARIANTS), build, make_batch)
