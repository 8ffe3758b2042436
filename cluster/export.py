"""The registered model: one fold's network as a self-describing MLflow pyfunc, logged into the run that trained it.

What a user gets from ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` (``cluster/pyfunc_model.py``): raw
features in (``features``, the shape the family takes), a DataFrame out with one named column per output,
regression targets on the corpus's own rating scale (not the [-1, 1] training scale), class probabilities as
``<target>.<class>``. It needs torch, numpy, pandas and mlflow only, pinned from the versions that trained it.

The driver calls, for the repeat it registers::

    example = validation_example(state, store, fold0_val_ids)
    text = describe(state, corpora=..., feature_set=..., manifest_hash=..., metric=..., mode=..., score=...,
                    protocol=..., sweep=..., variant=..., seed=..., trial_id=...)
    version = log_registered_model(state, example, tracking_uri=..., run_id=<the repeat's trial run>,
                                   model_name=..., description=text, params=..., version_tags=...)

The registered model is fold 0's (for cross-validation protocols, the first fold's model).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from data_io.examples import evaluation_index, gather
from data_io.feed import labelled_only
from data_io.store import FeatureStore, Normalizer
from trainables.loop import Standardized, family_feed, model_from_state, split_config
from trainables.registry import get_family

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
INPUT_NAME = "features"  # the signature's input name; pyfunc_model.INPUT_NAME (not imported: it calls set_model)
ARTIFACT_NAME = "model"
FOLD = 0
# MLflow enforces a tensor input's dtype exactly (mlflow.models.utils._enforce_tensor_spec: no float32 -> float64
# cast), so a signature admits one dtype. float64 is numpy's and pandas' default and the JSON of a serving request
# is cast to it; the network runs in float32 (the pyfunc casts).
SIGNATURE_DTYPE = np.dtype("float64")
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas")  # what pyfunc_model.py imports; nothing of emotune


# ---- what the network outputs ----------------------------------------------------------------------------------

def _corpus_scale(encoder_state: Mapping) -> tuple[str | None, tuple[float, float] | None, dict]:
    """``(corpus, (low, high), every corpus's scale)`` of a ``scaled`` encoder: the first corpus in sorted order
    that has a scale; ``(None, None, {})`` when no corpus has one."""
    scales = {str(c): (float(s[0]), float(s[1])) for c, s in dict(encoder_state.get("label_scales") or {}).items()
              if s is not None}
    if not scales:
        return None, None, {}
    corpus = sorted(scales)[0]
    return corpus, scales[corpus], scales


def _probe(shape: Sequence[int], mean: torch.Tensor, std: torch.Tensor, n: int = 8) -> torch.Tensor:
    """``(n, *shape)`` raw inputs whose normalised values are standard normal (seeded): distinct rows, so distinct
    outputs, for telling the network's output columns apart."""
    z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))
    return z * std + mean


@torch.no_grad()
def output_spec(state: Mapping) -> dict:
    """Input and output columns of fold 0's exported network (what ``outputs.json`` holds; see pyfunc_model.py).

    The network's ``forward`` stacks the targets its ``predict`` returns: a regression target is one column, a class
    or soft target one softmax probability per class. ``SERModel.forward`` stacks them in ``spec.targets`` order;
    a family may stack them in its own (the ladder family: arousal, valence, dominance, in ``predict``'s order),
    so the order is read off the network: the first of the two orders whose columns equal ``forward``'s.

    Raises:
        ValueError: ``forward``'s columns match neither order, or a class target's class names are missing.
    """
    model, norm = model_from_state(state, FOLD)
    fold = state["folds"][FOLD]
    spec = fold.get("spec", state["spec"])
    kinds, targets, shape = dict(spec["kinds"]), list(spec["targets"]), [int(s) for s in spec["input_shape"]]
    x = _probe(shape, norm["mean"], norm["std"])
    out = model.predict({"x": (x - norm["mean"]) / norm["std"]})
    forward = Standardized(model, norm["mean"], norm["std"]).eval()(x).double()
    blocks = {t: (v.unsqueeze(-1) if kinds[t] == "regression" else torch.softmax(v, dim=-1)).double()
              for t, v in out.items() if t in kinds}
    orders = [[t for t in targets if t in blocks], [t for t in out if t in blocks]]
    order = next((o for o in orders if forward.shape == (len(x), sum(blocks[t].shape[1] for t in o))
                  and torch.allclose(torch.cat([blocks[t] for t in o], dim=1), forward, rtol=1e-4, atol=1e-5)), None)
    if order is None:
        raise ValueError(f"the {state['config']['family']} network's forward gives {tuple(forward.shape)} outputs "
                         f"that match its predict outputs {sorted(blocks)} neither in spec.targets order {orders[0]} "
                         f"nor in predict's order {orders[1]}; forward must stack predict's outputs")
    entries = []
    for t in order:
        if kinds[t] == "regression":
            enc = fold["encoders"][t]
            corpus, scale, scales = _corpus_scale(enc) if enc.get("encoder") == "scaled" else (None, None, {})
            entries.append({"name": t, "kind": "regression", "columns": [t], "corpus": corpus,
                            "scale": None if scale is None else list(scale),
                            "corpus_scales": {c: list(s) for c, s in scales.items()}})
        else:
            classes = [str(c) for c in (state.get("classes") or {}).get(t, [])]
            if len(classes) != blocks[t].shape[1]:
                raise ValueError(f"{kinds[t]} target {t!r} has {blocks[t].shape[1]} outputs but the state names "
                                 f"{len(classes)} classes {classes} (state['classes'][{t!r}])")
            entries.append({"name": t, "kind": kinds[t], "columns": [f"{t}.{c}" for c in classes]})
    return {"input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32",
                      "normalization": norm["normalization"]},
            "columns": [c for e in entries for c in e["columns"]], "targets": entries, "fold": FOLD,
            "family": state["config"]["family"]}


# ---- the example, the requirements, the description ----------------------------------------------------------

def validation_example(state: Mapping, store: FeatureStore, ids: list[str], n: int = 4) -> np.ndarray:
    """Real inputs for the registry: ``n`` examples of fold 0's validation rows as the exported model takes them.

    Examples are made as in validation (the family's evaluation examples: the utterance's vector, its fixed or
    centred crop, its windows), one per utterance while there are utterances, and given raw: vectors are read from
    the store as they are, frames are normalised with the fold's statistics (so padding is the training mean) and
    mapped back, ``x * std + mean``, which is what ``Standardized`` undoes.

    Args:
        state: A checkpoint state (``run_trial``'s).
        store: A store holding the rows.
        ids: Fold 0's validation utterance ids (labelled rows are used; auxiliary rows are skipped).
        n: Number of examples wanted.

    Returns:
        ``(min(n, available), *input_shape)`` float32.

    Raises:
        ValueError: No labelled row among ``ids``, or examples of another shape than the model's input.
    """
    family = get_family(state["config"]["family"])
    model_kwargs, _ = split_config(state["config"], family)
    spec = family_feed(family.config_cls(**model_kwargs)).examples
    fold = state["folds"][FOLD]
    rows = labelled_only(store, store.rows(ids))
    if not len(rows):
        raise ValueError(f"validation_example: none of the {len(ids)} ids is a labelled row of the store; pass fold "
                         f"0's validation ids")
    index = evaluation_index(spec, store, rows[:n])
    first = np.unique(index.rows, return_index=True)[1]  # one example per utterance first, then the others
    order = np.concatenate([np.sort(first), np.setdiff1d(np.arange(len(index)), first)])[:n]
    mean, std = fold["mean"].numpy().astype(np.float32), fold["std"].numpy().astype(np.float32)
    if spec.kind == "vector":
        x = gather(spec, store, index.take(order), Normalizer("none", mean, std))  # the raw rows
    else:
        x = gather(spec, store, index.take(order), Normalizer(fold.get("normalization", "zscore"), mean, std))
        x = x * std + mean
    shape = tuple(int(s) for s in fold.get("spec", state["spec"])["input_shape"])
    if x.shape[1:] != shape:
        raise ValueError(f"validation examples have shape {x.shape[1:]} but the model takes {shape}; the store "
                         f"holds another feature set than the one the model trained on")
    return np.ascontiguousarray(x, dtype=np.float32)


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports, from the installed versions, local labels dropped (``torch==2.13.0``,
    not ``2.13.0+cpu``: pip finds no ``+cpu`` on PyPI, and ``==2.13.0`` admits the local builds)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    pins = []
    for name in REQUIREMENTS:
        try:
            found = version(name)
        except PackageNotFoundError:
            if name != "mlflow":
                raise
            name, found = "mlflow-skinny", version("mlflow-skinny")  # the lighter distribution of the same API
        pins.append(f"{name}=={Version(found).public}")
    return pins


def _scale_text(entry: Mapping) -> str:
    if entry["scale"] is None:
        return "the [-1, 1] training scale (no corpus scale was known)"
    low, high = entry["scale"]
    return f"{entry['corpus']}'s {low:g}-{high:g} rating scale"


def describe(state: Mapping, *, corpora: Sequence[str], feature_set: str, manifest_hash: str, metric: str,
             mode: str, score: float, protocol: str, sweep: str, variant: str, seed: int, trial_id: str) -> str:
    """The model version's description (Markdown): outputs and their scale, input, data, validation, provenance.

    Args:
        state: The registered repeat's checkpoint state.
        corpora: Corpora of the labelled training data (the shard sets' ``corpus``).
        feature_set: The shards' feature set (e.g. ``functionals``).
        manifest_hash: The data manifest hash (its first 12 characters are shown).
        metric: Selection metric (``search.metric``), e.g. ``val_ccc_arousal``.
        mode: ``max`` or ``min``.
        score: The repeat's value of ``metric`` at its best epoch (mean over folds).
        protocol: The evaluation protocol (e.g. ``predefined``, ``loso``).
        sweep: The sweep's name.
        variant: The family variant (may be empty).
        seed: The repeat's seed.
        trial_id: The repeat's Ray trial id.
    """
    spec = output_spec(state)
    regression = [e for e in spec["targets"] if e["kind"] == "regression"]
    items = []  # Markdown bullets: MLflow renders the description as Markdown, which joins bare lines
    if regression:
        by_scale: dict[str, list[str]] = {}
        for e in regression:
            by_scale.setdefault(_scale_text(e), []).append(e["name"])
        parts = [f"{', '.join(names)} on {text}" for text, names in by_scale.items()]
        items.append(f"**Predicts** {'; '.join(parts)}: the [-1, 1] training scale mapped back linearly, not "
                     f"clipped, so a value may fall slightly outside the scale.")
        mixed = sorted({c for e in regression for c, s in e["corpus_scales"].items() if s != e["scale"]})
        if mixed:
            items.append(f"The model trained on corpora with other scales too ({', '.join(mixed)}); its outputs are "
                         f"given on the scale of {regression[0]['corpus']}, the first of its corpora in sorted order.")
    for e in spec["targets"]:
        if e["kind"] != "regression":
            items.append(f"**Predicts** {e['name']} ({e['kind']} target): one probability per class, columns "
                         f"{', '.join(f'`{c}`' for c in e['columns'])} (they sum to 1).")
    items += [f"**Output** a pandas DataFrame, one row per example, columns "
              f"{', '.join(f'`{c}`' for c in spec['columns'])}.",
              f"**Input** `{INPUT_NAME}`: raw {feature_set} features, shape (n, "
              f"{', '.join(map(str, spec['input']['shape']))}), float64 (the signature's dtype; float32 rows pass as "
              f"`pandas.DataFrame({{'{INPUT_NAME}': list(x)}})`); the training fold's "
              f"{spec['input']['normalization']} normalisation is inside the model.",
              f"**Data** {', '.join(corpora)} ({feature_set}), data manifest `{manifest_hash[:12]}`, protocol "
              f"{protocol}; this is fold {FOLD}'s model (of {len(state['folds'])}).",
              f"**Validation** {metric} = {score:.4f} ({mode} is better; the mean over folds at the best epoch, "
              f"{state.get('best_epoch', '?')}).",
              f"**Provenance** sweep `{sweep}`, variant `{variant or '-'}`, seed {seed}, trial `{trial_id}`."]
    lines = [f"Speech emotion recognition: {state['config']['family']}{f' ({variant})' if variant else ''} model "
             f"from emotune sweep `{sweep}`.", "", *(f"- {item}" for item in items)]
    return "\n".join(lines)


# ---- export and logging ----------------------------------------------------------------------------------------

def export_network(state: Mapping, example: np.ndarray, path: Path) -> Path:
    """Save fold 0's ``Standardized`` network (eval mode) with ``torch.export``, batch axis dynamic.

    The trace runs on ``example`` (at least 2 rows: a size-1 axis would be specialised to a constant) and the
    saved program is checked against the eager network on it.
    """
    model, norm = model_from_state(state, FOLD)
    net = Standardized(model, norm["mean"], norm["std"]).eval()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    if len(x) < 2:
        x = torch.cat([x, x])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    with torch.no_grad():
        want, got = net(x), torch.export.load(str(path)).module()(x)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"the exported network differs from the trained one by {float((want - got).abs().max())}")
    return path


def _signature(spec: Mapping):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(SIGNATURE_DTYPE, (-1, *spec["input"]["shape"]), name=INPUT_NAME)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", c) for c in spec["columns"]]))


def log_registered_model(state: Mapping, example: np.ndarray, *, tracking_uri: str, run_id: str, model_name: str,
                         description: str, params: Mapping, version_tags: Mapping[str, str]) -> str:
    """Log fold 0's network as the pyfunc of ``cluster/pyfunc_model.py`` into run ``run_id`` and register it.

    The run (the repeat's trial run, usually FINISHED) is re-opened for the logging and left with the status and
    end time it had. The model version gets ``description`` and ``version_tags``; the registered model gets a
    description when it has none. Aliases are the caller's.

    Args:
        state: The checkpoint state of the run's best epoch.
        example: Real raw inputs (:func:`validation_example`), ``(n, *input_shape)``; stored as the input example.
        tracking_uri: The MLflow tracking (and registry) URI.
        run_id: The run that trained the model; the model version's ``run_id``.
        model_name: Registered model name.
        description: The model version's description (:func:`describe`).
        params: The LoggedModel's params (values logged as strings); MLflow adds the run's own params, which win
            on a name clash.
        version_tags: Model version tags (``val_score``, ``data_manifest_hash``, ...).

    Returns:
        The new model version, e.g. ``"3"``.

    Raises:
        ValueError: An example of the wrong shape or with non-finite values.
    """
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    spec = output_spec(state)
    shape = tuple(spec["input"]["shape"])
    example = np.asarray(example)
    if example.ndim != len(shape) + 1 or example.shape[1:] != shape or not len(example):
        raise ValueError(f"example must have shape (n >= 1, {', '.join(map(str, shape))}), got {example.shape}")
    if not np.isfinite(example).all():
        raise ValueError("example holds NaN or infinite features; pass real validation rows (validation_example)")
    client = MlflowClient(tracking_uri)
    before = client.get_run(run_id).info
    mlflow.set_tracking_uri(tracking_uri)
    active = mlflow.active_run()
    reopen = active is None or active.info.run_id != run_id
    with tempfile.TemporaryDirectory(prefix="emotune-export-") as tmp:
        network = export_network(state, example, Path(tmp) / "network.pt2")
        outputs = Path(tmp) / "outputs.json"
        outputs.write_text(json.dumps(spec, indent=1))
        if reopen:
            mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME, python_model=str(PYFUNC_FILE),
                artifacts={"network": str(network), "outputs": str(outputs)},
                signature=_signature(spec), input_example={INPUT_NAME: example.astype(SIGNATURE_DTYPE)},
                pip_requirements=pip_requirements(), registered_model_name=model_name,
                params={str(k): str(v) for k, v in params.items()})
        finally:
            if reopen:
                # end_run needs a terminal status; the run's own (and its end time) is put back right after.
                terminal = before.status if RunStatus.is_terminated(RunStatus.from_string(before.status)) \
                    else "FINISHED"
                mlflow.end_run(terminal)
                if before.status == terminal:
                    client.set_terminated(run_id, terminal, end_time=before.end_time)
                else:
                    client.update_run(run_id, status=before.status)  # it was RUNNING elsewhere: keep it so
    version = str(info.registered_model_version)
    client.update_model_version(model_name, version, description=description)
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    if not client.get_registered_model(model_name).description:
        targets = ", ".join(e["name"] for e in spec["targets"])
        client.update_registered_model(model_name, description=(
            f"emotune speech emotion recognition models ({targets}); each version's description gives its output "
            f"scale, input, data and validation score. Load with mlflow.pyfunc.load_model(...).predict("
            f"{{'{INPUT_NAME}': x}})."))
    return version
