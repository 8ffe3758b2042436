"""The one training loop every family shares (STYLE.md 3, 13): folds, epochs, evaluation, early stopping, state.

``run_trial`` trains one configuration on every fold of the protocol in lock-step: each epoch trains every fold's
model once, evaluates each on its validation rows, and reports the mean over folds, so a scheduler (ASHA) can stop
the trial early on the mean validation objective. It never names a family: the registry gives the config class
and model class, and the model's ``training_step``/``predict`` do the rest. It never imports Ray either: the
caller passes ``report(metrics, state_or_None)``, which the Ray edge (``trainables/tune_entry.py``) turns into
``tune.report`` with a checkpoint whenever the objective improved.

State (what a checkpoint holds) is plain tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from data_io import datasets
from trainables import metrics as M
from trainables.base import REGRESSION_TARGETS, DataSpec, SERModel
from trainables.data import FeatureStore, SearchData
from trainables.registry import Family, get_family

# Keys of a trial config that drive the loop rather than the model.
LOOP_KEYS = ("family", "seed", "max_epochs", "patience", "batch_size", "metric", "mode")
LOOP_DEFAULTS = {"seed": 0, "max_epochs": 50, "patience": 5, "batch_size": 256, "metric": "val_ccc_mean",
                 "mode": "max"}

Report = Callable[[dict, dict | None], None]


def split_config(config: Mapping, family: Family) -> tuple[dict, dict]:
    """Split a flat trial config into (model config kwargs, loop settings).

    Raises:
        ValueError: A key that is neither a loop key, a config field nor a search-only parameter of the family.
    """
    fields = family.config_fields()
    model_kwargs, loop = {}, dict(LOOP_DEFAULTS)
    unknown = []
    for key, value in config.items():
        if key in LOOP_KEYS:
            loop[key] = value
        elif key in fields:
            model_kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key not in family.search_only:
            unknown.append(key)
    if unknown:
        raise ValueError(f"trial config keys {sorted(unknown)} are not fields of {family.config_cls.__name__} "
                         f"{sorted(fields)} nor loop settings {list(LOOP_KEYS)}")
    if loop["mode"] not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {loop['mode']!r}")
    return model_kwargs, loop


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same config and seed give the same metrics on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- data for one fold ---------------------------------------------------------------------------------------

@dataclass
class Split:
    """Tensors of one part of a fold: features ``x`` and encoded targets/masks (base.py batch layout)."""

    x: torch.Tensor
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.x[idx], "utt_index": idx, **{k: v[idx] for k, v in self.labels.items()}}


def encode_labels(store: FeatureStore, rows: np.ndarray, targets: tuple[str, ...], classes: Mapping,
                  merge: Mapping) -> dict[str, np.ndarray]:
    """Targets and masks of ``rows``, each corpus's attributes scaled from its own scale to [-1, 1]."""
    return datasets.encode_targets(store.meta.take(rows), targets, store.label_scales,
                                   classes=dict(classes) or None, merge=dict(merge) or None)


def _to_split(x: np.ndarray, labels: dict[str, np.ndarray], mean: np.ndarray, std: np.ndarray,
              device: torch.device) -> Split:
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32, copy=False)).to(device)
    ys = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in labels.items()}
    return Split(xs, ys)


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over training rows (and frames), std floored so silent bins stay finite."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64).astype(np.float32)
    std = np.maximum(x.std(axis=axes, dtype=np.float64), 1e-5).astype(np.float32)
    return mean, std


def data_spec(data: SearchData, x_example: np.ndarray) -> DataSpec:
    n_classes = {t: len(data.classes[t]) for t in data.targets if t not in REGRESSION_TARGETS}
    return DataSpec(input_shape=tuple(x_example.shape[1:]), targets=tuple(data.targets), n_classes=n_classes)


# ---- evaluation -----------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_split(model: SERModel, split: Split, batch_size: int) -> dict[str, np.ndarray]:
    """Model outputs over a whole split (eval mode), as numpy arrays in row order."""
    model.eval()
    outs: dict[str, list] = {}
    for idx in torch.arange(len(split), device=split.x.device).split(batch_size):
        for key, val in model.predict(split.batch(idx)).items():
            outs.setdefault(key, []).append(val.float().cpu())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def score(preds: Mapping[str, np.ndarray], labels: Mapping[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Metrics of predictions against labels: CCC and Pearson r per attribute, UA/WA/macro-F1 per class target.

    Also ``<prefix>_ccc_mean``, the mean CCC over the attributes the model predicts (the MTL objective).
    """
    out: dict[str, float] = {}
    cccs = []
    for target, pred in preds.items():
        mask = labels[f"{target}_mask"].cpu().numpy().astype(bool)
        truth = labels[target].cpu().numpy()[mask]
        pred = pred[mask]
        if target in REGRESSION_TARGETS:
            c = M.ccc(pred, truth)
            out[f"{prefix}_ccc_{target}"] = c
            out[f"{prefix}_pearson_{target}"] = M.pearson_r(pred, truth)
            cccs.append(c)
        else:
            label_pred = pred.argmax(axis=-1)
            out[f"{prefix}_ua_{target}"] = M.unweighted_accuracy(label_pred, truth)
            out[f"{prefix}_wa_{target}"] = M.weighted_accuracy(label_pred, truth)
            out[f"{prefix}_f1_{target}"] = M.macro_f1(label_pred, truth)
    if cccs:
        out[f"{prefix}_ccc_mean"] = float(np.mean(cccs))
    return out


# ---- one fold's model --------------------------------------------------------------------------------------

class FoldRun:
    """Model, optimizers, normalisation and data of one fold."""

    def __init__(self, family: Family, cfg, data: SearchData, fold_index: int, seed: int, device: torch.device,
                 frames: int | None):
        fold = data.folds[fold_index]
        self.name = fold.name
        store = data.store
        train_rows, val_rows = store.rows(fold.train_ids), store.rows(fold.val_ids)
        x_train = store.feature_matrix(train_rows, frames)
        x_val = store.feature_matrix(val_rows, frames)
        self.mean, self.std = feature_stats(x_train)  # training rows only: validation must not leak into it
        self.train = _to_split(x_train, encode_labels(store, train_rows, data.targets, data.classes,
                                                      data.emotion_merge), self.mean, self.std, device)
        self.val = _to_split(x_val, encode_labels(store, val_rows, data.targets, data.classes, data.emotion_merge),
                             self.mean, self.std, device)
        self.spec = data_spec(data, x_train)
        torch.manual_seed(seed + 1000 * fold_index)  # different folds start from different weights
        self.model = family.model_cls(cfg, self.spec).to(device)
        self.optimizers = self.model.configure_optimizers()
        self.generator = torch.Generator().manual_seed(seed + 1000 * fold_index)

    def train_epoch(self, epoch: int, batch_size: int) -> float:
        self.model.set_epoch(epoch)
        self.model.train()
        losses = []
        order = torch.randperm(len(self.train), generator=self.generator).to(self.train.x.device)
        for idx in order.split(batch_size):
            if len(idx) < 2:  # batch norm cannot train on one row
                continue
            logs = self.model.training_step(self.train.batch(idx), self.optimizers)
            losses.append(logs["loss"])
        return float(np.mean(losses)) if losses else math.nan

    def state(self) -> dict:
        """A snapshot (deep copy): ``state_dict`` tensors are live and the next step would change them."""
        return copy.deepcopy({"name": self.name, "model": self.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std),
                "generator": self.generator.get_state(), "epoch": self.model.epoch})

    def load_state(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        self.model.set_epoch(int(state["epoch"]))


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def run_trial(config: Mapping, data: SearchData, report: Report, resume_state: Mapping | None = None,
              device: str | torch.device = "cpu") -> dict:
    """Train one configuration on every search fold; report mean validation metrics after every epoch.

    Args:
        config: Flat trial config: ``family``, the family's config fields, loop settings (``LOOP_KEYS``).
        data: The search data (train and validation rows only).
        report: ``report(metrics, state)``; ``state`` is given when the objective improved (checkpoint it).
        resume_state: A state from an earlier checkpoint of this trial, to continue after a failure.
        device: Torch device.

    Returns:
        The last reported metrics.

    Raises:
        ValueError: A bad config (unknown key, invalid value) or a metric the model does not produce.
    """
    family = get_family(config["family"])
    model_kwargs, loop = split_config(config, family)
    cfg = family.config_cls(**model_kwargs)  # fails here, at construction, on a bad value
    device = torch.device(device)
    seed = int(loop["seed"])
    seed_everything(seed)
    frames = getattr(cfg, "frames", None)
    folds = [FoldRun(family, cfg, data, k, seed, device, frames) for k in range(len(data.folds))]
    metric, mode = loop["metric"], loop["mode"]
    start_epoch, best, best_epoch, bad_epochs = 0, None, 0, 0
    if resume_state is not None:
        for fold, state in zip(folds, resume_state["folds"], strict=True):
            fold.load_state(state)
        start_epoch = int(resume_state["epoch"]) + 1
        best, best_epoch = float(resume_state["best"]), int(resume_state["best_epoch"])
        bad_epochs = int(resume_state["bad_epochs"])
        torch.set_rng_state(resume_state["torch_rng"])

    last: dict = {}
    for epoch in range(start_epoch, int(loop["max_epochs"])):
        train_losses, fold_metrics = [], []
        for fold in folds:
            train_losses.append(fold.train_epoch(epoch, int(loop["batch_size"])))
            fold_metrics.append(score(predict_split(fold.model, fold.val, 4096), fold.val.labels, "val"))
        metrics = {k: float(np.mean([m[k] for m in fold_metrics])) for k in fold_metrics[0]}
        if metric not in metrics:
            raise ValueError(f"search.metric {metric!r} is not produced by this model; it reports {sorted(metrics)}")
        metrics.update(epoch=epoch + 1, train_loss=float(np.mean(train_losses)))
        improved = _better(metrics[metric], best, mode)
        if improved:
            best, best_epoch, bad_epochs = metrics[metric], epoch + 1, 0
        else:
            bad_epochs += 1
        metrics.update({f"best_{metric}": best, "best_epoch": best_epoch})
        state = None
        if improved:
            state = {"epoch": epoch, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                     "torch_rng": torch.get_rng_state(), "folds": [f.state() for f in folds],
                     "config": {k: _plain(v) for k, v in config.items()},
                     "spec": {"input_shape": list(folds[0].spec.input_shape), "targets": list(data.targets),
                              "n_classes": dict(folds[0].spec.n_classes)},
                     "classes": {k: list(v) for k, v in data.classes.items()},
                     "fold_metrics": [{k: float(v) for k, v in m.items()} for m in fold_metrics]}
        report(metrics, state)
        last = metrics
        if bad_epochs >= int(loop["patience"]):
            break  # early stopping on validation (the paper's criterion); ASHA may stop us sooner
    return last


def _plain(value):
    """Config values as checkpoint-safe primitives (tuples -> lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ---- scoring a saved state (the driver's test scoring and model export) -------------------------------------

class Standardized(torch.nn.Module):
    """A fold's model with its training-fold normalisation baked in: raw features in, predictions out."""

    def __init__(self, model: SERModel, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def model_from_state(state: Mapping, fold_index: int = 0) -> tuple[SERModel, dict]:
    """Rebuild one fold's model (eval mode) and its normalisation from a checkpoint state."""
    family = get_family(state["config"]["family"])
    model_kwargs, _ = split_config(state["config"], family)
    cfg = family.config_cls(**model_kwargs)
    spec_d = state["spec"]
    spec = DataSpec(input_shape=tuple(spec_d["input_shape"]), targets=tuple(spec_d["targets"]),
                    n_classes=dict(spec_d["n_classes"]))
    fold = state["folds"][fold_index]
    model = family.model_cls(cfg, spec)
    model.load_state_dict(fold["model"])
    model.set_epoch(int(fold["epoch"]))
    model.eval()
    return model, {"mean": fold["mean"], "std": fold["std"]}


def evaluate_state(state: Mapping, store: FeatureStore, fold_ids: list[list[str]], targets: tuple[str, ...],
                   merge: Mapping, prefix: str) -> dict[str, float]:
    """Score a checkpoint state's fold models on the given rows of each fold (mean over folds).

    Used by the driver for test scoring: ``fold_ids[k]`` are fold k's test ids, read from its lockbox once.
    Class targets are encoded with the class lists the models were trained with (saved in the state).
    """
    classes = state.get("classes", {})
    family = get_family(state["config"]["family"])
    model_kwargs, loop = split_config(state["config"], family)
    frames = getattr(family.config_cls(**model_kwargs), "frames", None)
    per_fold = []
    for k, ids in enumerate(fold_ids):
        model, norm = model_from_state(state, k)
        rows = store.rows(ids)
        x = store.feature_matrix(rows, frames)
        split = _to_split(x, encode_labels(store, rows, targets, classes, merge), norm["mean"].numpy(),
                          norm["std"].numpy(), torch.device("cpu"))
        per_fold.append(score(predict_split(model, split, 4096), split.labels, prefix))
    return {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}


def config_dict(cfg) -> dict:
    """A family config dataclass as a flat, JSON-able dict (for MLflow params)."""
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}
