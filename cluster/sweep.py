"""The sweep driver: search -> select on validation -> repeat with N seeds -> score test once -> table -> register.

``run_sweep`` is what ``emotune sweep CONFIG`` (and ``ray job submit ... -- emotune sweep CONFIG``) runs:

1. Validate everything that can be checked without a cluster: the config, the family, the shards (manifests,
   schema version), the folds of the protocol, the search space (sampled once). A bad config fails here.
2. Start or join Ray; decode the shards once and share the train+validation rows with trials through the object
   store (``tune.with_parameters``). Test rows no fold trains on never leave the driver.
   Only the driver reads shards (a local path or a URI pyarrow reads: ``s3://``, ``gs://``, ``file://``). The
   store is ``ray.put`` once per trial phase (search, repeats); each trial ``ray.get``s it, which on another node
   pulls one copy into that node's object store, shared read-only (zero-copy) by every trial placed there: one
   transfer and one copy per node, never one per trial (again only if Ray evicts that copy under memory pressure).
3. Search: Ray Tune + ``OptunaSearch`` (metric/mode given to the searcher itself, notes 1.2) + ASHA, one MLflow
   child run per trial. If the experiment folder exists the sweep resumes (``Tuner.restore``), keeping finished
   trials and their MLflow runs.
4. Select on validation only: each trial's best epoch (not its last), per variant if asked.
5. Repeat each selected config with seeds 0..N-1 (a second, restorable Tune experiment). The selected search trial
   is the repeat of its own seed when it ran to its own end (``repeats.reuse_search``): it is not trained twice.
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
# Whether a finished trial's worker process runs the next trial (Tune's reset_config starts the trainable function
# again in the same actor): no new process, imports and first-use set-up per trial (1.4 s per trial instead of 5.8 s,
# benchmarks/README.md). Metrics are the same (tests/cluster/test_actor_reuse.py): every piece of a trial's state
# lives in that call of tune_trainable. Off for now: a reused actor starts the next trial at once, so a driver killed
# within Tune's ~10 s between experiment snapshots more often leaves MLflow runs of trials the restored experiment
# does not know (it samples new ones), and test_killed_sweep_resumes_without_duplicates then finds 8 runs for 6
# trials. Turning it on needs a snapshot whenever a trial starts, or the restore adopting those runs (issue 14).
REUSE_ACTORS = False
SMOKE_OVERRIDES = {"search.num_samples": 2, "train.max_epochs": 2, "repeats.seeds": 2}


def space_with_constants(trial, family_space, constants: dict, choices: dict | None = None, **space_kwargs) -> dict:
    """The family's define-by-run space plus the sweep's constants (family, loop settings, fixed fields) and the
    driver's own choices: ``input`` (the feature set, when ``data.inputs`` names several) and searched loop
    settings (``search.grids.batch_size``); a choice of one value is a constant.

    Module-level (not a closure) so ``OptunaSearch.save`` pickles it by reference and ``Tuner.restore`` finds it
    (notes, pitfall 3).
    """
    out = {name: values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))
           for name, values in (choices or {}).items()}
    return {**out, **family_space(trial, **space_kwargs), **constants}


def arm_label(config: dict, arm_params: tuple[str, ...] = ()) -> str:
    """What selection, repeats and tables group trials by: the variant, its input when inputs are searched, and the
    family's arm params (``Family.arm_params``: a true flag adds its name, another value ``<name><value>``), e.g.
    ``s_a_c-mfcc``, ``mtl-half``; '-' keeps it a valid MLflow key and file name."""
    parts = [str(config.get("variant", ""))]
    if config.get("input"):
        parts.append(str(config["input"]))
    for name in arm_params:
        value = config.get(name)
        if value is True:
            parts.append(name)
        elif value not in (None, False):
            parts.append(f"{name}{value}")
    return "-".join(parts)


@dataclass
class Prepared:
    """Everything checked and built before Ray starts."""

    cfg: object
    family: object
    shard_sets: list  # the labelled shard sets (the first input's, with data.inputs)
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
    config_path: Path | None = None
    inputs: dict = field(default_factory=dict)  # data.inputs: name -> its shard sets; empty without inputs
    choices: dict = field(default_factory=dict)  # the driver's searched choices: input, batch_size -> values

    def input_sets(self) -> dict:
        """``{input name: shard sets}``; ``{"": shard_sets}`` without ``data.inputs``."""
        return self.inputs or {"": self.shard_sets}

    def sets_of(self, config: dict) -> list:
        """The labelled shard sets a trial config trains on."""
        return self.input_sets()[config.get("input") or ""]


def prepare(config_path: Path, overrides: dict | None = None) -> Prepared:
    """Validate the config, shards, folds and space; nothing here starts Ray or touches MLflow.

    Raises:
        ValueError: (``ConfigError``, ``ShardError``, ...) naming the field or file and the fix.
    """
    import optuna

    from data_io import folds as folds_mod
    from searchspace.schema import LOOP_GRIDS, load_sweep_config
    from trainables.registry import get_family

    config_path = Path(config_path)
    cfg = load_sweep_config(config_path)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    family = get_family(cfg.model.family)
    unfed = [v for v in cfg.model.variants if v in family.needs_auxiliary]
    if unfed and not cfg.data.auxiliary:
        raise ValueError(f"data.auxiliary is empty, but the {family.name} variants {unfed} learn from unlabeled "
                         f"rows: add an unlabeled shard set of the same feature set (data.auxiliary: [FOLDER], "
                         f"e.g. made by `emotune ingest --corpus ami`), or drop them from model.variants")
    inputs = {name: [_open(d, f"data.inputs.{name}") for d in dirs]
              for name, dirs in cfg.resolved_inputs(config_path.parent).items()}
    shard_sets = next(iter(inputs.values())) if inputs else [_open(d, "data.shards")
                                                             for d in cfg.resolved_shards(config_path.parent)]
    auxiliary = [(_open(d, f"data.auxiliary[{i}].shards"), tuple(aux.targets))
                 for i, (d, aux) in enumerate(zip(cfg.resolved_auxiliary(config_path.parent), cfg.data.auxiliary,
                                                  strict=True))]
    meta = _concat_meta([ss.metadata() for ss in shard_sets])
    _check_inputs(inputs, meta)
    meta = filter_rows(meta, cfg.data.include, cfg.data.exclude)
    by_input = inputs or {"": shard_sets}
    for sets in by_input.values():
        _check_auxiliary(cfg, sets, auxiliary)
    _check_targets(cfg, shard_sets, auxiliary, meta)
    folds = _build_folds(cfg, meta)
    every = [ss for sets in by_input.values() for ss in sets] + [ss for ss, _ in auxiliary]
    manifest_hash = every[0].content_hash if len(every) == 1 else _combined_hash(every)

    grid = None
    fixed = dict(cfg.model.fixed)
    if cfg.search.sampler == "grid":
        if family.grid_space is None:
            raise ValueError(f"search.sampler: grid is not available for family {family.name!r}; use tpe or random")
        fixed = {**family.grid_fixed, **fixed}  # grid search covers categorical knobs; continuous ones are fixed
    # Loop settings searched through search.grids (batch_size) are the driver's choices, not the family's knobs.
    loop_grids = {k: list(v) for k, v in cfg.search.grids.items() if k in LOOP_GRIDS}
    space_kwargs = {"variants": tuple(cfg.model.variants), "ranges": dict(cfg.search.ranges),
                    "grids": {k: v for k, v in cfg.search.grids.items() if k not in LOOP_GRIDS},
                    "per_layer_lambda": cfg.search.per_layer_lambda, "fixed": fixed}
    constants = {"family": family.name, "seed": int(cfg.search.seed), "max_epochs": int(cfg.train.max_epochs),
                 "patience": int(cfg.train.patience), "early_stopping": cfg.train.early_stopping,
                 "lr_schedule": cfg.train.lr_schedule, "lr_factor": cfg.train.lr_factor, "min_lr": cfg.train.min_lr,
                 "batch_size": int(cfg.train.batch_size), "metric": cfg.search.metric, "mode": cfg.search.mode}
    for name in loop_grids:
        del constants[name]
    choices = {**({"input": list(inputs)} if inputs else {}), **loop_grids}
    # Sample the space once (a throwaway study) so bad ranges fail now, and check the config builds.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from trainables.loop import split_config

    try:
        probe = space_with_constants(study.ask(), family.space, constants, choices, **space_kwargs)
        model_kwargs, _ = split_config(probe, family)
        family.config_cls(**model_kwargs)
    except TypeError as err:  # a value of the wrong type (hidden: -5 where a list is expected) deep in the family
        raise ValueError(f"model.fixed / search.ranges: a value has the wrong type for family {family.name!r} "
                         f"({err}); fixed: {fixed}") from None
    points = []
    for point in cfg.search.points_to_evaluate:
        bad = sorted(set(point) - family.config_fields() - set(family.search_only) - set(choices))
        if bad:
            raise ValueError(f"search.points_to_evaluate: keys {bad} are not {family.name} config fields")
        for name in sorted(set(point) & set(choices)):
            if point[name] not in choices[name]:
                where = "data.inputs" if name == "input" else f"search.grids.{name}"
                raise ValueError(f"search.points_to_evaluate: {name} {point[name]!r} is not in {where} "
                                 f"{list(choices[name])}")
        family.config_cls(**{k: v for k, v in {**model_kwargs, **point}.items() if k not in choices})
        points.append(family.warm_start(point, per_layer_lambda=cfg.search.per_layer_lambda)
                      if family.warm_start else dict(point))

    num_samples = int(cfg.search.num_samples)
    if cfg.search.sampler == "grid":
        options = {k: v for k, v in space_kwargs.items() if k != "ranges"}
        grid = family.grid_space(**options)
        grid.update({name: values for name, values in choices.items() if len(values) > 1})
        num_samples = int(np.prod([len(v) for v in grid.values()]))  # notes 1.4: num_samples = grid size
    storage = cfg.storage.path
    storage_path = storage if "://" in str(storage) else str(Path(storage).resolve())
    if "://" not in str(storage) and Path(storage_path).exists() and not Path(storage_path).is_dir():
        raise ValueError(f"storage.path {storage_path} is a file, but it must be the folder Ray Tune keeps "
                         f"experiments in; point it at a folder (it is created if missing)")
    from cluster.tracking import catchup_seconds, resolve_tracking_uri

    catchup_seconds()  # a bad $EMOTUNE_MLFLOW_CATCHUP_S fails now, not when the search ends
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
                    grid=grid, points=points, fold_summary=folds_mod.fold_summary(folds), config_path=config_path,
                    inputs=inputs, choices=choices)


def _open(folder: Path | str, field: str):
    from data_io import shards

    remote = shards.is_uri(folder)  # s3://, gs://, file://...: read through pyarrow.fs, by this driver only
    if not remote and not Path(folder).exists():
        raise ValueError(f"{field}: {folder} does not exist; run `emotune ingest ... --out` first or fix the path")
    # Verified by default: every part's sha256 (cached by size, mtime, ctime and inode, so a second sweep over the
    # same shards only stats them) and every label finite, before anything trains on them.
    try:
        shard_set = shards.open_shards(folder if remote else Path(folder), verify_checksums=True)
    except shards.ShardError as err:
        if not remote:
            raise
        raise shards.ShardError(f"{field}: {err}") from None
    shard_set.check_finite_metadata()
    return shard_set


def _check_inputs(inputs: dict, meta) -> None:
    """Every input must hold the same utterances (one corpus, several feature sets), so folds are the same."""
    if len(inputs) < 2:
        return
    first_name = next(iter(inputs))
    ids = set(meta.column("utt_id").to_pylist())
    for name, sets in list(inputs.items())[1:]:
        theirs = set(_concat_meta([ss.metadata() for ss in sets]).column("utt_id").to_pylist())
        if theirs != ids:
            only_first, only_theirs = sorted(ids - theirs), sorted(theirs - ids)
            raise ValueError(f"data.inputs.{name}: its shards hold other utterances than data.inputs.{first_name} "
                             f"({len(only_first)} only in {first_name}, e.g. {only_first[:3]}; {len(only_theirs)} only "
                             f"in {name}, e.g. {only_theirs[:3]}); inputs must be feature sets of the same corpus "
                             f"rows: ingest both from the same corpus folder")


def filter_rows(meta, include: dict, exclude: dict):
    """The labelled rows a sweep uses: those whose metadata column matches every ``include`` regex and no
    ``exclude`` regex (``re.search``; null values never match), e.g. ``include: {utt_id: _impro}`` keeps
    IEMOCAP's improvised dialogs. Rows filtered out are in no fold: never trained, validated or tested.

    Raises:
        ValueError: An unknown column, or no row left.
    """
    import re

    import pyarrow as pa

    if not include and not exclude:
        return meta
    keep = np.ones(meta.num_rows, dtype=bool)
    for kind, rules in (("include", include), ("exclude", exclude)):
        for column, pattern in rules.items():
            if column not in meta.column_names:
                raise ValueError(f"data.{kind}.{column}: no such metadata column; use one of {meta.column_names}")
            rx = re.compile(pattern)
            hit = np.array([v is not None and rx.search(str(v)) is not None for v in meta.column(column).to_pylist()])
            keep &= hit if kind == "include" else ~hit
    if not keep.any():
        raise ValueError(f"data.include {include} / data.exclude {exclude} leave no row of the {meta.num_rows} "
                         f"labelled utterances; loosen the patterns")
    return meta.filter(pa.array(keep))


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
    runs_url: str = ""
    ui_hint: str = ""


def run_sweep(config_path: Path, *, smoke: bool = False, overrides: dict | None = None, fresh: bool = False,
              num_cpus: int | None = None, verbose: bool = False) -> SweepResult:
    """Run (or resume) a sweep end to end. See the module docstring for the phases.

    Raises:
        ValueError: A bad config (before anything starts), or another live run of this sweep holds its experiment
            folder (:class:`cluster.lock.SweepLockedError`, naming that run).
    """
    from cluster import console
    from cluster.lock import lock_experiment

    console.configure(verbose)
    overrides = {**(SMOKE_OVERRIDES if smoke else {}), **(overrides or {})}
    prep = prepare(config_path, overrides)  # everything that can fail on bad input fails before Ray starts
    _check_local_resources(prep.cfg, num_cpus)
    _check_tracking_and_storage(prep)
    # mlflow.set_tracking_uri (model logging needs it) also exports MLFLOW_TRACKING_URI; put back what the caller
    # had, so a later sweep in this process without tracking.uri logs where its own default says, not here.
    caller_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        # The lock comes before the state file, MLflow and Ray: two runs of one sweep would double its trials.
        with lock_experiment(prep.storage, prep.cfg.name) as lock:
            return _run_locked(prep, fresh=fresh, num_cpus=num_cpus, locked=lock.held, verbose=verbose)
    finally:
        import mlflow

        mlflow.set_tracking_uri(caller_uri)


@dataclass
class Session:
    """What every phase of one driver run logs through: the MLflow client, experiment and parent run."""

    client: object
    experiment_id: str
    parent_id: str
    tags: dict  # static tags of every child run
    resolve: object  # config -> the params a child run logs
    datasets: list  # MLflow DatasetInputs of the shard sets
    verbose: bool = False


def _run_locked(prep: Prepared, *, fresh: bool, num_cpus: int | None, locked: bool,
                verbose: bool = False) -> SweepResult:
    """:func:`run_sweep` once the experiment folder is locked (``locked`` False: object storage, no lock)."""
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    from cluster import console, mlflow_ui, tracking

    cfg = prep.cfg
    exp_dir = Path(prep.storage) / cfg.name
    if fresh:
        _discard(exp_dir)
        _discard(Path(prep.storage) / f"{cfg.name}-repeats")
    state = _load_state(exp_dir)

    mlflow.set_tracking_uri(prep.tracking_uri)
    client = MlflowClient(prep.tracking_uri)
    experiment_id = tracking.ensure_experiment(client, prep.experiment)
    tracking.warn_local_artifacts(client, experiment_id, prep.tracking_uri)
    # The documented kind of a model-training experiment; MLflow 3.17's own UI decides its view from the link's
    # workflowType (mlflow_ui.runs_url), so the printed link is what opens the runs table there.
    mlflow_ui.mark_training_experiment(client, experiment_id)
    static_tags = {"family": prep.family.name, "protocol": _protocol_tag(cfg), "data_manifest_hash": prep.manifest_hash,
                   "feature_set": ",".join(sets[0].manifest.feature_set for sets in prep.input_sets().values()),
                   "git_commit": tracking.git_commit(),
                   "sweep": cfg.name, "objective": cfg.search.metric,
                   **tracking.standard_tags(f"emotune sweep {_shown_path(prep.config_path)}")}
    datasets = (tracking.dataset_inputs([ss for sets in prep.input_sets().values() for ss in sets], "training")
                + tracking.dataset_inputs([ss for ss, _ in prep.auxiliary], "auxiliary"))
    parent_id = state.get("parent_run_id")
    if parent_id is None:
        # No state here (a new or deleted folder, or --fresh) but MLflow may hold this sweep's parent still RUNNING.
        orphans = tracking.running_sweep_parents(client, experiment_id, cfg.name)
        folder = _folder_tag(prep.storage, cfg.name)
        parent = client.create_run(experiment_id, run_name=cfg.name,
                                   tags={**static_tags, tracking.ROLE_TAG: "sweep", tracking.FOLDER_TAG: folder})
        parent_id = parent.info.run_id
        _supersede(client, experiment_id, cfg.name, orphans, folder, parent_id, locked=locked, fresh=fresh)
        client.log_batch(parent_id, params=tracking.loggable_params(cfg.to_flat_dict()))
        client.log_inputs(parent_id, datasets=datasets)
        client.log_text(parent_id, json.dumps(prep.fold_summary, indent=1), "folds.json")
        state = {"parent_run_id": parent_id, "phase": "search", "created": time.time()}
        _save_state(exp_dir, state)
    else:
        client.update_run(parent_id, status="RUNNING")
    session = Session(client, experiment_id, parent_id, static_tags, partial(_resolved_params, family=prep.family),
                      datasets, verbose)
    print(f"emotune: sweep {cfg.name!r} ({prep.family.name}, {len(prep.folds)} fold(s), protocol "
          f"{_protocol_tag(cfg)})\n{mlflow_ui.ui_hint(prep.tracking_uri, experiment_id)}", flush=True)

    started = ray_runtime.init_ray(num_cpus=num_cpus, log_level=console.ray_log_level(verbose))
    try:
        from trainables.data import load_store

        # One store per input (feature set); a trial reads the one its config's ``input`` names.
        stores = {name: load_store(sets, prep.auxiliary) for name, sets in prep.input_sets().items()}
        datas = {name: build_search_data(prep, store) for name, store in stores.items()}
        data = datas if prep.inputs else datas[""]

        if state["phase"] == "search":
            console.phase("search", f"{prep.num_samples} trials, {cfg.search.max_concurrent} at a time "
                                    f"({cfg.search.sampler}, scheduler {cfg.search.scheduler})")
            results = _run_search(prep, data, exp_dir, session)
            state["selected"] = select(results, cfg.search.metric, cfg.search.mode, cfg.train.select_per_variant)
            state["search_trials"] = len(results)
            # Logged before the phase moves on, so a driver killed in between logs them again (same paths and tags).
            _log_selection(session, state["selected"], cfg.search.metric)
            _log_search_plots(prep, exp_dir, session)
            state["phase"] = "repeats"
            _save_state(exp_dir, state)
        if state["phase"] == "repeats":
            n = len(state["selected"]) * int(cfg.repeats.seeds)
            reused, _ = repeat_plan(state["selected"], int(cfg.repeats.seeds), cfg.repeats.reuse_search)
            console.phase("repeats", f"{len(state['selected'])} selected config(s) x {cfg.repeats.seeds} seeds = "
                                     f"{n} trials" + (f", {len(reused)} of them the selected search trials "
                                                      f"(reuse_search)" if reused else ""))
            repeats = _run_repeats(prep, data, state["selected"], session)
            _log_validation_plots(prep, stores, repeats, session)
            state["repeats"] = repeats
            state["phase"] = "test"
            _save_state(exp_dir, state)
        if state["phase"] == "test":
            console.phase("test", "scoring each repeat's best checkpoint on the test rows, once")
            state["test"] = score_test_once(prep, stores, state["repeats"], session)
            state["test_scored_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            client.set_tag(parent_id, "emotune.test_scored_at", state["test_scored_at"])
            state["phase"] = "register"
            _save_state(exp_dir, state)
        from cluster.report import format_table, paper_tables, values_from_repeats

        values = values_from_repeats(state["repeats"], state["test"])
        table_md, table_csv = format_table(values, cfg.data.targets)
        own_tables = paper_tables(prep.family.name, values)
        if state["phase"] == "register":
            console.phase("register", f"the best repeat on {cfg.search.metric} -> {prep.model_name}")
            client.log_text(parent_id, table_md, "results/table.md")
            client.log_text(parent_id, table_csv, "results/table.csv")
            if own_tables:
                client.log_text(parent_id, own_tables, "results/paper_tables.md")
            state["model_version"] = register_best(prep, stores, state["repeats"], session)
            state["phase"] = "done"
            _save_state(exp_dir, state)
        client.set_terminated(parent_id, "FINISHED")
    except BaseException as err:
        if not isinstance(err, tracking.TrackingUnavailableError):  # the server is down: the parent stays RUNNING
            client.set_terminated(parent_id, "FAILED")             # and the re-run that resumes re-attaches to it
        raise
    finally:
        if started:
            ray.shutdown()
    return SweepResult(parent_run_id=parent_id, experiment_id=experiment_id, selected=state["selected"],
                       table_markdown=table_md + ("\n" + own_tables if own_tables else ""), test=state["test"],
                       model_version=state.get("model_version"),
                       search_trials=state.get("search_trials", 0),
                       runs_url=mlflow_ui.runs_url(prep.tracking_uri, experiment_id),
                       ui_hint=mlflow_ui.ui_hint(prep.tracking_uri, experiment_id))


def _shown_path(path: Path | None) -> str:
    """A config path as the user would type it: relative to the working folder when inside it."""
    if path is None:
        return "?"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_tracking_and_storage(prep: Prepared) -> None:
    """Refuse, before the lock, MLflow and Ray, two setups that would fail later and less clearly: an http(s)
    tracking server that does not answer, and a node-local ``storage.path`` on a Ray cluster of several nodes
    (Ray Tune's own check fails only once a trial runs on another node). See :mod:`cluster.preflight`.

    Raises:
        ValueError: Naming the tracking URI or ``storage.path``, and the fix.
    """
    from cluster import preflight

    preflight.require_tracking_server(prep.tracking_uri)
    preflight.require_shared_storage(str(prep.storage), declared=prep.cfg.storage.shared)


def _check_local_resources(cfg, num_cpus: int | None) -> None:
    """A trial asking more CPUs or GPUs than a local Ray will have stays PENDING forever: refuse it now.

    Only for a local Ray (no ``RAY_ADDRESS``, no Ray this process already joined): a cluster's GPUs are its own, and
    its autoscaler may add nodes (``emotune sweep --check`` compares a trial with the cluster's nodes).
    """
    from cluster.preflight import joins_cluster

    if joins_cluster():
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


def _store_for(stores: dict, config: dict):
    """The decoded store a config trained on: ``stores`` maps each input to its store (``""`` without inputs)."""
    return stores[config.get("input") or ""]


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
    # The corpora without an entry of their own follow data.protocol: "loso+callcenter:random_kfold".
    own = [f"{c}:{e.get('protocol')}" for c, e in sorted(cfg.data.corpus_protocols.items())]
    return "+".join([cfg.data.protocol, *own])


def _classes(cfg) -> dict:
    classes = {}
    if "emotion" in cfg.data.targets:
        classes["emotion"] = list(cfg.data.emotion_classes)
    return classes


def _resolved_params(config: dict, family) -> dict:
    """The params a child run logs: the resolved family config (defaults filled) and the loop settings."""
    from trainables.loop import LOOP_KEYS, config_dict, split_config

    model_kwargs, loop = split_config(config, family)
    cfg = family.config_cls(**model_kwargs)
    unused = cfg.unused_fields() if hasattr(cfg, "unused_fields") else frozenset()
    params = {k: v for k, v in config_dict(cfg).items() if k not in unused}
    params.update({k: loop[k] for k in LOOP_KEYS if k in loop})
    params.update({k: config[k] for k in family.search_only if k in config})
    return params


def _tuner_common(prep: Prepared, data, callbacks, name: str, verbose: bool):
    from ray import tune

    from cluster import console
    from trainables.tune_entry import tune_trainable

    cfg = prep.cfg
    resources = {"cpu": float(cfg.resources.cpu), "gpu": float(cfg.resources.gpu)}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, data=data), resources)
    run_config = tune.RunConfig(
        name=name, storage_path=prep.storage, callbacks=callbacks, verbose=console.ray_verbosity(verbose),
        failure_config=tune.FailureConfig(max_failures=int(cfg.resources.max_failures)),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    return trainable, run_config


def _logger(prep: Prepared, session: Session, role: str):
    from cluster.tracking import TrialRunLogger

    cfg = prep.cfg
    return TrialRunLogger(prep.tracking_uri, session.experiment_id, session.parent_id, role, session.tags,
                          session.resolve, metric=cfg.search.metric, mode=cfg.search.mode,
                          max_epochs=int(cfg.train.max_epochs),
                          scheduler=cfg.search.scheduler if role == "search" else "none", datasets=session.datasets)


def _finished_children(session: Session, role: str) -> int:
    from cluster import tracking

    runs = tracking.child_runs(session.client, session.experiment_id, session.parent_id, role)
    return sum(r.info.status in ("FINISHED", "FAILED") for r in runs)


STUDY_FILE = "optuna_study.db"


def study_storage(prep: Prepared) -> str | None:
    """Where the search's Optuna study is written when the search ends: SQLite beside the experiment
    (``<storage>/<name>/optuna_study.db``; ``optuna-dashboard sqlite:///...`` opens it), or None with an
    object-store storage path.

    During the search the study lives in memory inside Tune's searcher, pickled with each experiment snapshot: a
    database updated ahead of the snapshot would disagree with it after a killed driver resumes (Optuna refuses
    reports to a trial it already finished), so the database is rebuilt from the searcher's state instead.
    """
    if "://" in str(prep.storage):
        return None
    return f"sqlite:///{Path(prep.storage) / prep.cfg.name / STUDY_FILE}"


def _run_search(prep: Prepared, data, exp_dir: Path, session: Session):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from cluster import console

    cfg = prep.cfg
    logger = _logger(prep, session, "search")
    trainable, run_config = _tuner_common(prep, data, [logger], cfg.name, session.verbose)
    if tune.Tuner.can_restore(str(exp_dir)):
        # Finished trials are kept, in-flight ones resume from their checkpoints; the searcher state (Optuna study
        # and sampler) is restored from the experiment folder with the space function pickled by reference.
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        import optuna

        space = partial(space_with_constants, family_space=prep.family.space, constants=prep.constants,
                        choices=prep.choices, **prep.space_kwargs)
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
                                        max_concurrent_trials=int(cfg.search.max_concurrent),
                                        reuse_actors=REUSE_ACTORS),
            run_config=run_config,
        )
    with console.Progress("search", prep.num_samples, cfg.search.metric, done=_finished_children(session, "search")):
        grid = tuner.fit()
        logger.catch_up()  # MLflow writes queued while the server was unreachable (also a restored callback's)
    return _collect(grid, cfg.search.metric, cfg.search.mode, prep.family.arm_params)


def _collect(result_grid, metric: str, mode: str, arm_params: tuple[str, ...] = ()) -> list[dict]:
    """One record per trial: its config, its best epoch's metrics (not its last), its best checkpoint path and its
    validation curve."""
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
        epochs = [int(e) for e in df["epoch"]] if "epoch" in df else list(range(1, len(df) + 1))
        out.append({
            "trial_id": result.metrics.get("trial_id"), "config": _jsonable(config),
            "variant": arm_label(config, arm_params),
            "best": {k: float(v) for k, v in best_row.items() if k.startswith("val_") and _finite(v)},
            "best_epoch": int(best_row.get("epoch", 0)),
            "epochs_run": int(df["epoch"].max()) if "epoch" in df else len(df),
            "checkpoint": ckpt.path if ckpt is not None else None,
            "curve": {"epoch": epochs, metric: [float(v) for v in df[metric]],
                      **({"train_loss": [float(v) for v in df["train_loss"]]} if "train_loss" in df else {})},
            "ran_to_end": _ran_to_end(df, config),
        })
    return out


def _ran_to_end(df, config: dict) -> bool:
    """Whether a trial stopped by itself (every epoch, or the loop's early stopping), not cut by the scheduler:
    then it is exactly what a repeat of its config and seed would train."""
    last = df.iloc[-1]
    stopped_itself = "early_stopped" in df and bool(last["early_stopped"])
    return stopped_itself or int(last.get("epoch", 0)) >= int(config.get("max_epochs", 0) or 0) > 0


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
        ``{variant_or_"all": {"trial_id", "config", "val_score", "best_epoch", "variant", "record"}}``, ``record``
        the trial's own record (what :func:`repeat_plan` reuses).

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
                       "best_epoch": best["best_epoch"], "variant": best["variant"], "record": best}
    return chosen


def _log_selection(session: Session, selected: dict, metric: str) -> None:
    """Selection on the parent run: the chosen trial per variant, by Tune trial id and by MLflow run id."""
    from cluster import tracking

    client, parent_id = session.client, session.parent_id
    for key, sel in selected.items():
        client.set_tag(parent_id, f"emotune.selected.{key}.trial_id", sel["trial_id"])
        run_id = tracking.find_trial_run(client, session.experiment_id, parent_id, sel["trial_id"])
        if run_id:
            sel["run_id"] = run_id
            client.set_tag(parent_id, f"emotune.selected.{key}.run_id", run_id)
        client.log_metric(parent_id, f"selected_{key}_{metric}", sel["val_score"])
    lean = {key: {k: v for k, v in sel.items() if k != "record"} for key, sel in selected.items()}
    client.log_text(parent_id, json.dumps(lean, indent=1, default=str), "selection.json")


def _run_repeats(prep: Prepared, data, selected: dict, session: Session) -> list[dict]:
    from ray import tune

    from cluster import console, tracking

    cfg = prep.cfg
    name = f"{cfg.name}-repeats"
    logger = _logger(prep, session, "repeat")
    trainable, run_config = _tuner_common(prep, data, [logger], name, session.verbose)
    exp_dir = Path(prep.storage) / name
    reused, configs = repeat_plan(selected, int(cfg.repeats.seeds), cfg.repeats.reuse_search)
    for rep in reused:
        if rep.get("run_id"):
            session.client.set_tag(rep["run_id"], REUSED_TAG, str(rep["config"].get("seed", 0)))
    if not configs:
        return reused
    if tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"repeat": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(metric=cfg.search.metric, mode=cfg.search.mode,
                                        max_concurrent_trials=int(cfg.search.max_concurrent),
                                        reuse_actors=REUSE_ACTORS),
            run_config=run_config,
        )
    with console.Progress("repeats", len(configs), cfg.search.metric, done=_finished_children(session, "repeat")):
        grid = tuner.fit()
        logger.catch_up()
        repeats = _collect(grid, cfg.search.metric, cfg.search.mode, prep.family.arm_params)
    for rep in repeats:
        rep["run_id"] = tracking.find_trial_run(session.client, session.experiment_id, session.parent_id,
                                                rep["trial_id"])
    return reused + repeats


REUSED_TAG = "emotune.reused_as_repeat_seed"  # on a search trial's run that also is a repeat (its seed)


def repeat_plan(selected: dict, seeds: int, reuse_search: bool) -> tuple[list[dict], list[dict]]:
    """The repeats of each selected config, seeds 0..seeds-1: ``(reused, to_train)``.

    A selected search trial that ran to its own end (``ran_to_end``) with a seed in that range already is that
    seed's repeat (same config, same seed, same epochs): with ``reuse_search`` its record is reused (its run, best
    checkpoint and curve) instead of training it a second time. ``to_train`` are the other configs, seed set.
    """
    reused, to_train = [], []
    for _, sel in sorted(selected.items()):
        record = sel.get("record") if reuse_search else None
        search_seed = int(sel["config"].get("seed", 0))
        for seed in range(seeds):
            if record is not None and record.get("ran_to_end") and seed == search_seed:
                reused.append({**record, "run_id": sel.get("run_id")})
            else:
                to_train.append({**sel["config"], "seed": seed})
    return reused, to_train


def seed_summary(repeats: list[dict], test: dict) -> tuple[dict[str, float], list[dict]]:
    """The parent run's summary of the repeats: ``<variant>.<metric>.mean`` and ``.std`` (over seeds, ddof 1; 0 for
    one seed) of every validation metric (at each repeat's best epoch) and test metric, and one row per repeat
    (variant, seed, trial and run id, every metric) for ``results/per_seed.csv``."""
    rows, values = [], {}
    for rep in sorted(repeats, key=lambda r: (r["variant"], int(r["config"].get("seed", 0)))):
        variant = rep["variant"] or "model"
        metrics = {**rep["best"], **test.get(rep["trial_id"], {})}
        rows.append({"variant": variant, "seed": int(rep["config"].get("seed", 0)), "trial_id": rep["trial_id"],
                     "run_id": rep.get("run_id") or "", **metrics})
        for k, v in metrics.items():
            values.setdefault(f"{variant}.{k}", []).append(float(v))
    from cluster.report import mean_std

    summary = {}
    for key, xs in values.items():
        summary[f"{key}.mean"], summary[f"{key}.std"] = mean_std(xs)
    return summary, rows


def per_seed_csv(rows: list[dict]) -> str:
    """Per-seed values as a numeric CSV: id columns, then one column per metric (validation first, then test)."""
    import csv
    import io

    ids = ["variant", "seed", "trial_id", "run_id"]
    metrics = sorted({k for r in rows for k in r if k not in ids}, key=lambda k: (not k.startswith("val_"), k))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ids + metrics)
    for r in rows:
        writer.writerow([r[k] for k in ids] + [repr(float(r[k])) if k in r else "" for k in metrics])
    return buf.getvalue()


def score_test_once(prep: Prepared, stores: dict, repeats: list[dict], session: Session) -> dict:
    """Open each fold's test lockbox once and score every repeat's best checkpoint; log on the parent run only.

    The parent gets ``<variant>.<metric>.mean``/``.std`` over seeds for validation and test metrics, the per-seed
    values as ``results/per_seed.csv``, and the test predicted-vs-true plots and confusion matrices of each
    variant's best repeat (by validation).

    Returns:
        ``{trial_id: {test_metric: value}}``.
    """
    from mlflow.entities import Metric

    from cluster.report import BEST_CONFUSION
    from trainables.loop import evaluate_state, state_predictions
    from trainables.tune_entry import load_state

    client, parent_id = session.client, session.parent_id
    test_ids = [list(f.test.open("test scoring after selection")) for f in prep.folds]
    scores, plotted = {}, {}
    best_per_variant = _best_per_variant(repeats, prep.cfg.search.metric, prep.cfg.search.mode)
    for rep in repeats:
        if rep["checkpoint"] is None:
            continue
        state = load_state(rep["checkpoint"])
        rep_store = _store_for(stores, rep["config"])
        scores[rep["trial_id"]] = evaluate_state(state, rep_store, test_ids, "test")
        if best_per_variant.get(rep["variant"]) is rep:
            plotted[rep["variant"] or "model"] = (state, state_predictions(state, rep_store, test_ids))
    summary, rows = seed_summary(repeats, scores)
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in sorted(summary.items())]
    for i in range(0, len(batch), 900):
        client.log_batch(parent_id, metrics=batch[i:i + 900])
    client.log_text(parent_id, per_seed_csv(rows), "results/per_seed.csv")
    client.log_text(parent_id, json.dumps({"accesses": [f.test.accesses for f in prep.folds]}, default=str),
                    "test_lockbox_accesses.json")
    metric, mode = prep.cfg.search.metric, prep.cfg.search.mode
    best_arm = (max if mode == "max" else min)(best_per_variant, key=lambda v: best_per_variant[v]["best"][metric],
                                               default=None)
    for variant, (state, (outputs, labels)) in plotted.items():
        tables = _log_prediction_plots(client, parent_id, state, outputs, labels, f"plots/test/{variant}", "test")
        if variant == (best_arm or "model") and tables:
            # The paper-style "confusion matrix of the best model": the arm that wins on validation, on test.
            text = "".join(f"Test confusion matrix of {target}, best model `{variant}` (selected on validation "
                           f"{metric}; rows: true class, columns: predicted)\n\n{table}\n"
                           for target, table in tables.items())
            client.log_text(parent_id, text, BEST_CONFUSION)  # `emotune report` prints it
    _log_tsne(client, parent_id, plotted)
    return scores


def _log_tsne(client, run_id: str, plotted: dict) -> None:
    """t-SNE maps of the last hidden layer on test (models whose ``predict`` returns an ``embedding``): one figure
    per input and class target, a panel per variant's best repeat, 250 random points per class (the center-loss
    paper's Figures 2-3 compare its S and S+C panels)."""
    from cluster import plots

    groups: dict[tuple[str, str], dict] = {}
    for arm, (state, (outputs, labels)) in sorted(plotted.items()):
        if "embedding" not in outputs:
            continue
        config, kinds = state["config"], state["spec"].get("kinds", {})
        for target in state["spec"]["targets"]:
            if kinds.get(target) not in ("class", "soft") or f"{target}_mask" not in labels:
                continue
            mask = np.asarray(labels[f"{target}_mask"], dtype=bool)
            truth = np.asarray(labels[target])[mask]
            truth = truth.argmax(axis=-1) if truth.ndim == 2 else truth
            names = state.get("classes", {}).get(target) or [str(i) for i in range(int(truth.max()) + 1)]
            group = groups.setdefault((str(config.get("input") or "features"), target), {"names": names})
            panel = "-".join(part for part in arm.split("-") if part != config.get("input")) or arm  # input: the figure
            group[panel] = (np.asarray(outputs["embedding"])[mask], truth.astype(int))
    for (input_name, target), group in groups.items():
        names = group.pop("names")
        try:
            png = plots.tsne_plot(group, names, title=f"t-SNE of the last hidden layer on test: {target}, "
                                                      f"{input_name} input")
        except ValueError as err:  # too few test utterances for a map
            _warn(f"t-SNE plot for {input_name}/{target} skipped: {err}")
            continue
        _log_png(client, run_id, png, f"plots/tsne/tsne_{input_name}_{target}.png")


def _best_per_variant(repeats: list[dict], metric: str, mode: str) -> dict:
    """The repeat with the best validation score of each variant (the one a variant's plots show)."""
    best = {}
    for rep in repeats:
        score = rep["best"].get(metric)
        if rep["checkpoint"] is None or not _finite(score):
            continue
        held = best.get(rep["variant"])
        if held is None or (score > held["best"][metric] if mode == "max" else score < held["best"][metric]):
            best[rep["variant"]] = rep
    return best


# ---- plots -------------------------------------------------------------------------------------------------

def _log_png(client, run_id: str, png: bytes, artifact_file: str) -> None:
    import tempfile

    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(png)
        client.log_artifact(run_id, str(path), artifact_path=folder or None)


def _warn(message: str) -> None:
    import sys

    print(f"emotune: warning: {message}", file=sys.stderr, flush=True)


def export_study(prep: Prepared, exp_dir: Path):
    """The search's Optuna study, rebuilt from the searcher state Tune keeps in the experiment folder and written
    whole to :func:`study_storage` (replacing an earlier copy). Returns the SQLite study, or None without one."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    url = study_storage(prep)
    if url is None:
        return None
    searcher = OptunaSearch(metric=prep.cfg.search.metric, mode=prep.cfg.search.mode)
    searcher.restore_from_dir(str(exp_dir))
    source = searcher._ot_study  # Ray's only handle on the study it ran (restored from searcher-state-*.pkl)
    (exp_dir / STUDY_FILE).unlink(missing_ok=True)
    study = optuna.create_study(storage=url, study_name=prep.cfg.name, directions=source.directions)
    for trial in source.get_trials(deepcopy=False):
        if not trial.state.is_finished():
            continue
        try:
            study.add_trial(trial)
        except ValueError as err:  # e.g. a COMPLETE trial whose value is NaN: not a result to show
            _warn(f"Optuna trial {trial.number} not copied to {url}: {err}")
    return study


def _log_search_plots(prep: Prepared, exp_dir: Path, session: Session) -> None:
    """Optuna's optimisation history, parameter importances and parallel coordinates of the search on the parent
    run, drawn from the exported study (also logged, as ``optuna/optuna_study.db``)."""
    from cluster import plots

    study = export_study(prep, exp_dir)
    if study is None:
        _warn("storage.path is an object store: the Optuna study stays in Tune's searcher state; no search plots")
        return
    session.client.set_tag(session.parent_id, "emotune.optuna_storage", study_storage(prep))
    pngs, skipped = plots.optuna_plots(study)
    for name, png in pngs.items():
        _log_png(session.client, session.parent_id, png, f"plots/search/{name}")
    for name, reason in skipped.items():
        _warn(f"search plot {name} skipped: {reason}")
    session.client.log_artifact(session.parent_id, str(exp_dir / STUDY_FILE), artifact_path="optuna")


def _log_validation_plots(prep: Prepared, stores: dict, repeats: list[dict], session: Session) -> None:
    """Validation curves of every repeat (per variant, on the parent) and, for each variant's best repeat, its
    validation predicted-vs-true plots and confusion matrices (on that repeat's run)."""
    from cluster import plots
    from trainables.loop import state_predictions
    from trainables.tune_entry import load_state

    cfg = prep.cfg
    metric, mode = cfg.search.metric, cfg.search.mode
    by_variant: dict[str, dict] = {}
    for rep in repeats:
        label = f"{rep['variant'] or 'model'} seed {rep['config'].get('seed', 0)}"
        by_variant.setdefault(rep["variant"] or "model", {})[label] = rep["curve"]
    for variant, curves in sorted(by_variant.items()):
        png = plots.curves_plot(curves, metric, mode=mode, title=f"{variant}: {metric} per epoch (validation)")
        _log_png(session.client, session.parent_id, png, f"plots/validation_curves_{variant}.png")
    val_ids = [list(f.val_ids) for f in prep.folds]
    for rep in _best_per_variant(repeats, metric, mode).values():
        if not rep.get("run_id"):
            continue
        state = load_state(rep["checkpoint"])
        outputs, labels = state_predictions(state, _store_for(stores, rep["config"]), val_ids)
        _log_prediction_plots(session.client, rep["run_id"], state, outputs, labels, "plots/validation",
                              "validation")


def _log_prediction_plots(client, run_id: str, state: dict, outputs: dict, labels: dict, folder: str,
                          split: str) -> dict[str, str]:
    """Predicted vs true per regression target (on the corpus's rating scale) and a confusion matrix per class or
    soft target (a picture and a markdown table), over the utterances that carry the label.

    Returns:
        ``{target: confusion table (markdown)}`` of the class and soft targets.
    """
    from cluster import plots
    from cluster.export import output_spec
    from cluster.report import confusion_table
    from trainables import metrics as M

    spec = state["spec"]
    kinds = spec.get("kinds", {})
    scales = {e["name"]: tuple(e["scale"]) for e in output_spec(state)["targets"]
              if e["kind"] == "regression" and e["scale"]}
    tables = {}
    for target in spec["targets"]:
        if target not in outputs:
            continue
        mask = np.asarray(labels[f"{target}_mask"], dtype=bool)
        if mask.sum() < 2:
            continue
        pred, truth = np.asarray(outputs[target])[mask], np.asarray(labels[target])[mask]
        if kinds.get(target, "regression") == "regression":
            lo, hi = scales.get(target, (-1.0, 1.0))
            to_scale = lambda y, lo=lo, hi=hi: lo + (np.asarray(y, dtype=float) + 1.0) / 2.0 * (hi - lo)
            png = plots.scatter_plot(to_scale(pred), to_scale(truth), target, scale=(lo, hi),
                                     title=f"{target}: predicted vs true ({split})")
            _log_png(client, run_id, png, f"{folder}/scatter_{target}.png")
        else:
            truth = truth.argmax(axis=-1) if truth.ndim == 2 else truth
            names = state.get("classes", {}).get(target) or [str(i) for i in range(pred.shape[-1])]
            png = plots.confusion_plot(pred.argmax(axis=-1), truth.astype(int), names,
                                       title=f"{target}: confusion matrix ({split})")
            _log_png(client, run_id, png, f"{folder}/confusion_{target}.png")
            counts = M.confusion_matrix(pred.argmax(axis=-1), truth.astype(int), len(names))
            tables[target] = confusion_table(counts, names)
            client.log_text(run_id, tables[target], f"{folder}/confusion_{target}.md")
    return tables


def register_best(prep: Prepared, stores: dict, repeats: list[dict], session: Session) -> str | None:
    """Log the repeat with the best validation score as an MLflow model on that repeat's own run, register it,
    alias it ``candidate``.

    The model (``cluster/pyfunc_model.py``) takes raw ``features`` and returns named columns on the corpus's own
    rating scale (class probabilities named by class); its input example is real validation rows, its params are
    the winning run's, its description says what it predicts, on which data, with which validation score.
    """
    from cluster.export import describe, log_registered_model, output_spec, validation_example
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
    example = validation_example(state, _store_for(stores, best["config"]), list(prep.folds[0].val_ids))
    manifest = prep.sets_of(best["config"])[0].manifest
    seed = best["config"].get("seed", 0)
    variant = best["variant"] or prep.family.name
    tags = {"val_metric": metric, "val_mode": mode, "val_score": repr(best["best"][metric]),
            "data_manifest_hash": prep.manifest_hash, "sweep": cfg.name, "trial_id": best["trial_id"],
            "variant": best["variant"], "seed": str(seed), "parent_run_id": session.parent_id,
            "run_id": best.get("run_id") or "", "outputs": ",".join(output_spec(state)["columns"])}
    description = describe(state, corpora=[ss.manifest.corpus for ss in prep.sets_of(best["config"])],
                           feature_set=manifest.feature_set, manifest_hash=prep.manifest_hash, metric=metric,
                           mode=mode, score=best["best"][metric], protocol=_protocol_tag(cfg), sweep=cfg.name,
                           variant=variant, seed=int(seed), trial_id=best["trial_id"])
    version = log_registered_model(state, example, tracking_uri=prep.tracking_uri,
                                   run_id=best.get("run_id") or session.parent_id, model_name=prep.model_name,
                                   description=description, params=_resolved_params(best["config"], prep.family),
                                   version_tags=tags)
    session.client.set_registered_model_alias(prep.model_name, cfg.registry.alias, version)
    session.client.set_tag(session.parent_id, "emotune.registered", f"{prep.model_name}/{version}")
    return version
