"""The sweep config: one YAML file -> a validated, frozen :class:`SweepConfig` (pydantic v2).

Loading fails before any cluster work (DESIGN.md, "Clear errors"; STYLE.md 7, 8): unknown keys are rejected, and
every problem is reported at once as ``<dotted.field>: <what is wrong>; <fix>`` in one :class:`ConfigError`.
What needs the filesystem or the family's code (shard folders exist, the space samples, warm-start points build a
config) is checked by the driver; this module only reads YAML.

Example (every section but ``name``, ``data`` and ``model`` may be left out; the defaults are shown)::

    name: ladder_msp_podcast          # Ray Tune experiment folder and MLflow parent run name
    data:
      shards: [shards/msp_podcast/functionals]   # relative paths resolve against the config file's folder
      inputs: {}                      # instead of shards: alternative feature sets of the same utterances, searched
                                      # as the `input` parameter, e.g. {mfcc: [shards/iemocap/mfcc],
                                      # logmel128: [shards/iemocap/logmel128]}; selection is per variant and input
      include: {}                     # keep labelled rows whose metadata column matches a regex (re.search), e.g.
                                      # {utt_id: _impro} keeps IEMOCAP's improvised dialogs
      exclude: {}                     # drop labelled rows whose column matches a regex
      protocol: predefined            # predefined | loso | speaker_kfold | cross_corpus
      protocol_options: {}            # passed to the fold builder (k, seed, train_corpus, ...)
      corpus_protocols: {}            # per corpus: {callcenter: {protocol: random_kfold, k: 5}}; folds combine
      targets: [arousal, valence, dominance]
      encoders: {}                    # per target: scaled | classes | soft5 | soft | levels | kmeans | speakers
      emotion_classes: null           # required when targets include emotion
      emotion_merge: {}               # e.g. {excited: happy}
      auxiliary: []                   # unlabeled / auxiliary shard sets: [path, or {shards: path, targets: [...]}]
    model: {family: ladder, variants: [ladder_mtl], fixed: {}}
    search: {sampler: tpe, num_samples: 16, max_concurrent: 2, scheduler: asha, grace_period: 2,
             reduction_factor: 2, metric: val_ccc_arousal, mode: max, seed: 0, ranges: {}, grids: {},
             per_layer_lambda: false, points_to_evaluate: []}
    train: {max_epochs: 50, patience: 5, early_stopping: patience, batch_size: 256, select_per_variant: true,
            lr_schedule: none, lr_factor: 0.5, min_lr: 1.0e-5}
    repeats: {seeds: 10, reuse_search: true}
    resources: {cpu: 1, gpu: 0, max_failures: 2}
    tracking: {uri: null, experiment: null}
    registry: {model_name: null, alias: candidate}
    storage: {path: ray_results, shared: null}
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from searchspace import aae_mtl, center_loss, dcgan, ladder, selective_mtl

# Families the config may name. The registry in trainables/ is the source of truth; searchspace cannot import it
# (torch), so a test checks the two agree.
KNOWN_FAMILIES = ("ladder", "dcgan", "center_loss", "selective_mtl", "aae_mtl")
# Variants per family; a family without an entry is not checked here.
VARIANTS: dict[str, tuple[str, ...]] = {"ladder": ladder.VARIANTS, "center_loss": center_loss.VARIANTS,
                                        "selective_mtl": selective_mtl.VARIANTS, "dcgan": dcgan.VARIANTS,
                                        "aae_mtl": aae_mtl.VARIANTS}
# Knobs each family's space accepts in search.ranges / search.grids; a family without an entry is not checked here.
SPACE_KNOBS: dict[str, dict[str, tuple[str, ...]]] = {
    "ladder": {"ranges": tuple(ladder.RANGE_DEFAULTS), "grids": ladder.GRID_KNOBS},
    "center_loss": {"ranges": tuple(center_loss.RANGE_DEFAULTS), "grids": center_loss.GRID_KNOBS},
    "selective_mtl": {"ranges": tuple(selective_mtl.RANGE_DEFAULTS), "grids": selective_mtl.GRID_KNOBS},
    "dcgan": {"ranges": tuple(dcgan.RANGE_DEFAULTS), "grids": dcgan.GRID_KNOBS},
    "aae_mtl": {"ranges": tuple(aae_mtl.RANGE_DEFAULTS), "grids": aae_mtl.GRID_KNOBS},
}
# Each family's own check of its space options (variants, ranges, grids, per_layer_lambda, fixed); run when the
# generic checks pass, so a range the space would reject (e.g. dropout [0, 1]) fails at load time.
SPACE_CHECKS: dict[str, Callable[..., None]] = {"ladder": ladder.check_options,
                                                 "center_loss": center_loss.check_options,
                                                 "selective_mtl": selective_mtl.check_options,
                                                 "dcgan": dcgan.check_options, "aae_mtl": aae_mtl.check_options}
# Loop settings any family may search in search.grids (the driver suggests them, not the family's space): the
# multitask-DCGAN paper searches the batch size. A searched one replaces its train.* value.
LOOP_GRIDS = ("batch_size",)
# Fixed weight pairs whose sum must stay <= 1 (the ladder's Eq. 2 gives dominance 1 - alpha - beta).
SUM_AT_MOST_ONE: dict[str, tuple[str, str]] = {"ladder": ("alpha", "beta")}

# Metadata columns a target can be read from; other target names are derived by their encoder (kmeans).
TARGETS: tuple[str, ...] = ("arousal", "valence", "dominance", "emotion", "gender", "speaker", "style")
Sampler = Literal["tpe", "random", "grid", "cmaes"]
Protocol = Literal["predefined", "loso", "speaker_kfold", "cross_corpus", "random_kfold"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


class ConfigError(ValueError):
    """A sweep config that cannot run; ``problems`` holds one ``<dotted.field>: <what>; <fix>`` line each."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        where = f" {source}" if source else ""
        n = len(self.problems)
        super().__init__(f"invalid sweep config{where} ({n} problem{'s' * (n != 1)}):\n  - "
                         + "\n  - ".join(self.problems))


class _Problems(ValueError):
    """Several problems found by one validator, each with its location below the validated model."""

    def __init__(self, items: list[tuple[tuple, str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in items))
        self.items = items


def _raise(problems: list[tuple[tuple, str]]) -> None:
    if problems:
        raise _Problems(problems)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuxiliaryConfig(_Section):
    """An auxiliary shard set: its rows train only ``targets`` (none: unlabeled audio), never validate or score."""

    shards: str = Field(min_length=1)
    targets: list[str] = Field(default_factory=list)


class DataConfig(_Section):
    """Which shards, how they are split into folds, and what is predicted."""

    shards: list[str] = Field(default_factory=list)
    inputs: dict[str, list[str]] = Field(default_factory=dict)
    include: dict[str, str] = Field(default_factory=dict)
    exclude: dict[str, str] = Field(default_factory=dict)
    protocol: Protocol = "predefined"
    protocol_options: dict[str, Any] = Field(default_factory=dict)
    corpus_protocols: dict[str, dict[str, Any]] = Field(default_factory=dict)
    targets: list[str] = Field(default_factory=lambda: ["arousal", "valence", "dominance"], min_length=1)
    encoders: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    emotion_classes: list[str] | None = None
    emotion_merge: dict[str, str] = Field(default_factory=dict)
    auxiliary: list[AuxiliaryConfig] = Field(default_factory=list)

    @field_validator("auxiliary", mode="before")
    @classmethod
    def _auxiliary_paths(cls, value: Any) -> Any:
        # A bare path is an unlabeled set: `auxiliary: [shards/ami/spectrogram]`.
        if isinstance(value, list):
            return [{"shards": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        problems = []
        if any(not s.strip() for s in self.shards):
            problems.append((("shards",), "an empty path; give a shard folder"))
        if not self.shards and not self.inputs:
            problems.append((("shards",), "no shard folder; list the labelled shard sets, e.g. "
                                          "[shards/iemocap/mfcc] (or name alternatives in data.inputs)"))
        if self.shards and self.inputs:
            problems.append((("inputs",), "data.shards and data.inputs are both set; with inputs, list every "
                                          "feature set's folders under its input name and drop data.shards"))
        for name, folders in self.inputs.items():
            if not name.isidentifier():
                problems.append((("inputs", name), "an input name must be letters, digits and '_' (it becomes "
                                                   "part of variant labels and MLflow keys), e.g. mfcc"))
            if not folders or any(not f.strip() for f in folders):
                problems.append((("inputs", name), f"needs a non-empty list of shard folders, got {folders}"))
        for kind, rules in (("include", self.include), ("exclude", self.exclude)):
            for column, pattern in rules.items():
                try:
                    re.compile(pattern)
                except re.error as err:
                    problems.append(((kind, column), f"{pattern!r} is not a regular expression ({err}); fix it, "
                                                     f"e.g. '_impro' for IEMOCAP's improvised dialogs"))
        if len(set(self.targets)) != len(self.targets):
            problems.append((("targets",), f"duplicate targets in {self.targets}; list each once"))
        for t in self.targets:
            if not t.isidentifier():
                problems.append((("targets",), f"{t!r} is not a target name; use letters, digits and '_'"))
            elif t not in TARGETS and t not in self.encoders:
                problems.append((("targets",), f"{t!r} is not a metadata target {list(TARGETS)}; a derived target "
                                               f"needs its encoder in data.encoders, e.g. {{{t}: {{encoder: kmeans, "
                                               f"k: 3}}}}"))
        for t in self.encoders:
            if t not in self.targets:
                problems.append((("encoders", t), f"not in data.targets {self.targets}; add it there or remove it"))
        for i, aux in enumerate(self.auxiliary):
            for t in aux.targets:
                if t not in self.targets:
                    problems.append((("auxiliary", i, "targets"), f"{t!r} is not in data.targets {self.targets}; an "
                                                                  f"auxiliary set trains only targets of the sweep"))
        for corpus, entry in self.corpus_protocols.items():
            protocol = entry.get("protocol")
            if protocol not in get_args(Protocol):
                problems.append((("corpus_protocols", corpus, "protocol"),
                                 f"must be one of {list(get_args(Protocol))}, got {protocol!r}; e.g. "
                                 f"{{protocol: random_kfold, k: 5}}"))
        classes = self.emotion_classes
        if "emotion" in self.targets and not classes:
            problems.append((("emotion_classes",), "required when data.targets includes emotion; list the classes, "
                                                   "e.g. [neutral, happy, sad, angry]"))
        if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes)):
            problems.append((("emotion_classes",), f"needs at least 2 distinct classes, got {classes}; fix the list"))
        if classes and self.emotion_merge:
            bad = {k: v for k, v in self.emotion_merge.items() if v not in classes}
            if bad:
                problems.append((("emotion_merge",), f"{bad} merge into classes not in data.emotion_classes "
                                                     f"{classes}; merge into one of those"))
        _raise(problems)
        return self


class ModelConfig(_Section):
    """The architecture family, the variants searched, and config fields fixed for every trial."""

    family: str
    variants: list[str] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ModelConfig:
        families = tuple((info.context or {}).get("families") or KNOWN_FAMILIES)
        if self.family not in families:
            _raise([(("family",), f"{self.family!r} is not a registered family; use one of {sorted(families)}")])
        problems = []
        valid = VARIANTS.get(self.family)
        if valid is not None:
            bad = [v for v in self.variants if v not in valid]
            if bad:
                problems.append((("variants",), f"{bad} not valid for family {self.family!r}; use variants from "
                                                f"{list(valid)}"))
        if len(set(self.variants)) != len(self.variants):
            problems.append((("variants",), f"duplicates in {self.variants}; list each variant once"))
        if "variant" in self.fixed:
            problems.append((("fixed", "variant"), "the variant is set by model.variants; move it there"))
        pair = SUM_AT_MOST_ONE.get(self.family)
        if pair:
            a, b = pair
            for key in pair:
                value = self.fixed.get(key)
                if key in self.fixed and not (_is_number(value) and 0 <= value <= 1):
                    problems.append((("fixed", key), f"must be a number in [0, 1], got {value!r}; fix the value"))
            if all(_is_number(self.fixed.get(k)) for k in pair) and self.fixed[a] + self.fixed[b] > 1 + 1e-9:
                problems.append((("fixed",), f"{a} + {b} <= 1 must hold, got {a}={self.fixed[a]}, "
                                             f"{b}={self.fixed[b]}; lower {a} or {b}"))
        _raise(problems)
        return self


class SearchConfig(_Section):
    """Optuna sampler, Ray Tune trial budget and ASHA scheduler, and the space's options."""

    sampler: Sampler = "tpe"
    num_samples: int = Field(16, ge=1)
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2, gt=1)
    metric: str = "val_ccc_arousal"
    mode: Literal["max", "min"] = "max"
    seed: int = Field(0, ge=0)
    ranges: dict[str, list[float]] = Field(default_factory=dict)  # knob -> [low, high]
    grids: dict[str, list[Any]] = Field(default_factory=dict)
    per_layer_lambda: bool = False
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, metric: str) -> str:
        if not metric.startswith("val_"):
            raise ValueError(f"must start with 'val_', got {metric!r}: selection uses validation data only; "
                             f"use e.g. val_ccc_arousal")
        return metric

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        problems = []
        for name, pair in self.ranges.items():
            if len(pair) != 2:
                problems.append((("ranges", name), f"must be [low, high], got {pair}; give two numbers"))
                continue
            low, high = pair
            if not all(math.isfinite(v) for v in pair):
                problems.append((("ranges", name), f"bounds must be finite numbers, got [{low}, {high}]; give two "
                                                   f"finite numbers"))
            elif not low < high:
                problems.append((("ranges", name), f"low < high must hold, got [{low}, {high}]; swap or widen it"))
            elif name == "lr" and not low > 0:
                problems.append((("ranges", name), f"lr range must satisfy 0 < low < high, got ({low}, {high}); "
                                                   f"lr is searched on a log scale, use e.g. [1.0e-5, 1.0e-2]"))
        for name, values in self.grids.items():
            if not values:
                problems.append((("grids", name), "an empty grid; give at least one value"))
        _raise(problems)
        return self


class TrainConfig(_Section):
    """The training loop's budget; ``select_per_variant`` selects (and repeats) the best config of each variant.

    ``early_stopping`` says how ``patience`` counts: ``patience`` stops after that many epochs without a better
    validation score (a tie counts as not better); ``consecutive_drops`` stops after that many consecutive epochs
    *below* the best (a tie breaks the run), the multitask-DCGAN paper's rule (arXiv 1705.02394, Section 5). Either
    way the checkpoint kept is the best epoch's.

    ``lr_schedule``: ``none`` trains at the family's learning rate until early stopping; ``halve_on_plateau`` (the
    semi-supervised AAE paper, Section 4.3) turns each early stop into a plateau instead: every fold goes back to its
    best epoch's weights and optimizer state and trains on with the learning rates multiplied by ``lr_factor``, until
    they would fall below ``min_lr``; then the trial stops.
    """

    max_epochs: int = Field(50, ge=1)
    patience: int = Field(5, ge=1)
    early_stopping: Literal["patience", "consecutive_drops"] = "patience"
    batch_size: int = Field(256, ge=1)
    select_per_variant: bool = True
    lr_schedule: Literal["none", "halve_on_plateau"] = "none"
    lr_factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-5, gt=0)


class RepeatsConfig(_Section):
    """Re-train the selected config with seeds 0..seeds-1 before scoring test once.

    ``reuse_search``: the selected search trial already is the repeat of seed ``search.seed`` when it ran to its own
    end (every epoch, or its early stopping; not cut short by the scheduler): that repeat is the search trial, not a
    second identical training run.
    """

    seeds: int = Field(10, ge=1)
    reuse_search: bool = True


class ResourcesConfig(_Section):
    """Per-trial Ray resources and Ray Tune's FailureConfig(max_failures); -1 retries forever."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)
    max_failures: int = Field(2, ge=-1)


class TrackingConfig(_Section):
    """MLflow: ``uri`` None -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; ``experiment`` None -> the name."""

    uri: str | None = None
    experiment: str | None = None


class RegistryConfig(_Section):
    """MLflow model registry: ``model_name`` None -> ``emotune-<family>``; the alias set on the new version."""

    model_name: str | None = None
    alias: str = Field("candidate", min_length=1)


class StorageConfig(_Section):
    """Ray Tune storage_path: a local folder, a shared filesystem, or an s3:// / gs:// URI.

    ``shared``: whether every node of the cluster mounts ``path``. None (the default) judges by its filesystem's
    type (NFS, CephFS, Lustre, FUSE... are shared; ext4, xfs... are one node's); true or false say so instead, for
    a filesystem the type does not tell. A node-local path is refused on a cluster of several nodes.
    """

    path: str = Field("ray_results", min_length=1)
    shared: bool | None = None


class SweepConfig(_Section):
    """One sweep. Build with :func:`load_sweep_config` or ``SweepConfig.model_validate(dict)``.

    ``model_validate`` raises :class:`ConfigError` (not pydantic's ValidationError); pass
    ``context={"families": names}`` to check ``model.family`` against the registry instead of
    :data:`KNOWN_FAMILIES`.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig
    model: ModelConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    repeats: RepeatsConfig = Field(default_factory=RepeatsConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("name")
    @classmethod
    def _not_dots(cls, name: str) -> str:
        if set(name) == {"."}:  # "." or ".." would put the experiment folder outside storage.path
            raise ValueError(f"{name!r} is not a folder name; use letters, digits, '_', '.' and '-'")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        problems = []
        fixed, search = self.model.fixed, self.search
        knobs = SPACE_KNOBS.get(self.model.family)
        for kind, given in (("ranges", search.ranges), ("grids", search.grids)):
            for name in given:
                if kind == "grids" and name in LOOP_GRIDS:
                    values = given[name]
                    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                             for v in values):
                        problems.append((("search", "grids", name), f"must be a non-empty list of integers >= 1 "
                                                                    f"(e.g. [32, 64, 128]), got {values!r}"))
                elif knobs is not None and name not in knobs[kind]:
                    problems.append((("search", kind, name), f"not a {kind[:-1]} knob of family "
                                                             f"{self.model.family!r}; use one of {list(knobs[kind])}"))
                elif name in fixed:
                    problems.append((("search", kind, name), f"{name} is also fixed in model.fixed; "
                                                             f"remove it from one of them"))
        if "variant" in search.grids and knobs is not None:
            valid = VARIANTS.get(self.model.family, ())
            bad = [v for v in search.grids["variant"] if v not in valid]
            if bad:
                problems.append((("search", "grids", "variant"), f"{bad} not valid for family "
                                                                 f"{self.model.family!r}; use {list(valid)}"))
        check = SPACE_CHECKS.get(self.model.family)
        if check is not None and not problems:
            try:
                family_grids = {k: v for k, v in search.grids.items() if k not in LOOP_GRIDS}
                check(self.model.variants, search.ranges, family_grids, search.per_layer_lambda, fixed=fixed)
            except ValueError as err:
                hint = "" if ";" in str(err) else "; fix search.ranges, search.grids or model.fixed"
                problems.append((("search",), f"{err}{hint}"))
            except TypeError as err:  # a value of the wrong type (hidden: -5 where a list of sizes is expected)
                problems.append((("model", "fixed"), f"a value has the wrong type ({err}); fixed: {fixed}"))
        _raise(problems)
        return self

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> SweepConfig:
        """Validate a dict; raises :class:`ConfigError` listing every problem (see the class docstring)."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise ConfigError(_describe(err)) from None

    def resolved_shards(self, base: Path | str) -> list[Path | str]:
        """``data.shards`` as absolute paths; relative ones resolve against ``base`` (the config file's folder),
        URIs (``s3://...``) stay as written. With ``data.inputs``, the first input's folders."""
        return _resolve(self.data.shards or next(iter(self.data.inputs.values())), base)

    def resolved_inputs(self, base: Path | str) -> dict[str, list[Path | str]]:
        """``data.inputs`` as ``{input name: absolute folders}``; empty without inputs."""
        return {name: _resolve(folders, base) for name, folders in self.data.inputs.items()}

    def resolved_auxiliary(self, base: Path | str) -> list[Path | str]:
        """``data.auxiliary[*].shards`` as absolute paths, resolved like :meth:`resolved_shards`."""
        return _resolve([a.shards for a in self.data.auxiliary], base)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"search.sampler": "tpe", "model.fixed.target": "arousal", ...}`` for MLflow params.

        Nested mappings are flattened (an empty one stays as ``{}``); lists are kept as JSON-able lists.
        """
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            else:
                flat[prefix] = value

        walk("", self.model_dump(mode="json"))
        return flat

    def with_overrides(self, dotted: Mapping[str, Any], families: Collection[str] | None = None) -> SweepConfig:
        """A re-validated copy with ``{"search.num_samples": 2, "model.fixed.target": "valence", ...}`` applied.

        Used by ``--smoke`` and ``--set``. A dotted key may end inside a free-form mapping (``model.fixed.*``,
        ``data.protocol_options.*``); an unknown key fails as it would in the YAML.

        Raises:
            ConfigError: A key that walks through a value, or a result that does not validate.
        """
        data = copy.deepcopy(self.model_dump(mode="python"))
        problems = []
        for key, value in dotted.items():
            parts = str(key).split(".")
            node = data
            for i, part in enumerate(parts[:-1]):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    where = ".".join(parts[: i + 1])
                    problems.append(f"{key}: {where} is a value, not a section; override {where} itself")
                    break
                node = child
            else:
                node[parts[-1]] = value
        if problems:
            raise ConfigError(problems, "(overrides)")
        return type(self).model_validate(data, context=_context(families))


def load_sweep_config(path: Path | str, families: Collection[str] | None = None) -> SweepConfig:
    """Read a sweep YAML (``yaml.safe_load``) and validate it.

    Args:
        path: The YAML file. Relative shard paths in it resolve against its folder (:meth:`resolved_shards`).
        families: Registered family names; default :data:`KNOWN_FAMILIES`.

    Raises:
        ConfigError: A missing or unreadable file, bad YAML, or an invalid config, with every problem listed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"(file): {path} does not exist; check the path"], str(path)) from None
    except OSError as err:
        raise ConfigError([f"(file): cannot read {path} ({err.strerror or err}); check the path"],
                          str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"(file): not valid YAML: {err}; fix the syntax"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of sections (name, data, model, ...), got "
                           f"{type(raw).__name__}; see configs/ for examples"], str(path))
    try:
        return SweepConfig.model_validate(raw, context=_context(families))
    except ConfigError as err:
        raise ConfigError(err.problems, str(path)) from None


def _resolve(paths: list[str], base: Path | str) -> list[Path | str]:
    # A URI (s3://bucket/shards/x, file:///data/x) is kept as written: Path() would fold its '//' and make it a
    # relative path under the config's folder; data_io.shards reads it through pyarrow.fs.
    found = [p if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", p) else Path(p).expanduser() for p in paths]
    return [p if isinstance(p, str) else (p if p.is_absolute() else Path(base) / p).resolve() for p in found]


def _context(families: Collection[str] | None) -> dict:
    return {"families": tuple(families)} if families is not None else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(err: ValidationError) -> list[str]:
    """pydantic errors -> ``<dotted.field>: <what is wrong>; <fix>`` lines."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        ctx = e.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, _Problems):
            lines += [f"{_dotted(loc + sub)}: {msg}" for sub, msg in cause.items]
            continue
        lines.append(f"{_dotted(loc)}: {_what_and_fix(e, loc)}")
    return lines


def _dotted(loc: tuple) -> str:
    return ".".join(map(str, loc)) or "(top level)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _what_and_fix(e: dict, loc: tuple) -> str:
    kind, msg, ctx = e["type"], e["msg"], e.get("ctx") or {}
    if kind == "value_error":
        text = msg.removeprefix("Value error, ")
        return text if ";" in text else f"{text}; fix the value"
    if kind == "missing":
        return "required but missing; add it (see configs/ for examples)"
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        hint = f"; valid keys here: {valid}" if valid else ""
        return f"unknown key; remove it or fix its spelling{hint}"
    got = f", got {_short(e.get('input'))}"
    if kind == "literal_error":
        return f"{msg}{got}; use one of those"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{msg}{got}; change the value"
    if kind == "too_short":
        return f"{msg}; give at least {ctx.get('min_length', 1)}"
    if kind == "string_pattern_mismatch":
        return f"{msg}{got}; use only letters, digits, '_', '.' and '-'"
    return f"{msg}{got}; give a value of the right type"


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (for 'valid keys here'); empty when loc is not a section."""
    model: type[BaseModel] = SweepConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
