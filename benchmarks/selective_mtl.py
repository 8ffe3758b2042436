"""Throughput of the ``selective_mtl`` family at the paper's size: training steps and inference, utterances per second.

Models: the paper-size networks (``trainables.selective_mtl``, default config, Table 2: BiLSTM 256 cells per
direction, 8 attention heads of 512, FC 4096 -> 1024) in the ``selective_mtl`` setting (one network with the style
head) and the ``separate`` baseline (one network per corpus, rows routed by style) on fbank40 ``(750, 40)`` inputs
(7.5 s at a 10 ms hop), 4 emotion classes, 2 styles, batch 32 of random z-scored features, random emotions,
alternating styles, every row labelled.

Figures (one run each, nothing asserted):

1. **Training step**: ``model.training_step`` (forward, Eq. 3's weighted losses, backward, Adam), utterances per
   second.
2. **Inference**: ``model.predict`` in eval mode under ``torch.no_grad`` (emotion logits and, with a style head,
   style logits; ``separate`` routes by style), utterances per second.

On the CPU with ``torch.set_num_threads(1)`` ("per core") and with every core the process may use, and on CUDA when
``torch.cuda.is_available()`` (one GPU, synchronised before each clock read). Each figure runs a few warm-up steps,
then timed steps until both ``--steps`` steps and ``--seconds`` seconds have passed.

Usage::

    .venv/bin/python benchmarks/selective_mtl.py            # 3 warm-up steps, >= 5 timed steps and >= 5 s per figure
    .venv/bin/python benchmarks/selective_mtl.py --quick    # 1 warm-up step, >= 2 timed steps and >= 1 s per figure
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.model_throughput import main as throughput_main  # noqa: E402
from trainables.base import DataSpec  # noqa: E402
from trainables.selective_mtl import SelectiveMTLConfig, SelectiveMTLModel  # noqa: E402

INPUTS = {"fbank40": (750, 40)}
MODELS = {"selective_mtl": "selective_mtl", "separate": "separate"}
N_CLASSES = 4
NEUTRAL = 3


def make_batch(shape: tuple[int, int], batch_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(batch_size, *shape, generator=g),
            "emotion": torch.randint(0, N_CLASSES, (batch_size,), generator=g),
            "emotion_mask": torch.ones(batch_size, dtype=torch.bool),
            "style": torch.arange(batch_size) % 2, "style_mask": torch.ones(batch_size, dtype=torch.bool)}


def build(model_name: str, shape: tuple[int, int]) -> SelectiveMTLModel:
    spec = DataSpec(input_shape=shape, targets=("emotion", "style"), n_classes={"emotion": N_CLASSES, "style": 2})
    return SelectiveMTLModel(SelectiveMTLConfig(variant=MODELS[model_name], frames=shape[0], neutral_index=NEUTRAL),
                             spec)


if __name__ == "__main__":
    throughput_main(__doc__.split("\n\n")[0], INPUTS, list(MODELS), build, make_batch)
