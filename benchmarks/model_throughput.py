"""Shared by the family throughput benchmarks (``center_loss.py``, ``selective_mtl.py``): time a model's training
step and inference on one fixed batch, on the CPU with 1 thread ("per core") and every core, and on CUDA when there
is one, and print one table row per device, input and model.

Each figure runs a few warm-up steps, then timed steps until both ``--steps`` steps and ``--seconds`` seconds have
passed; CUDA is synchronised before each clock read that decides. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from trainables.base import SERModel


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


def measure(model: SERModel, batch: Mapping[str, torch.Tensor], device: torch.device, warmup: int, min_steps: int,
            min_seconds: float) -> dict:
    """Training-step and inference (eval mode, no grad) throughput of ``model`` on ``batch``."""
    model = model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    size = len(batch["x"])
    optimizers = model.configure_optimizers()
    model.train()
    train_s, train_n = timed(lambda: model.training_step(batch, optimizers), device, warmup, min_steps, min_seconds)
    model.eval()

    def infer() -> dict:
        with torch.no_grad():
            return model.predict(batch)

    infer_s, infer_n = timed(infer, device, warmup, min_steps, min_seconds)
    return {"params": sum(p.numel() for p in model.parameters()), "train": size / train_s, "train_ms": 1e3 * train_s,
            "train_n": train_n, "infer": size / infer_s, "infer_ms": 1e3 * infer_s, "infer_n": infer_n}


def main(description: str, inputs: Mapping[str, tuple[int, int]], models: Sequence[str],
         build: Callable[[str, tuple[int, int]], SERModel],
         make_batch: Callable[[tuple[int, int], int], dict[str, torch.Tensor]], argv: list[str] | None = None) -> None:
    """Parse the common options and print the table.

    Args:
        description: The script's one-line description (``--help``).
        inputs: Input name -> example shape ``(T, F)``.
        models: Model names, passed to ``build``.
        build: ``build(model_name, shape)`` -> a fresh model (seeded by the caller's ``torch.manual_seed``).
        make_batch: ``make_batch(shape, batch_size)`` -> a CPU batch.
    """
    parser = argparse.ArgumentParser(description=description)
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

    header = (f"| {'device':<28} | {'input':<26} | {'model':<15} | {'params':>10} | {'train utt/s':>11} | "
              f"{'ms/step':>8} | {'infer utt/s':>11} | {'ms/batch':>8} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    threads_before = torch.get_num_threads()
    for label, device, threads in runs:
        if threads is not None:
            torch.set_num_threads(threads)
        for input_name, shape in inputs.items():
            for model_name in models:
                torch.manual_seed(0)
                r = measure(build(model_name, shape), make_batch(shape, args.batch), device, warmup, min_steps,
                            min_seconds)
                print(f"| {label:<28} | {input_name + ' ' + str(shape).replace(' ', ''):<26} | {model_name:<15} | "
                      f"{r['params']:>10,} | {r['train']:>11.1f} | {r['train_ms']:>8.1f} | {r['infer']:>11.1f} | "
                      f"{r['infer_ms']:>8.1f} |", flush=True)
    torch.set_num_threads(threads_before)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min): other processes on the cores lower every figure")
