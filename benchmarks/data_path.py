"""The training data path: shared-store size, a trial's memory beyond the store, batch building next to a step.

Data: a synthetic IEMOCAP-layout corpus (``data_io.synth``, ``--scale full`` by default: 5 sessions, 10 speakers),
ingested in-process with the ``spectrogram`` preset (the AAE paper's 25/10 ms, 128 bins), folds by ``loso`` (5
folds, one speaker of the held-out session validates). Synthesis and ingest are timed but are not the figures.

Figures (one run each, nothing asserted):

1. **Store**: bytes of the shared :class:`~data_io.store.FeatureStore` (feature values, per-row statistics, metadata).
2. **Peak memory beyond the store** of one trial of a small conv model (one epoch, ``run_trial``) with 1 fold and
   with all 5 LOSO folds, in a fresh process each: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``
   after the store is loaded and the model code imported) minus the RSS at that point. New path: random crops,
   batches gathered from the store. Old path (the baseline, the dense path this replaced): each fold's training
   and validation rows materialised as normalised dense arrays of the same example width, as the old ``FoldRun``
   did. Target: new path, 5 folds <= 1.2x of 1 fold.
3. **Batches per second** of random crops (``crop`` centred on speech) and of speech-only windows (``windows``),
   built on one core, next to one training step (forward, backward, Adam) of the conv model on such a batch, and the
   share of building in building + step. Target: building < 10 % of a step. The old dense path's figure is a
   random-row index into its materialised fold at the same example shape.

Usage::

    .venv/bin/python benchmarks/data_path.py            # scale full (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/data_path.py --smoke    # small corpus, a few batches (about 30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 2**20


# ---- a small conv model, registered for the benchmark only -----------------------------------------------------

def register_bench_family(width: int, kind: str) -> None:
    """Register ``bench_conv`` (a 2-layer conv net on ``(frames, bins)`` examples, CE on emotion) in-process."""
    import torch.nn.functional as F
    from torch import nn

    from data_io.examples import ExampleSpec
    from data_io.feed import Feed
    from trainables import registry
    from trainables.base import SERModel

    @dataclass(frozen=True)
    class BenchConfig:
        lr: float = 1e-3
        width: int = 128
        kind: str = "crop"

        def feed(self) -> Feed:
            examples = (ExampleSpec.crop(self.width, centre="speech") if self.kind == "crop"
                        else ExampleSpec.windows(self.width, hop=self.width // 2, speech_only=True))
            return Feed(examples=examples)

    class BenchModel(SERModel):
        def __init__(self, cfg: BenchConfig, spec) -> None:
            super().__init__()
            self.cfg, self.spec = cfg, spec
            self.net = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, spec.n_classes["emotion"]))

        def loss(self, batch):
            logits = self.net(batch["x"].unsqueeze(1))  # (B, 4)
            mask = batch["emotion_mask"]
            return F.cross_entropy(logits[mask], batch["emotion"][mask]), {}

        def predict(self, batch):
            return {"emotion": self.net(batch["x"].unsqueeze(1))}

    registry.FAMILIES["bench_conv"] = registry.Family("bench_conv", BenchConfig, BenchModel, lambda trial: {})
    globals().update(BenchConfig=BenchConfig)


# ---- data -------------------------------------------------------------------------------------------------------

def build_shards(work: Path, scale: str) -> tuple[Path, float]:
    from data_io import synth
    from data_io.ingest import ingest

    t0 = time.perf_counter()
    synth.generate("iemocap", work / "corpus", seed=0, scale=scale)
    ingest("iemocap", work / "corpus", work / "shards", ["spectrogram"], shard_size=256)
    return work / "shards" / "iemocap" / "spectrogram", time.perf_counter() - t0


def search_data(shard_dir: Path, n_folds: int):
    from data_io import folds as folds_mod
    from data_io.shards import open_shards
    from data_io.store import load_store
    from trainables.data import SearchData

    ss = open_shards(shard_dir)
    store = load_store([ss])
    folds = folds_mod.build_folds("loso", ss.metadata())[:n_folds]
    return SearchData(store=store, folds=[f.for_search() for f in folds], targets=("emotion",),
                      classes={"emotion": ["neutral", "happy", "sad", "angry"]}), store


def store_bytes(store) -> dict[str, float]:
    stats = store.row_stats
    stat_bytes = sum(a.nbytes for a in (stats.count, stats.mean, stats.m2, stats.low, stats.high)) if stats else 0
    return {"values": store.values.nbytes / MB, "row_stats": stat_bytes / MB, "meta": store.meta.nbytes / MB}


# ---- memory (run in a child process) ------------------------------------------------------------------------

def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def memory_child(shard_dir: str, path: str, n_folds: int, width: int, batch: int) -> dict:
    """Peak RSS beyond the store of one epoch of a trial (new path) or of the old dense folds."""
    import torch

    torch.set_num_threads(1)
    register_bench_family(width, "crop")
    data, store = search_data(Path(shard_dir), n_folds)
    # Measure from a reset peak: the store and the imports are in the baseline. Memory freed by loading (Arrow's
    # pool, the C heap) is handed back first, or it would be counted as baseline and reused by the trial.
    import ctypes
    import gc

    import pyarrow as pa

    from trainables.loop import run_trial

    gc.collect()
    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kb("VmRSS")
    if path == "new":
        config = {"family": "bench_conv", "width": width, "kind": "crop", "seed": 0, "max_epochs": 1,
                  "patience": 1, "batch_size": batch, "metric": "val_ua_emotion", "mode": "max"}
        run_trial(config, data, lambda m, s: None)
    else:
        old_dense_epoch(data, width, batch)
    peak = _rss_kb("VmHWM")
    return {"beyond_store_mb": (peak - base) / 1024, "store_mb": store.values.nbytes / MB}


def old_dense_epoch(data, width: int, batch: int) -> None:
    """The replaced path: every fold's train and validation rows as normalised dense (n, width, F) arrays, kept for
    the trial, then one epoch of the conv model per fold indexing them."""
    import torch

    from data_io.examples import ExampleSpec, evaluation_index, gather
    from data_io.store import Normalizer
    from trainables.base import DataSpec
    from trainables.registry import get_family

    family = get_family("bench_conv")
    store = data.store
    spec = ExampleSpec.fixed(width, anchor="center")
    identity = Normalizer("none", np.zeros(store.n_bins, np.float32), np.ones(store.n_bins, np.float32))
    held = []
    for fold in data.folds:
        tr, va = store.rows(fold.train_ids), store.rows(fold.val_ids)
        x_train = gather(spec, store, evaluation_index(spec, store, tr), identity)  # the dense fold
        mean, std = x_train.mean((0, 1)), np.maximum(x_train.std((0, 1)), 1e-5)
        x_val = gather(spec, store, evaluation_index(spec, store, va), identity)
        held.append((torch.from_numpy((x_train - mean) / std), torch.from_numpy((x_val - mean) / std)))
        del x_train, x_val
    for x_train, _ in held:
        model = family.model_cls(family.config_cls(width=width), DataSpec((width, store.n_bins), ("emotion",),
                                                                            {"emotion": 4}))
        opt = model.configure_optimizers()
        labels = torch.zeros(len(x_train), dtype=torch.int64)
        for idx in torch.randperm(len(x_train)).split(batch):
            model.training_step({"x": x_train[idx], "emotion": labels[idx],
                                 "emotion_mask": torch.ones(len(idx), dtype=torch.bool)}, opt)


def run_memory(shard_dir: Path, path: str, n_folds: int, width: int, batch: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.data_path import memory_child; "
            f"print(json.dumps(memory_child({str(shard_dir)!r}, {path!r}, {n_folds}, {width}, {batch})))")
    # Arrow's system pool: its default (jemalloc/mimalloc) keeps freed buffers and returns them at random later.
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- throughput --------------------------------------------------------------------------------------------------

def throughput(shard_dir: Path, kind: str, width: int, batch: int, n_batches: int) -> dict:
    """Batches/s building ``kind`` batches of fold 0, a conv step on one, and the dense baseline's index rate."""
    import torch

    from data_io.examples import ExampleSpec, evaluation_index, gather
    from data_io.feed import TrainSet, fit_encoders
    from data_io.store import fit_normalizer
    from trainables.base import DataSpec
    from trainables.registry import get_family

    torch.set_num_threads(1)
    register_bench_family(width, kind)
    data, store = search_data(shard_dir, 1)
    cfg = globals()["BenchConfig"](width=width, kind=kind)
    feed = cfg.feed()
    train = store.rows(data.folds[0].train_ids)
    encoders = data.new_encoders()
    fit_encoders(encoders, store, train)
    norm = fit_normalizer(store, train)
    ts = TrainSet(feed, store, train, encoders, norm, torch.Generator().manual_seed(0))
    order = ts.epoch(batch)
    order = [b for b in order if len(b) == batch][:n_batches]
    t0 = time.perf_counter()
    built = [ts.batch(b) for b in order]
    build_s = (time.perf_counter() - t0) / len(order)

    family = get_family("bench_conv")
    model = family.model_cls(cfg, DataSpec((width, store.n_bins), ("emotion",), {"emotion": 4}))
    opt = model.configure_optimizers()
    tensors = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()} for b in built]
    model.training_step(tensors[0], opt)  # warm-up
    t0 = time.perf_counter()
    for b in tensors:
        model.training_step(b, opt)
    step_s = (time.perf_counter() - t0) / len(tensors)

    spec = ExampleSpec.fixed(width, anchor="center")
    dense = torch.from_numpy(gather(spec, store, evaluation_index(spec, store, train), norm))
    t0 = time.perf_counter()
    for _ in range(len(order)):
        idx = torch.randint(len(dense), (batch,))
        dense[idx].contiguous()
    dense_s = (time.perf_counter() - t0) / len(order)
    return {"examples": len(ts), "build_s": build_s, "step_s": step_s, "dense_s": dense_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small corpus, few batches")
    ap.add_argument("--scale", default="full", choices=("small", "full"))
    ap.add_argument("--crop", type=int, default=128, help="crop width in frames")
    ap.add_argument("--window", type=int, default=256, help="window width in frames (hop = width / 2)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30, help="batches timed per figure")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the corpus and shards in this folder and reuse them on the next run")
    args = ap.parse_args()
    if args.smoke:
        args.scale, args.batches = "small", 5
    from threadpoolctl import threadpool_limits

    with tempfile.TemporaryDirectory(prefix="emotune-datapath-") as tmp, threadpool_limits(limits=1):
        work = args.work or Path(tmp)
        shard_dir, build_s = work / "shards" / "iemocap" / "spectrogram", 0.0
        if not (shard_dir / "_manifest.json").exists():
            shard_dir, build_s = build_shards(work, args.scale)
        _, store = search_data(shard_dir, 5)
        sizes = store_bytes(store)
        n_frames = int(store.shapes[:, 0].sum())
        print(f"corpus: synthetic iemocap, scale {args.scale}: {store.num_rows} utterances, {n_frames / 100:.0f} s "
              f"of audio, spectrogram {store.n_bins} bins (synth + ingest {build_s:.1f} s)")
        print(f"shared store: {sum(sizes.values()):.1f} MiB (values {sizes['values']:.1f}, per-row statistics "
              f"{sizes['row_stats']:.2f}, metadata {sizes['meta']:.2f})")
        del store

        print(f"\npeak memory of one trial beyond the store (crop width {args.crop}, batch {args.batch}, 1 epoch):")
        print(f"{'path':<12}{'1 fold':>10}{'5 folds':>10}{'5 / 1':>8}")
        for path in ("new", "old dense"):
            one = run_memory(shard_dir, path.split()[0], 1, args.crop, args.batch)["beyond_store_mb"]
            five = run_memory(shard_dir, path.split()[0], 5, args.crop, args.batch)["beyond_store_mb"]
            note = "  (target <= 1.2)" if path == "new" else ""
            print(f"{path:<12}{one:>8.1f}Mi{five:>8.1f}Mi{five / max(one, 1e-9):>8.2f}{note}")

        print(f"\nbatch building on one core (batch {args.batch}), next to a conv training step:")
        print(f"{'examples':<26}{'built/s':>9}{'step/s':>9}{'build share':>13}{'old dense/s':>13}")
        for kind, width in (("crop", args.crop), ("windows", args.window)):
            r = throughput(shard_dir, kind, width, args.batch, args.batches)
            share = r["build_s"] / (r["build_s"] + r["step_s"])
            label = f"{kind} {width} ({r['examples']} ex.)"
            print(f"{label:<26}{1 / r['build_s']:>9.0f}{1 / r['step_s']:>9.1f}{share:>12.1%}{1 / r['dense_s']:>13.0f}"
                  f"   (target < 10 %)")


if __name__ == "__main__":
    main()
