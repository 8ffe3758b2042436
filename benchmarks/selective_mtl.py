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

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainables.base import DataSpec  # noqa: E402
from trainables.selective_mtl import SelectiveMTLConfig, SelectiveMTLModel, parameter_count  # noqa: E402

INPUTS = {"fbank40": (750, 40)}
MODELS = {"selective_mtl": "selective_mtl", "separate": "separate"}
N_CLASSES = 4
NEUTRAL = 3


def make_batch(shape: tuple[int, int], batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(batch_size, *shape, generator=g),
             "emotion": torch.randint(0, N_CLASSES, (batch_size,), generator=g),
             "emotion_mask": torch.ones(batch_size, dtype=torch.bool),
             "style": torch.arange(batch_size) % 2, "style_mask": torch.ones(batch_size, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch.items()}


def timed(step: Callable[[], object], device: torch.device, warmup: int, min_steps: int,
          min_seconds: float) -> tuple[float, int]:
    """Seconds per step after ``warmup`` steps, over at least ``min_steps`` steps and ``min_seconds`` seconds."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < min_seconds:
        step()
        n += 1
        if device.type == "cuda" and n >= min_steps:
            sync()  # the clock must see finished work before it decides to stop
    sync()
    return (time.perf_counter() - start) / n, n


def measure(model_name: str, input_name: str, device: torch.device, batch_size: int, warmup: int, min_steps: int,
            min_seconds: float) -> dict:
    shape = INPUTS[input_name]
    spec = DataSpec(input_shape=shape, targets=("emotion", "style"), n_classes={"emotion": N_CLASSES, "style": 2})
    torch.manual_seed(0)
    cfg = SelectiveMTLConfig(variant=MODELS[model_name], frames=shape[0], neutral_index=NEUTRAL)
    model = SelectiveMTLModel(cfg, spec).to(device)
    optimizers = model.configure_optimizers()
    batch = make_batch(shape, batch_size, device)

    model.train()
    train_s, train_n = timed(lambda: model.training_step(batch, optimizers), device, warmup, min_steps, min_seconds)

    model.eval()

    def infer() -> dict:
        with torch.no_grad():
            return model.predict(batch)

    infer_s, infer_n = timed(infer, device, warmup, min_steps, min_seconds)
    return {"params": parameter_count(model), "train": batch_size / train_s, "train_ms": 1e3 * train_s,
            "train_n": train_n, "infer": batch_size / infer_s, "infer_ms": 1e3 * infer_s, "infer_n": infer_n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: 1 warm-up, >= 2 steps and >= 1 s each")
    parser.add_argument("--batch", type=int, default=32, help="utterances per batch (default 32)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per figure (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="least timed steps per figure (default 5; quick 2)")
    parser.add_argument("--seconds", type=float, default=None, help="least timed seconds per figure (default 5; "
                                                                       "quick 1)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU figures")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    min_steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    min_seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}"
          f", {cores} usable cores; batch {args.batch}, {warmup} warm-up, >= {min_steps} steps and >= {min_seconds:g} s"
          f" per figure; load average {os.getloadavg()[0]:.2f} (1 min)")
    runs: list[tuple[str, torch.device, int | None]] = []
    if not args.no_cpu:
        runs += [("cpu, 1 thread", torch.device("cpu"), 1)]
        if cores > 1:
            runs += [(f"cpu, {cores} threads", torch.device("cpu"), cores)]
    if torch.cuda.is_available():
        runs.append((f"cuda ({torch.cuda.get_device_name(0)})", torch.device("cuda", 0), None))
    else:
        print("CUDA: not available, GPU figures skipped")

    header = (f"| {'device':<28} | {'input':<16} | {'model':<13} | {'params':>10} | {'train utt/s':>11} | "
              f"{'ms/step':>8} | {'infer utt/s':>11} | {'ms/batch':>8} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    threads_before = torch.get_num_threads()
    for label, device, threads in runs:
        if threads is not None:
            torch.set_num_threads(threads)
        for input_name, shape in INPUTS.items():
            for model_name in MODELS:
                r = measure(model_name, input_name, device, args.batch, warmup, min_steps, min_seconds)
                print(f"| {label:<28} | {input_name + ' ' + str(shape).replace(' ', ''):<16} | {model_name:<13} | "
                      f"{r['params']:>10,} | {r['train']:>11.1f} | {r['train_ms']:>8.1f} | {r['infer']:>11.1f} | "
                      f"{r['infer_ms']:>8.1f} |", flush=True)
    torch.set_num_threads(threads_before)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min): other processes on the cores lower every figure")


if __name__ == "__main__":
    main()
