"""The sweep driver: search -> select on validation -> repeat with N seeds -> score test once -> table -> register.

``run_sweep`` is what ``emotune sweep CONFIG`` (and ``ray job submit ... -- emotune sweep CONFIG``) runs:

1. Validate everything that can be checked without a cluster: the config, the family, the shards (manifests,
   schema version), the folds of the protocol, the search space (sampled once). A bad config fails here.
2. Start or join Ray; decode the shards once and share the train+validation rows with trials through the object
   store (``tune.with_parameters``). Test rows no fold trains on never leave the driver.
3. Search: Ray Tune + ``OptunaSearch`` (metric/mode given to the searcher itself, notes 1.2) + ASHA, one MLflow
   child run per trial. If the experiment folder exists the sweep resumes (``Tuner.restore``), keeping finished
   trials and their MLflow runs.
4. Select on validation only: each trial's best epoch (not its last), per variant if asked.
5. Repeat each selected config with seeds 0..N-1 (a second, restorable Tune experiment).
6. Open the test lockbox once, score each repeat's best checkpoint on test, log test metrics on the parent run.
7. Table (mean +/- std over seeds, validation and test, per attribute), logged as Markdown and CSV.
8. Log the best repeat (by validation) as an MLflow model, register it, alias ``candidate``.

Progress is kept in ``<storage>/<name>/emotune_sweep.json`` so a killed driver re-run resumes at the right phase
and re-attaches to the same parent run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from cluster import ray_runtime  # noqa: F401  (loopback environment before Ray loads)

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

STATE_FILE = "emotune_sweep.json"
SMOKE_OVERRIDES = {"search.num_samples": 2, "train.max_epochs": 2, "repeats.seeds": 2}


def space_with_constants(trial, family_space, constants: dict, **space_kwargs) -> dict:
    """The family's define-by-run space plus the sweep's constants (family, loop settings, fixed fields).

    Module-level (not a closure) so ``OptunaSearch.save`` pickles it by reference and ``Tuner.restore`` finds it
    (notes, pitfall 3).
    """
    return {**family_space(trial, **space_kwargs), **constants}


@dataclass
class Prepared:
    """Everything checked and built before Ray starts."""

    cfg: object
    family: object
    shard_sets: list
    folds: list
    auxiliary: list  # (ShardSet, targets) per data.auxiliary entry
    manifest_hash: str
    constants: dict
    space_kwargs: dict
    storage: Path
    tracking_uri: str
    experiment: str
    model_name: str
    num_samples: int
    grid: dict | None = None
    points: list = field(default_factory=list)
    fold_summary: list = field(default_factory=list)


def prepare(config_path: Path, overrides: dict | None = None) -> Prepared:
    """Validate the config, shards, folds and space; nothing here starts Ray or touches MLflow.

    Raises:
        ValueError: (``ConfigError``, ``ShardError``, ...) naming the field or file and the fix.
    """
    import optuna

    from data_io import folds as folds_mod
    from searchspace.schema import load_sweep_config
    from trainables.registry import get_family

    config_path = Path(config_path)
    cfg = load_sweep_config(config_path)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    family = get_family(cfg.model.family)
    shard_sets = [_open(d, "data.shards") for d in cfg.resolved_shards(config_path.parent)]
    auxiliary = [(_open(d, f"data.auxiliary[{i}].shards"), tuple(aux.targets))
                 for i, (d, aux) in enumerate(zip(cfg.resolved_auxiliary(config_path.parent), cfg.data.auxiliary,
                                                  strict=True))]
    meta = _concat_meta([ss.metadata() for ss in shard_sets])
    _check_auxiliary(cfg, shard_sets, auxiliary)
    _check_targets(cfg, shard_sets, auxiliary, meta)
    folds = _build_folds(cfg, meta)
    every = shard_sets + [ss for ss, _ in auxiliary]
    manifest_hash = every[0].content_hash if len(every) == 1 else _combined_hash(every)

    grid = None
    fixed = dict(cfg.model.fixed)
    if cfg.search.sampler == "grid":
        if family.grid_space is None:
            raise ValueError(f"search.sampler: grid is not available for family {family.name!r}; use tpe or random")
        fixed = {**family.grid_fixed, **fixed}  # grid search covers categorical knobs; continuous ones are fixed
    space_kwargs = {"variants": tuple(cfg.model.variants), "ranges": dict(cfg.search.ranges),
                    "grids": dict(cfg.search.grids), "per_layer_lambda": cfg.search.per_layer_lambda,
                    "fixed": fixed}
    constants = {"family": family.name, "seed": int(cfg.search.seed), "max_epochs": int(cfg.train.max_epochs),
                 "patience": int(cfg.train.patience), "batch_size": int(cfg.train.batch_size),
                 "metric": cfg.search.metric, "mode": cfg.search.mode}
    # Sample the space once (a throwaway study) so bad ranges fail now, and check the config builds.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from trainables.loop import split_config

    try:
        probe = space_with_constants(study.ask(), family.space, constants, **space_kwargs)
        model_kwargs, _ = split_config(probe, family)
        family.config_cls(**model_kwargs)
    except TypeError as err:  # a value of the wrong type (hidden: -5 where a list is expected) deep in the family
        raise ValueError(f"model.fixed / search.ranges: a value has the wrong type for family {family.name!r} "
                         f"({err}); fixed: {fixed}") from None
    points = []
    for point in cfg.search.points_to_evaluate:
        bad = sorted(set(point) - family.config_fields() - set(family.search_only))
        if bad:
            raise ValueError(f"search.points_to_evaluate: keys {bad} are not {family.name} config fields")
        family.config_cls(**{**model_kwargs, **point})  # e.g. alpha + beta > 1 fails here, not in a trial
        points.append(family.warm_start(point, per_layer_lambda=cfg.search.per_layer_lambda)
                      if family.warm_start else dict(point))

    num_samples = int(cfg.search.num_samples)
    if cfg.search.sampler == "grid":
        options = {k: v for k, v in space_kwargs.items() if k != "ranges"}
        grid = family.grid_space(**options)
        num_samples = int(np.prod([len(v) for v in grid.values()]))  # notes 1.4: num_samples = grid size
    storage = cfg.storage.path
    storage_path = storage if "://" in str(storage) else str(Path(storage).resolve())
    if "://" not in str(storage) and Path(storage_path).exists() and not Path(storage_path).is_dir():
        raise ValueError(f"storage.path {storage_path} is a file, but it must be the folder Ray Tune keeps "
                         f"experiments in; point it at a folder (it is created if missing)")
    from cluster.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else ""
    if scheme not in ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks"):
        raise ValueError(f"tracking.uri {tracking_uri!r} has the scheme {scheme!r}, which MLflow cannot store runs "
                         f"in; use sqlite:///PATH.db, a folder path, or http://HOST:PORT of a tracking server")

    return Prepared(cfg=cfg, family=family, shard_sets=shard_sets, folds=folds, auxiliary=auxiliary,
                    manifest_hash=manifest_hash,
                    constants=constants, space_kwargs=space_kwargs, storage=storage_path,
                    tracking_uri=tracking_uri,
                    experiment=cfg.tracking.experiment or cfg.name,
                    model_name=cfg.registry.model_name or f"emotune-{family.name}", num_samples=num_samples,
                    grid=grid, points=points, fold_summary=folds_mod.fold_summary(folds))


def _open(folder: Path, field: str):
    from data_io import shards

    if not Path(folder).exists():
        raise ValueError(f"{field}: {folder} does not exist; run `emotune ingest ... --out` first or fix the path")
    # Verified by default: every part's sha256 (cached by size, mtime, ctime and inode, so a second sweep over the
    # same shards only stats them) and every label finite, before anything trains on them.
    shard_set = shards.open_shards(Path(folder), verify_checksums=True)
    shard_set.check_finite_metadata()
    return shard_set


def _check_auxiliary(cfg, shard_sets: list, auxiliary: list) -> None:
    """An auxiliary set must hold the labelled sets' feature set and carry a label for every target it lists."""
    feature_set = shard_sets[0].manifest.feature_set
    for i, (ss, targets) in enumerate(auxiliary):
        if ss.manifest.feature_set != feature_set:
            raise ValueError(f"data.auxiliary[{i}].shards: {ss.folder} holds feature set "
                             f"{ss.manifest.feature_set!r} but data.shards hold {feature_set!r}; ingest the "
                             f"auxiliary corpus with --features {feature_set} and point at that folder")
        meta = ss.metadata()
        for target in targets:
            columns = _source_columns(cfg, target)
            empty = [c for c in columns if meta.column(c).null_count == meta.num_rows]
            if empty:
                raise ValueError(f"data.auxiliary[{i}].targets: {target!r} needs {empty} labels, but corpus "
                                 f"{ss.manifest.corpus!r} ({ss.folder}) has none; remove {target!r} from its targets")


def _source_columns(cfg, target: str) -> list[str]:
    """The metadata columns a target's labels come from."""
    from data_io.targets import parse_targets

    (spec,) = [s for s in parse_targets(cfg.data.targets, cfg.data.encoders) if s.name == target]
    return ["arousal", "valence"] if spec.encoder == "kmeans" else [target]


def _check_targets(cfg, shard_sets: list, auxiliary: list, meta) -> None:
    """Build and fit every target encoder once on the labelled rows, so a bad encoder fails before Ray starts.

    The fitted encoders are thrown away: folds fit their own on their training rows.
    """
    from data_io import targets as targets_mod

    specs = targets_mod.parse_targets(cfg.data.targets, cfg.data.encoders)
    scales = {}
    for ss in [*shard_sets, *(a for a, _ in auxiliary)]:
        scales.setdefault(ss.manifest.corpus, tuple(ss.manifest.label_scale) if ss.manifest.label_scale else None)
    encoders = targets_mod.build_encoders(specs, label_scales=scales, emotion_classes=_classes(cfg).get("emotion"),
                                          emotion_merge=dict(cfg.data.emotion_merge), vocabulary_meta=meta)
    for name, enc in encoders.items():
        try:
            enc.fit(meta)
            enc.encode(meta)
        except ValueError as err:
            raise ValueError(f"data.encoders.{name}: {err}") from None


def _build_folds(cfg, meta) -> list:
    """The protocol's folds; with ``data.corpus_protocols`` each corpus's own, combined fold by fold."""
    from data_io import folds as folds_mod

    if not cfg.data.corpus_protocols:
        try:
            return folds_mod.build_folds(cfg.data.protocol, meta, **dict(cfg.data.protocol_options))
        except TypeError as err:  # an option the protocol does not take
            raise ValueError(f"data.protocol_options: {err}") from None
    corpora = sorted(set(meta.column("corpus").to_pylist()))
    unknown = sorted(set(cfg.data.corpus_protocols) - set(corpora))
    if unknown:
        raise ValueError(f"data.corpus_protocols: {unknown} are not corpora of data.shards {corpora}; fix the names")
    protocols = {}
    for corpus in corpora:
        entry = dict(cfg.data.corpus_protocols.get(corpus, {"protocol": cfg.data.protocol,
                                                             **dict(cfg.data.protocol_options)}))
        protocols[corpus] = (entry.pop("protocol"), entry)
    return folds_mod.build_corpus_folds(meta, protocols)


def _concat_meta(tables):
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def _combined_hash(shard_sets) -> str:
    import hashlib

    return hashlib.sha256("".join(sorted(ss.content_hash for ss in shard_sets)).encode()).hexdigest()


def _sampler(cfg):
    import optuna

    seed = int(cfg.search.seed)
    name = cfg.search.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)  # Optuna 5: multivariate + constant liar by default
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=min(5, int(cfg.search.num_samples)))
    raise ValueError(f"search.sampler: unknown sampler {name!r}; valid: tpe, random, grid, cmaes")


# ---- state file --------------------------------------------------------------------------------------------

def _load_state(exp_dir: Path) -> dict:
    path = exp_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(exp_dir: Path, state: dict) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp = exp_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True, default=str))
    os.replace(tmp, exp_dir / STATE_FILE)


# ---- the phases --------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    parent_run_id: str
    experiment_id: str
    selected: dict
    table_markdown: str
    test: dict
    model_version: str | None
    search_trials: int


def run_sweep(config_path: Path, *, smoke: bool = False, overrides: dict | None = None, fresh: bool = False,
              num_cpus: int | None = None) -> SweepResult:
    """Run (or resume) a sweep end to end. See the module docstring for the phases.

    Raises:
        ValueError: A bad config (before anything starts), or another live run of this sweep holds its experiment
            folder (:class:`cluster.lock.SweepLockedError`, naming that run).
    """
    from cluster.lock import lock_experiment

    overrides = {**(SMOKE_OVERRIDES if smoke else {}), **(overrides or {})}
    prep = prepare(config_path, overrides)  # everything that can fail on bad input fails before Ray starts
    _check_local_resources(prep.cfg, num_cpus)
    # The lock comes before the state file, MLflow and Ray: two runs of one sweep would double its trials and runs.
    with lock_experiment(prep.storage, prep.cfg.name) as lock:
        return _run_locked(prep, fresh=fresh, num_cpus=num_cpus, locked=lock.held)


def _run_locked(prep: Prepared, *, fresh: bool, num_cpus: int | None, locked: bool) -> SweepResult:
    """:func:`run_sweep` once the experiment folder is locked (``locked`` False: object storage, no lock)."""
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    from cluster import tracking

    cfg = prep.cfg
    exp_dir = Path(prep.storage) / cfg.name
    if fresh:
        _discard(exp_dir)
        _discard(Path(prep.storage) / f"{cfg.name}-repeats")
    state = _load_state(exp_dir)

    mlflow.set_tracking_uri(prep.tracking_uri)
    client = MlflowClient(prep.tracking_uri)
    experiment_id = tracking.ensure_experiment(client, prep.experiment)
    static_tags = {"family": prep.family.name, "protocol": _protocol_tag(cfg), "data_manifest_hash": prep.manifest_hash,
                   "feature_set": prep.shard_sets[0].manifest.feature_set, "git_commit": tracking.git_commit(),
                   "sweep": cfg.name, "objective": cfg.search.metric}
    parent_id = state.get("parent_run_id")
    if parent_id is None:
        # No state here (a new or deleted folder, or --fresh) but MLflow may hold this sweep's parent still RUNNING.
        orphans = tracking.running_sweep_parents(client, experiment_id, cfg.name)
        folder = _folder_tag(prep.storage, cfg.name)
        parent = client.create_run(experiment_id, run_name=cfg.name,
                                   tags={**static_tags, tracking.ROLE_TAG: "sweep", tracking.FOLDER_TAG: folder})
        parent_id = parent.info.run_id
        _supersede(client, experiment_id, cfg.name, orphans, folder, parent_id, locked=locked, fresh=fresh)
        client.log_batch(parent_id, params=[mlflow.entities.Param(k, tracking._param_value(v))
                                            for k, v in sorted(cfg.to_flat_dict().items())])
        client.log_text(parent_id, json.dumps(prep.fold_summary, indent=1), "folds.json")
        state = {"parent_run_id": parent_id, "phase": "search", "created": time.time()}
        _save_state(exp_dir, state)
    else:
        client.update_run(parent_id, status="RUNNING")

    started = ray_runtime.init_ray(num_cpus=num_cpus)
    try:
        from trainables.data import load_store

        store = load_store(prep.shard_sets, prep.auxiliary)
        data = build_search_data(prep, store)
        resolve = partial(_resolved_params, family=prep.family)

        if state["phase"] == "search":
            results = _run_search(prep, data, exp_dir, experiment_id, parent_id, static_tags, resolve)
            state["selected"] = select(results, cfg.search.metric, cfg.search.mode, cfg.train.select_per_variant)
            state["search_trials"] = len(results)
            state["phase"] = "repeats"
            _save_state(exp_dir, state)
            _log_selection(client, parent_id, state["selected"], cfg.search.metric)
        if state["phase"] == "repeats":
            repeats = _run_repeats(prep, data, state["selected"], experiment_id, parent_id, static_tags, resolve)
            state["repeats"] = repeats
            state["phase"] = "test"
            _save_state(exp_dir, state)
        if state["phase"] == "test":
            state["test"] = score_test_once(prep, store, state["repeats"], client, parent_id)
            state["test_scored_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            client.set_tag(parent_id, "emotune.test_scored_at", state["test_scored_at"])
            state["phase"] = "register"
            _save_state(exp_dir, state)
        from cluster.report import format_table, values_from_repeats

        table_md, table_csv = format_table(values_from_repeats(state["repeats"], state["test"]), cfg.data.targets)
        if state["phase"] == "register":
            client.log_text(parent_id, table_md, "results/table.md")
            client.log_text(parent_id, table_csv, "results/table.csv")
            state["model_version"] = register_best(prep, state["repeats"], state["test"], parent_id)
            state["phase"] = "done"
            _save_state(exp_dir, state)
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    return SweepResult(parent_run_id=parent_id, experiment_id=experiment_id, selected=state["selected"],
                       table_markdown=table_md, test=state["test"], model_version=state.get("model_version"),
                       search_trials=state.get("search_trials", 0))


def _check_local_resources(cfg, num_cpus: int | None) -> None:
    """A trial asking more CPUs or GPUs than a local Ray will have stays PENDING forever: refuse it now.

    Only for a local Ray (no ``RAY_ADDRESS``): a cluster's autoscaler may add nodes, so its requests are its own.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    cpus = num_cpus or os.cpu_count() or 1
    if float(cfg.resources.cpu) > cpus:
        raise ValueError(f"resources.cpu is {cfg.resources.cpu} per trial but the local Ray has {cpus} CPUs, so no "
                         f"trial could ever start; lower resources.cpu or run on a cluster (RAY_ADDRESS)")
    if float(cfg.resources.gpu) > 0:
        import torch

        gpus = torch.cuda.device_count()
        if float(cfg.resources.gpu) > gpus:
            raise ValueError(f"resources.gpu is {cfg.resources.gpu} per trial but this machine has {gpus} GPUs; "
                             f"set resources.gpu: 0 or run on a GPU cluster (RAY_ADDRESS)")


def _discard(folder: Path) -> None:
    """``--fresh``: empty an experiment folder, keeping the lock file this run holds in it."""
    import shutil

    from cluster.lock import LOCK_FILE

    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _folder_tag(storage: str, name: str) -> str:
    """Which experiment folder a parent run belongs to: ``host:path`` (local paths on two hosts are two folders)."""
    import socket

    return f"{storage}/{name}" if "://" in str(storage) else f"{socket.gethostname()}:{Path(storage) / name}"


def _supersede(client, experiment_id: str, name: str, orphans: list, folder: str, parent_id: str, *,
               locked: bool, fresh: bool) -> None:
    """Mark this sweep's parent runs left RUNNING by a vanished (or ``--fresh``) experiment folder FAILED.

    Only a parent of the folder this run has locked is certainly dead; one from another folder (or any, when the
    storage cannot be locked) may belong to a live run elsewhere, so it is only reported.
    """
    import sys

    from cluster import tracking

    for run in orphans:
        old_id, theirs = run.info.run_id, run.data.tags.get(tracking.FOLDER_TAG)
        if not locked or (theirs is not None and theirs != folder):
            print(f"emotune: warning: MLflow parent run {old_id} of sweep {name!r} is RUNNING, started from "
                  f"{theirs or 'an unknown folder'}; it may be a live run this one cannot lock, so it is left alone "
                  f"(if it is dead: MlflowClient().set_terminated({old_id!r}, 'FAILED')); new parent run {parent_id}",
                  file=sys.stderr, flush=True)
            continue
        why = "experiment folder discarded by --fresh" if fresh else "experiment folder missing"
        children = tracking.abandon_run(client, experiment_id, old_id, f"{why}; superseded by {parent_id}")
        print(f"emotune: warning: MLflow parent run {old_id} of sweep {name!r} was still RUNNING although its "
              f"experiment folder has no sweep state ({why}); marked it and {children} running child run(s) FAILED "
              f"(tag {tracking.ABANDONED_TAG}); new parent run {parent_id}", file=sys.stderr, flush=True)


def build_search_data(prep: Prepared, store):
    """What trials receive: the rows some fold trains or validates on, every auxiliary row, the folds' search views."""
    from trainables.data import SearchData

    cfg = prep.cfg
    search_ids = {u for f in prep.folds for u in (*f.train_ids, *f.val_ids)}
    aux_ids = store.meta.column("utt_id").take(store.auxiliary_rows()).to_pylist()
    return SearchData(store=store.subset(sorted(search_ids.union(aux_ids))),
                      folds=[f.for_search() for f in prep.folds], targets=tuple(cfg.data.targets),
                      classes=_classes(cfg), emotion_merge=dict(cfg.data.emotion_merge),
                      encoders=dict(cfg.data.encoders))


def _protocol_tag(cfg) -> str:
    if not cfg.data.corpus_protocols:
        return cfg.data.protocol
    return "+".join(f"{c}:{e.get('protocol')}" for c, e in sorted(cfg.data.corpus_protocols.items()))


def _classes(cfg) -> dict:
    classes = {}
    if "emotion" in cfg.data.targets:
        classes["emotion"] = list(cfg.data.emotion_classes)
    return classes


def _resolved_params(config: dict, family) -> dict:
    """The params a child run logs: the resolved family config (defaults filled) and the loop settings."""
    from trainables.loop import LOOP_KEYS, config_dict, split_config

    model_kwargs, loop = split_config(config, family)
    params = config_dict(family.config_cls(**model_kwargs))
    params.update({k: loop[k] for k in LOOP_KEYS if k in loop})
    params.update({k: config[k] for k in family.search_only if k in config})
    return params


def _tuner_common(prep: Prepared, data, callbacks, name: str, max_concurrent: int):
    from ray import tune

    from trainables.tune_entry import tune_trainable

    cfg = prep.cfg
    resources = {"cpu": float(cfg.resources.cpu), "gpu": float(cfg.resources.gpu)}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, data=data), resources)
    run_config = tune.RunConfig(
        name=name, storage_path=prep.storage, callbacks=callbacks, verbose=1,
        failure_config=tune.FailureConfig(max_failures=int(cfg.resources.max_failures)),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    return trainable, run_config


def _run_search(prep: Prepared, data, exp_dir: Path, experiment_id: str, parent_id: str, tags: dict, resolve):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from cluster.tracking import TrialRunLogger

    cfg = prep.cfg
    callback = TrialRunLogger(prep.tracking_uri, experiment_id, parent_id, "search", tags, resolve)
    trainable, run_config = _tuner_common(prep, data, [callback], cfg.name, cfg.search.max_concurrent)
    if tune.Tuner.can_restore(str(exp_dir)):
        # Finished trials are kept, in-flight ones resume from their checkpoints; the searcher state (Optuna study
        # and sampler) is restored from the experiment folder with the space function pickled by reference.
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        import optuna

        space = partial(space_with_constants, family_space=prep.family.space, constants=prep.constants,
                        **prep.space_kwargs)
        sampler = (optuna.samplers.GridSampler(prep.grid, seed=int(cfg.search.seed)) if prep.grid
                   else _sampler(cfg))
        searcher = OptunaSearch(space, metric=cfg.search.metric, mode=cfg.search.mode, sampler=sampler,
                                points_to_evaluate=prep.points or None)
        if cfg.search.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=int(cfg.train.max_epochs),
                                      grace_period=min(int(cfg.search.grace_period), int(cfg.train.max_epochs)),
                                      reduction_factor=float(cfg.search.reduction_factor))
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric=cfg.search.metric,
                                        mode=cfg.search.mode, num_samples=prep.num_samples,
                                        max_concurrent_trials=int(cfg.search.max_concurrent)),
            run_config=run_config,
        )
    grid = tuner.fit()
    return _collect(grid, cfg.search.metric, cfg.search.mode)


def _collect(result_grid, metric: str, mode: str) -> list[dict]:
    """One record per trial: its config, its best epoch's metrics (not its last) and its best checkpoint path."""
    out = []
    for result in result_grid:
        if result.error is not None or result.metrics_dataframe is None or metric not in result.metrics_dataframe:
            continue
        df = result.metrics_dataframe.dropna(subset=[metric])
        if df.empty:
            continue
        best_row = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
        ckpt = result.get_best_checkpoint(metric=metric, mode=mode) if result.best_checkpoints else None
        config = result.config.get("repeat", result.config)
        out.append({
            "trial_id": result.metrics.get("trial_id"), "config": _jsonable(config),
            "variant": str(config.get("variant", "")),
            "best": {k: float(v) for k, v in best_row.items() if k.startswith("val_") and _finite(v)},
            "best_epoch": int(best_row.get("epoch", 0)),
            "epochs_run": int(df["epoch"].max()) if "epoch" in df else len(df),
            "checkpoint": ckpt.path if ckpt is not None else None,
        })
    return out


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _check_finite_weights(state: dict, trial_id) -> None:
    """Refuse to register a checkpoint holding a NaN or infinite tensor: a diverged model never is registered."""
    import torch

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not torch.isfinite(obj).all():
                raise ValueError(f"the best repeat (trial {trial_id}) has non-finite values in {path} of its "
                                 f"checkpoint; nothing was registered. Lower the learning rate or check the data")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")

    walk(state, "")


def _jsonable(config: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}


def select(results: list[dict], metric: str, mode: str, per_variant: bool) -> dict:
    """Pick the best trial on validation (best epoch of each trial), overall or per variant.

    Returns:
        ``{variant_or_"all": {"trial_id", "config", "val_score", "best_epoch"}}``.

    Raises:
        ValueError: No trial reported a finite value of the metric (all failed or diverged): a user error (exit 2)
            in the config or the data, never a model to register.
    """
    if not any(_finite(r["best"].get(metric)) for r in results):
        raise ValueError(f"no search trial reported a finite {metric!r} ({len(results)} of them reported anything); "
                         f"every trial failed or diverged (see the trial errors above: a learning rate or noise too "
                         f"large, NaN in the data, or a metric the family does not produce). Nothing was registered")
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["variant"] if per_variant else "all", []).append(r)
    chosen = {}
    for key, rs in sorted(groups.items()):
        rs = [r for r in rs if _finite(r["best"].get(metric))]
        if not rs:
            continue
        best = (max if mode == "max" else min)(rs, key=lambda r: r["best"][metric])
        chosen[key] = {"trial_id": best["trial_id"], "config": best["config"], "val_score": best["best"][metric],
                       "best_epoch": best["best_epoch"], "variant": best["variant"]}
    return chosen


def _log_selection(client, parent_id: str, selected: dict, metric: str) -> None:
    for key, sel in selected.items():
        client.set_tag(parent_id, f"emotune.selected.{key}.trial_id", sel["trial_id"])
        client.log_metric(parent_id, f"selected_{key}_{metric}", sel["val_score"])
    client.log_text(parent_id, json.dumps(selected, indent=1, default=str), "selection.json")


def _run_repeats(prep: Prepared, data, selected: dict, experiment_id: str, parent_id: str, tags: dict,
                 resolve) -> list[dict]:
    from ray import tune

    from cluster.tracking import TrialRunLogger

    cfg = prep.cfg
    name = f"{cfg.name}-repeats"
    callback = TrialRunLogger(prep.tracking_uri, experiment_id, parent_id, "repeat", tags, resolve)
    trainable, run_config = _tuner_common(prep, data, [callback], name, cfg.search.max_concurrent)
    exp_dir = Path(prep.storage) / name
    if tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        configs = [{**sel["config"], "seed": seed}
                   for _, sel in sorted(selected.items()) for seed in range(int(cfg.repeats.seeds))]
        tuner = tune.Tuner(
            trainable, param_space={"repeat": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(metric=cfg.search.metric, mode=cfg.search.mode,
                                        max_concurrent_trials=int(cfg.search.max_concurrent)),
            run_config=run_config,
        )
    return _collect(tuner.fit(), cfg.search.metric, cfg.search.mode)


def score_test_once(prep: Prepared, store, repeats: list[dict], client, parent_id: str) -> dict:
    """Open each fold's test lockbox once and score every repeat's best checkpoint; log on the parent run only.

    Returns:
        ``{trial_id: {test_metric: value}}``.
    """
    from trainables.loop import evaluate_state
    from trainables.tune_entry import load_state

    test_ids = [list(f.test.open("test scoring after selection")) for f in prep.folds]
    scores = {}
    for rep in repeats:
        if rep["checkpoint"] is None:
            continue
        state = load_state(rep["checkpoint"])
        scores[rep["trial_id"]] = evaluate_state(state, store, test_ids, "test")
    # Test metrics go to the parent run only: per variant, one point per seed (step = seed), next to the same
    # repeat's validation metrics at its best epoch (what `emotune report` tabulates).
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for rep in repeats:
        for k, v in {**rep["best"], **scores.get(rep["trial_id"], {})}.items():
            batch.append(Metric(f"{rep['variant'] or 'model'}.{k}", v, now, int(rep["config"].get("seed", 0))))
    for i in range(0, len(batch), 900):
        client.log_batch(parent_id, metrics=batch[i:i + 900])
    client.log_text(parent_id, json.dumps({"accesses": [f.test.accesses for f in prep.folds]}, default=str),
                    "test_lockbox_accesses.json")
    return scores


def register_best(prep: Prepared, repeats: list[dict], test: dict, parent_id: str) -> str | None:
    """Log the repeat with the best validation score as an MLflow model, register it, alias it ``candidate``."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from trainables.loop import Standardized, model_from_state
    from trainables.tune_entry import load_state

    cfg = prep.cfg
    metric, mode = cfg.search.metric, cfg.search.mode
    scored = [r for r in repeats if r["checkpoint"] and _finite(r["best"].get(metric))]
    if not scored:
        return None
    best = (max if mode == "max" else min)(scored, key=lambda r: r["best"][metric])
    state = load_state(best["checkpoint"])
    _check_finite_weights(state, best["trial_id"])
    # The registered model is fold 0's; for cross-validation protocols that is the first fold's model.
    model, norm = model_from_state(state, 0)
    export = Standardized(model, norm["mean"], norm["std"]).eval()
    example = torch.randn((4, *state["spec"]["input_shape"])) * norm["std"] + norm["mean"]
    client = MlflowClient(prep.tracking_uri)
    with mlflow.start_run(run_id=parent_id):
        info = mlflow.pytorch.log_model(export, name="model", input_example=example.numpy(),
                                        registered_model_name=prep.model_name)
    version = str(info.registered_model_version)
    tags = {"val_metric": metric, "val_mode": mode, "val_score": repr(best["best"][metric]),
            "data_manifest_hash": prep.manifest_hash, "sweep": cfg.name, "trial_id": best["trial_id"],
            "variant": best["variant"], "parent_run_id": parent_id,
            "outputs": ",".join(state["spec"]["targets"])}
    for k, v in tags.items():
        client.set_model_version_tag(prep.model_name, version, k, v)
    client.set_registered_model_alias(prep.model_name, cfg.registry.alias, version)
    return version
