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
import time
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import torch

from data_io.feed import (
    EvalSet,
    Feed,
    TrainSet,
    class_names,
    corpus_groups,
    device_stream,
    fit_encoders,
    keep_aux_speakers,
    labelled_only,
)
from data_io.store import FeatureStore, Normalizer, fit_normalizer
from data_io.targets import TargetSpec
from trainables import metrics as M
from trainables.base import DataSpec, SERModel
from trainables.data import SearchData, build_encoders
from trainables.registry import Family, get_family

# Keys of a trial config that drive the loop rather than the model (``input``: which of ``data.inputs`` the trial's
# data come from, chosen by the Ray edge).
LOOP_KEYS = ("family", "seed", "max_epochs", "patience", "early_stopping", "batch_size", "metric", "mode", "input",
             "lr_schedule", "lr_factor", "min_lr")
LOOP_DEFAULTS = {"seed": 0, "max_epochs": 50, "patience": 5, "early_stopping": "patience", "batch_size": 256,
                 "metric": "val_ccc_mean", "mode": "max", "lr_schedule": "none", "lr_factor": 0.5, "min_lr": 1e-5}
EARLY_STOPPING = ("patience", "consecutive_drops")
LR_SCHEDULES = ("none", "halve_on_plateau")

Report = Callable[[dict, dict | None], None]


class TrialDiverged(RuntimeError):
    """A trial's training loss, validation metric or outputs became non-finite or constant: nothing it produced may
    be selected or registered. The message names the epoch, the fold and the quantity."""


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
    if loop["early_stopping"] not in EARLY_STOPPING:
        raise ValueError(f"early_stopping must be one of {list(EARLY_STOPPING)}, got {loop['early_stopping']!r}")
    if loop["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {loop['lr_schedule']!r}")
    factor, min_lr = loop["lr_factor"], loop["min_lr"]
    if not (_is_real(factor) and 0 < factor < 1):
        raise ValueError(f"0 < lr_factor < 1 must hold, got {factor!r}")
    if not (_is_real(min_lr) and min_lr > 0):
        raise ValueError(f"min_lr > 0 must hold, got {min_lr!r}")
    return model_kwargs, loop


def _is_real(value) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same config and seed give the same metrics on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- one fold ------------------------------------------------------------------------------------------------

def data_spec(feed: Feed, store: FeatureStore, encoders: Mapping, targets: tuple[str, ...]) -> DataSpec:
    """Sizes from the data: the example shape, each target's kind and class count (fitted encoders)."""
    kinds = {t: encoders[t].kind for t in targets}
    n_classes = {t: int(encoders[t].n_classes) for t in targets if kinds[t] != "regression"}
    names = {t: c for t, c in class_names({t: encoders[t] for t in targets}).items() if t in n_classes
             and len(c) == n_classes[t]}
    return DataSpec(input_shape=feed.examples.input_shape(store), targets=tuple(targets), n_classes=n_classes,
                    kinds=kinds, classes=names)


def eval_batch_size(spec: DataSpec) -> int:
    """Examples per evaluation batch: about 32 MiB of float32 input, at most 4096 examples."""
    return int(max(1, min(4096, 2**23 // int(np.prod(spec.input_shape)))))


@torch.no_grad()
def predict_set(model: SERModel, evalset: EvalSet, spec: DataSpec, device: torch.device) -> dict[str, np.ndarray]:
    """Model outputs per utterance (eval mode): class/soft logits become posteriors, then examples are averaged."""
    model.eval()
    outs: dict[str, list] = {}
    for batch in device_stream(evalset.batches(eval_batch_size(spec)), device):
        for key, val in model.predict(batch).items():
            if key in spec.kinds and spec.kind(key) != "regression":
                val = torch.softmax(val.float(), dim=-1)
            outs.setdefault(key, []).append(val.float().cpu())
    return evalset.pool({k: torch.cat(v).numpy() for k, v in outs.items()})


def score(outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], spec: DataSpec,
          prefix: str) -> dict[str, float]:
    """Metrics of utterance-level outputs: CCC and Pearson r per regression target, UA/WA/macro-F1 per class or
    soft target (a soft label's class is its argmax); ``<prefix>_ccc_mean`` over the regression targets.

    Targets with no labelled utterance (e.g. speakers unseen in training) get no metric.
    """
    out: dict[str, float] = {}
    cccs = []
    for target, pred in outputs.items():
        if target not in spec.kinds:
            continue  # an auxiliary output (an embedding); families score it in extra_metrics
        mask = labels[f"{target}_mask"]
        if not mask.any():
            continue
        truth, pred = labels[target][mask], pred[mask]
        if spec.kind(target) == "regression":
            c = M.ccc(pred, truth)
            out[f"{prefix}_ccc_{target}"] = c
            out[f"{prefix}_pearson_{target}"] = M.pearson_r(pred, truth)
            cccs.append(c)
        else:
            truth = truth.argmax(axis=-1) if truth.ndim == 2 else truth
            label_pred = pred.argmax(axis=-1)
            out[f"{prefix}_ua_{target}"] = M.unweighted_accuracy(label_pred, truth)
            out[f"{prefix}_wa_{target}"] = M.weighted_accuracy(label_pred, truth)
            out[f"{prefix}_f1_{target}"] = M.macro_f1(label_pred, truth)
    if cccs:
        out[f"{prefix}_ccc_mean"] = float(np.mean(cccs))
    return out


def evaluate(model: SERModel, evalset: EvalSet, spec: DataSpec, device: torch.device, prefix: str) -> dict[str, float]:
    """Score a model on an evaluation set: overall, per corpus (``<metric>.<corpus>``) and their mean
    (``<metric>.corpus_mean``) when the set spans several corpora, plus the family's ``extra_metrics``."""
    outputs = predict_set(model, evalset, spec, device)
    _check_outputs(outputs, spec, prefix)
    meta = evalset.meta

    def metrics(out: Mapping, labels: Mapping, part: pa.Table) -> dict[str, float]:
        found = score(out, labels, spec, prefix)
        found.update({f"{prefix}_{k}": float(v) for k, v in model.extra_metrics(out, labels, part).items()})
        return found

    result = metrics(outputs, evalset.labels, meta)
    groups = corpus_groups(meta)
    if len(groups) > 1:
        per_corpus = {}
        for corpus, pos in groups.items():
            per_corpus[corpus] = metrics({k: v[pos] for k, v in outputs.items()},
                                         {k: v[pos] for k, v in evalset.labels.items()}, meta.take(pos))
        for key in list(result):
            values = [m[key] for m in per_corpus.values() if key in m]
            result.update({f"{key}.{c}": m[key] for c, m in per_corpus.items() if key in m})
            if len(values) == len(per_corpus):
                result[f"{key}.corpus_mean"] = float(np.mean(values))
    return result


def _check_outputs(outputs: Mapping[str, np.ndarray], spec: DataSpec, prefix: str) -> None:
    """Refuse non-finite outputs, and outputs that are the same for every utterance (a dead or diverged model:
    its correlation metrics would read 0.0 and look like a poor but valid model)."""
    for target, values in outputs.items():
        if not np.all(np.isfinite(values)):
            raise TrialDiverged(f"{prefix} outputs for {target!r} hold {int(np.sum(~np.isfinite(values)))} "
                                f"non-finite values: the model diverged (lower the learning rate or check the data)")
        if target in spec.kinds and len(values) > 1 and float(np.ptp(values, axis=0).max()) == 0.0:
            raise TrialDiverged(f"{prefix} outputs for {target!r} are the same for all {len(values)} utterances: "
                                f"the model is dead or diverged (lower the learning rate)")


class FoldRun:
    """Model, optimizers, target encoders, normalisation and data views of one fold."""

    def __init__(self, family: Family, cfg, feed: Feed, data: SearchData, fold_index: int, seed: int,
                 device: torch.device):
        fold = data.folds[fold_index]
        self.name, self.device = fold.name, device
        store = data.store
        # Auxiliary rows train every fold; they are never validated (DESIGN.md, Data).
        train_rows = np.concatenate([store.rows(fold.train_ids), store.auxiliary_rows()])
        # The auxiliary speakers a family keeps (sampling.aux_speakers) before anything is fitted on the rows: the
        # speaker encoder's classes and the normalisation are those of the rows that train.
        train_rows = keep_aux_speakers(feed.sampling, store, train_rows)
        val_rows = labelled_only(store, store.rows(fold.val_ids))
        self.encoders = data.new_encoders()
        fit_encoders(self.encoders, store, train_rows)  # training rows only: validation must not leak into them
        self.normalizer = fit_normalizer(store, train_rows, feed.normalization)
        self.generator = torch.Generator().manual_seed(seed + 1000 * fold_index)
        self.train = TrainSet(feed, store, train_rows, self.encoders, self.normalizer, self.generator)
        self.val = EvalSet(feed, store, val_rows, self.encoders, self.normalizer)
        self.spec = data_spec(feed, store, self.encoders, data.targets)
        torch.manual_seed(seed + 1000 * fold_index)  # different folds start from different weights
        self.model = family.model_cls(cfg, self.spec).to(device)
        self.optimizers = self.model.configure_optimizers()
        # Each parameter group's learning rate as configured: the lr schedule scales these (never compounds them).
        self.base_lrs = {k: [float(g["lr"]) for g in o.param_groups] for k, o in self.optimizers.items()}
        self.data_seconds = 0.0

    def train_epoch(self, epoch: int, batch_size: int) -> float:
        self.model.set_epoch(epoch)
        self.model.train()
        losses = []
        stream = device_stream(self.train.batches(batch_size), self.device)
        while True:
            t0 = time.perf_counter()
            batch = next(stream, None)
            self.data_seconds += time.perf_counter() - t0  # time the step waited for its batch
            if batch is None:
                break
            losses.append(self.model.training_step(batch, self.optimizers)["loss"])
        if not losses:
            raise ValueError(f"fold {self.name!r} has no training batch of at least 2 examples; it needs more "
                             f"training rows (or a larger train.batch_size than 1)")
        return float(np.mean(losses))

    def state(self) -> dict:
        """A snapshot (deep copy): ``state_dict`` tensors are live and the next step would change them."""
        return copy.deepcopy({"name": self.name, "model": self.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "normalization": self.normalizer.kind, "mean": torch.from_numpy(self.normalizer.shift),
                "std": torch.from_numpy(self.normalizer.scale), "spec": _spec_dict(self.spec),
                "encoders": {t: e.state_dict() for t, e in self.encoders.items()},
                "generator": self.generator.get_state(), "epoch": self.model.epoch})

    def load_state(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        self.model.set_epoch(int(state["epoch"]))

    def restore_weights(self, state: Mapping, lr_scale: float) -> None:
        """Go back to a snapshot's model and optimizer state (the lr schedule's best epoch) and train on at
        ``lr_scale`` times the configured learning rates. The data generator and the epoch count run on: the epochs
        after a restore draw new batches."""
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])  # this brings back the snapshot's learning rates
        self.set_lr_scale(lr_scale)

    def set_lr_scale(self, scale: float) -> None:
        """Every parameter group's learning rate to ``scale`` times its configured value."""
        for key, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[key], strict=True):
                group["lr"] = base * scale


def _spec_dict(spec: DataSpec) -> dict:
    return {"input_shape": list(spec.input_shape), "targets": list(spec.targets), "n_classes": dict(spec.n_classes),
            "kinds": dict(spec.kinds), "classes": {t: list(c) for t, c in spec.classes.items()}}


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


@dataclasses.dataclass
class EarlyStopping:
    """When to stop on the validation objective, and its best epoch (the checkpoint kept).

    Rules (``train.early_stopping``):

    * ``patience``: stop after ``patience`` epochs without a better value; an epoch equal to the best counts as one
      of them.
    * ``consecutive_drops``: the multitask-DCGAN paper's rule (arXiv 1705.02394, Section 5): from the best value so
      far (a local maximum), stop after ``patience`` *consecutive* epochs below it; a better value is the new local
      maximum and restarts the count, and so does an equal one (it is not lower), while the best epoch stays the
      first to reach the value. The paper then restores the best epoch's weights: the loop checkpoints only on
      improvement, so the trial's last checkpoint is that epoch.

    Attributes:
        rule: One of :data:`EARLY_STOPPING`.
        patience: Epochs (``patience``) or consecutive lower epochs (``consecutive_drops``) before stopping.
        mode: ``max`` or ``min``.
        best: Best value so far (None before the first epoch).
        best_epoch: 1-based epoch of ``best`` (0 before the first epoch).
        bad_epochs: The count the rule compares with ``patience``.
    """

    rule: str
    patience: int
    mode: str = "max"
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s (1-based) value; True when it is the new best."""
        if _better(value, self.best, self.mode):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        if self.rule == "consecutive_drops" and value == self.best:
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclasses.dataclass
class HalveOnPlateau:
    """``train.lr_schedule: halve_on_plateau``, the semi-supervised AAE paper's schedule (Section 4.3): "If the
    accuracy of the model did not improve on the validation set after 5 epochs, we restored the model to best epoch
    and learning rate was halved. This process continued until the learning rate reached below 0.00001."

    A plateau is what :class:`EarlyStopping` would stop at (``train.patience`` and ``train.early_stopping`` say how
    epochs without gain count). There every learning rate is multiplied by ``factor`` and every fold goes back to its
    best epoch's weights and optimizer state, kept in memory; when the largest learning rate would fall below
    ``min_lr`` the trial stops instead. With lr 1e-4 a trial trains at 1e-4, 5e-5, 2.5e-5 and 1.25e-5, then stops.

    Attributes:
        factor: Multiplier of the learning rates at each plateau (``train.lr_factor``), in (0, 1).
        min_lr: The learning rate below which training stops (``train.min_lr``).
        scale: The current multiplier of the configured learning rates.
        halvings: Plateaus so far that lowered the rate.
    """

    factor: float = 0.5
    min_lr: float = 1e-5
    scale: float = 1.0
    halvings: int = 0

    def at_plateau(self, stopping: EarlyStopping, lr: float) -> bool:
        """Called when ``stopping.stop``: True to train on at the new :attr:`scale` from the best epoch (its count
        of epochs without gain starts again), False to stop.

        Args:
            stopping: The trial's early stopping; its ``bad_epochs`` is reset when training goes on.
            lr: The largest configured learning rate (at scale 1).
        """
        if lr * self.scale * self.factor < self.min_lr:
            return False
        self.scale *= self.factor
        self.halvings += 1
        stopping.bad_epochs = 0
        return True


def run_trial(config: Mapping, data: SearchData, report: Report, resume_state: Mapping | None = None,
              device: str | torch.device = "cpu") -> dict:
    """Train one configuration on every search fold; report mean validation metrics after every epoch.

    Args:
        config: Flat trial config: ``family``, the family's config fields, loop settings (``LOOP_KEYS``).
        data: The search data (train and validation rows only).
        report: ``report(metrics, state)``; ``state`` is given when the objective improved (checkpoint it).
            With ``lr_schedule: halve_on_plateau`` the metrics carry ``lr_scale`` and ``lr_halvings``
            (:class:`HalveOnPlateau`).
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
    feed = family_feed(cfg)
    folds = [FoldRun(family, cfg, feed, data, k, seed, device) for k in range(len(data.folds))]
    metric, mode = loop["metric"], loop["mode"]
    start_epoch = 0
    stopping = EarlyStopping(str(loop["early_stopping"]), int(loop["patience"]), mode)
    schedule = (HalveOnPlateau(float(loop["lr_factor"]), float(loop["min_lr"]))
                if loop["lr_schedule"] == "halve_on_plateau" else None)
    best_folds = None  # with a schedule: the best epoch's fold states, restored at a plateau
    if resume_state is not None:
        for fold, state in zip(folds, resume_state["folds"], strict=True):
            fold.load_state(state)
        start_epoch = int(resume_state["epoch"]) + 1
        stopping.best, stopping.best_epoch = float(resume_state["best"]), int(resume_state["best_epoch"])
        stopping.bad_epochs = int(resume_state["bad_epochs"])
        torch.set_rng_state(resume_state["torch_rng"])
        if schedule is not None:  # a checkpoint is the best epoch's, so it is also the state to restore
            schedule.scale = float(resume_state.get("lr_scale", 1.0))
            schedule.halvings = int(resume_state.get("lr_halvings", 0))
            best_folds = resume_state["folds"]
            for fold in folds:
                fold.set_lr_scale(schedule.scale)

    last: dict = {}
    for epoch in range(start_epoch, int(loop["max_epochs"])):
        train_losses, fold_metrics = [], []
        started = time.perf_counter()
        for fold in folds:
            fold.data_seconds = 0.0
            train_losses.append(fold.train_epoch(epoch, int(loop["batch_size"])))
            if not math.isfinite(train_losses[-1]):
                raise TrialDiverged(f"training loss is {train_losses[-1]} at epoch {epoch + 1} in fold {fold.name!r}: "
                                    f"the model diverged (lower the learning rate or check the data)")
        train_seconds = time.perf_counter() - started
        for fold in folds:
            try:
                fold_metrics.append(evaluate(fold.model, fold.val, fold.spec, device, "val"))
            except TrialDiverged as err:
                raise TrialDiverged(f"epoch {epoch + 1}, fold {fold.name!r}: {err}") from None
        metrics = mean_over_folds(fold_metrics)
        if metric not in metrics:
            raise ValueError(f"search.metric {metric!r} is not produced by this model; it reports {sorted(metrics)}")
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise TrialDiverged(f"epoch {epoch + 1}: validation metrics {bad} are not finite")
        # Share of the training time spent waiting for batches (building them on the CPU, or the prefetch falling
        # behind on a GPU): the data path's cost, next to the step's.
        data_share = sum(f.data_seconds for f in folds) / max(train_seconds, 1e-9)
        metrics.update(epoch=epoch + 1, train_loss=float(np.mean(train_losses)), data_time_share=data_share)
        improved = stopping.update(metrics[metric], epoch + 1)
        stop, restore = stopping.stop, False
        if stop and schedule is not None:  # a plateau: lower the rates and go back to the best epoch, or stop
            restore = schedule.at_plateau(stopping, max(max(lrs) for lrs in folds[0].base_lrs.values()))
            stop = not restore
        metrics.update({f"best_{metric}": stopping.best, "best_epoch": stopping.best_epoch, "early_stopped": stop})
        if schedule is not None:
            metrics.update(lr_scale=schedule.scale, lr_halvings=schedule.halvings)  # what the next epoch trains at
        state = None
        if improved:
            state = {"epoch": epoch, "best": stopping.best, "best_epoch": stopping.best_epoch,
                     "bad_epochs": stopping.bad_epochs,
                     "lr_scale": schedule.scale if schedule else 1.0,
                     "lr_halvings": schedule.halvings if schedule else 0,
                     "torch_rng": torch.get_rng_state(), "folds": [f.state() for f in folds],
                     "config": {k: _plain(v) for k, v in config.items()},
                     "spec": _spec_dict(folds[0].spec), "classes": class_names(folds[0].encoders),
                     "targets": [{"name": t.name, "encoder": t.encoder, "options": _plain(dict(t.options))}
                                 for t in data.target_specs],
                     "emotion_classes": list(data.classes.get("emotion") or []),
                     "emotion_merge": dict(data.emotion_merge),
                     "fold_metrics": [{k: float(v) for k, v in m.items()} for m in fold_metrics]}
        if improved and schedule is not None:
            best_folds = state["folds"]
        report(metrics, state)
        last = metrics
        if restore:
            for fold, snapshot in zip(folds, best_folds, strict=True):
                fold.restore_weights(snapshot, schedule.scale)
        if stop:
            break  # early stopping on validation (the paper's criterion); ASHA may stop us sooner
    return last


def mean_over_folds(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the folds that report it (a corpus may be absent from a fold's rows)."""
    keys = dict.fromkeys(k for m in fold_metrics for k in m)
    return {k: float(np.mean([m[k] for m in fold_metrics if k in m])) for k in keys}


def family_feed(cfg) -> Feed:
    """The family's data needs (``cfg.feed()``); a config without one takes vectors (utterance-level features)."""
    feed = cfg.feed() if hasattr(cfg, "feed") else Feed()
    if not isinstance(feed, Feed):
        raise TypeError(f"{type(cfg).__name__}.feed() must return a data_io.feed.Feed, got {type(feed).__name__}")
    return feed


def _plain(value):
    """Config values as checkpoint-safe primitives (tuples -> lists, mappings -> dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
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


def _spec_from(d: Mapping) -> DataSpec:
    return DataSpec(input_shape=tuple(d["input_shape"]), targets=tuple(d["targets"]), n_classes=dict(d["n_classes"]),
                    kinds=dict(d.get("kinds", {})), classes=dict(d.get("classes", {})))


def model_from_state(state: Mapping, fold_index: int = 0) -> tuple[SERModel, dict]:
    """Rebuild one fold's model (eval mode) and its normalisation from a checkpoint state."""
    family = get_family(state["config"]["family"])
    model_kwargs, _ = split_config(state["config"], family)
    cfg = family.config_cls(**model_kwargs)
    fold = state["folds"][fold_index]
    model = family.model_cls(cfg, _spec_from(fold.get("spec", state["spec"])))
    model.load_state_dict(fold["model"])
    model.set_epoch(int(fold["epoch"]))
    model.eval()
    return model, {"mean": fold["mean"], "std": fold["std"], "normalization": fold.get("normalization", "zscore")}


def state_evalsets(state: Mapping, store: FeatureStore, fold_ids: list[list[str]]) -> list[tuple[SERModel, EvalSet]]:
    """Each fold's model of a checkpoint state (eval mode) and the evaluation set of that fold's given rows.

    Targets are encoded by the encoders the fold trained with (class lists, clusters, speakers: restored from the
    state), and examples are made and pooled per utterance as in validation.
    """
    family = get_family(state["config"]["family"])
    model_kwargs, _ = split_config(state["config"], family)
    feed = family_feed(family.config_cls(**model_kwargs))
    specs = [TargetSpec(t["name"], t["encoder"], dict(t["options"])) for t in state["targets"]]
    out = []
    for k, ids in enumerate(fold_ids):
        model, norm = model_from_state(state, k)
        encoders = build_encoders(specs, store, {"emotion": state.get("emotion_classes") or None},
                                  state.get("emotion_merge"))
        for target, enc in encoders.items():
            enc.load_state_dict(state["folds"][k]["encoders"][target])
        normalizer = Normalizer(norm["normalization"], norm["mean"].numpy(), norm["std"].numpy())
        out.append((model, EvalSet(feed, store, labelled_only(store, store.rows(ids)), encoders, normalizer)))
    return out


def evaluate_state(state: Mapping, store: FeatureStore, fold_ids: list[list[str]], prefix: str = "test"
                   ) -> dict[str, float]:
    """Score a checkpoint state's fold models on the given rows of each fold (mean over folds).

    Used by the driver for test scoring: ``fold_ids[k]`` are fold k's test ids, read from its lockbox once.
    """
    cpu = torch.device("cpu")
    return mean_over_folds([evaluate(model, evalset, model.spec, cpu, prefix)
                            for model, evalset in state_evalsets(state, store, fold_ids)])


def state_predictions(state: Mapping, store: FeatureStore, fold_ids: list[list[str]]
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Utterance-level outputs and encoded labels of a state's fold models on the given rows, all folds stacked
    (for predicted-vs-true plots and confusion matrices).

    A class target whose classes differ between folds has no common label space across them (speaker identities
    when each fold trains on other speakers, as ``speaker_kfold`` does): its codes and outputs are left out.
    """
    outputs: dict[str, list] = {}
    labels: dict[str, list] = {}
    cpu = torch.device("cpu")
    for model, evalset in state_evalsets(state, store, fold_ids):
        for key, value in predict_set(model, evalset, model.spec, cpu).items():
            outputs.setdefault(key, []).append(value)
        for key, value in evalset.labels.items():
            labels.setdefault(key, []).append(np.asarray(value))
    varying = classes_varying_between_folds(state["folds"][:len(fold_ids)])
    return ({k: np.concatenate(v) for k, v in outputs.items() if k not in varying},
            {k: np.concatenate(v) for k, v in labels.items() if k not in varying})


def classes_varying_between_folds(fold_states: list[Mapping]) -> set[str]:
    """The class targets whose class lists differ between a checkpoint's folds (each fold's encoder states)."""
    first = fold_states[0]["encoders"]
    return {t for t, enc in first.items()
            if "classes" in enc and any(f["encoders"][t].get("classes") != enc["classes"] for f in fold_states)}


def config_dict(cfg) -> dict:
    """A family config dataclass as a flat, JSON-able dict (for MLflow params)."""
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}
