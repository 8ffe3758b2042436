"""Paper-style results tables (ladder paper, Table 1): variants x targets, mean +/- std over seeds, val and test.

The sweep driver logs, on each sweep's parent run, the mean and std over repeat seeds of every validation and test
metric as scalars (``<variant>.val_ccc_arousal.mean``, ``<variant>.test_ccc_arousal.std``) and the per-seed values as
the artifact ``results/per_seed.csv``. ``emotune report --experiment NAME`` reads the per-seed values back from every
finished sweep of the experiment and marks with ``*`` the cells where a variant beats the baseline variant in a
one-tailed Welch t-test over seeds (p < 0.05), as the paper does.

The paper tunes one sweep per attribute (the MTL weights are chosen "to maximize the performance for each
attribute"). With several sweeps in one experiment, a cell for attribute A comes from the sweep whose objective is
A's metric when there is one, else from the newest sweep that has it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

import numpy as np

from trainables import metrics as M

ATTRIBUTES = ("arousal", "valence", "dominance")
BEST_CONFUSION = "results/confusion_best_model.md"  # the best model's test confusion matrices, on the parent run

Values = Mapping[str, Mapping[str, Sequence[float]]]  # variant -> "val_ccc_arousal" -> one value per seed


def metric_names(targets: Sequence[str]) -> list[str]:
    """Table columns per target: CCC for attributes, UA and WA for class targets."""
    names = []
    for t in targets:
        names += [f"ccc_{t}"] if t in ATTRIBUTES else [f"ua_{t}", f"wa_{t}"]
    return names


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one seed) over seeds, as every table cell shows them."""
    arr = np.asarray(xs, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def format_table(values: Values, targets: Sequence[str], baseline: str | None = None,
                 alpha: float = 0.05) -> tuple[str, str]:
    """Markdown and CSV tables of mean +/- std per variant and column.

    Args:
        values: Per variant, per ``<val|test>_<metric>``, the values over seeds.
        targets: Targets whose columns to show.
        baseline: Variant to test against; ``*`` marks cells significantly better (one-tailed Welch, p < alpha).
        alpha: Significance level.

    Returns:
        ``(markdown, csv)``; the CSV is numeric: per column ``<col>.mean`` and ``<col>.std`` (and with a baseline
        ``<col>.better``, 1 where the cell is marked), empty where a variant has no value.
    """
    if baseline is not None and baseline not in values:
        raise ValueError(f"--baseline {baseline!r} is not among the variants {sorted(values)}")
    cols = [f"{p}_{m}" for p in ("val", "test") for m in metric_names(targets)]
    header = ["variant", "seeds", *cols]
    csv_header = ["variant", "seeds"] + [f"{c}.{part}" for c in cols
                                         for part in (("mean", "std", "better") if baseline else ("mean", "std"))]
    md_rows, csv_rows = [], []
    for variant in sorted(values):
        per = values[variant]
        seeds = max((len(per.get(c, ())) for c in cols), default=0)
        md, raw = [variant, str(seeds)], [variant, str(seeds)]
        for col in cols:
            xs = np.asarray(per.get(col, ()), dtype=float)
            if xs.size == 0:
                md.append("–")
                raw += [""] * (3 if baseline else 2)
                continue
            mark = ""
            if baseline and variant != baseline and len(values[baseline].get(col, ())) >= 2 and xs.size >= 2:
                _, p = M.welch_one_tailed(xs, np.asarray(values[baseline][col], dtype=float))
                mark = "*" if p < alpha else ""
            mean, std = mean_std(xs)
            md.append(f"{mean:.3f} ± {std:.3f}{mark}")
            raw += [repr(mean), repr(std)] + ([str(int(bool(mark)))] if baseline else [])
        md_rows.append(md)
        csv_rows.append(raw)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in md_rows]
    if baseline:
        lines.append(f"\n`*`: better than `{baseline}` in a one-tailed Welch t-test over seeds, p < {alpha}.")
    buf = io.StringIO()
    csv.writer(buf).writerows([csv_header, *csv_rows])
    return "\n".join(lines) + "\n", buf.getvalue()


def values_from_repeats(repeats: Sequence[Mapping], test: Mapping[str, Mapping[str, float]]) -> dict:
    """Table values from the driver's repeat records and test scores."""
    out: dict[str, dict[str, list[float]]] = {}
    for rep in repeats:
        cell = out.setdefault(rep["variant"] or "model", {})
        for k, v in {**rep["best"], **test.get(rep["trial_id"], {})}.items():
            cell.setdefault(k, []).append(float(v))
    return out


def values_from_mlflow(experiment: str, tracking_uri: str) -> tuple[dict, list[str]]:
    """Table values from the parent runs of every finished sweep in an MLflow experiment.

    Returns:
        ``(values, targets)``.

    Raises:
        ValueError: Unknown experiment, or no finished sweep in it.
    """
    from mlflow.tracking import MlflowClient

    from cluster.tracking import ROLE_TAG

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    parents = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise ValueError(f"experiment {experiment!r} has no finished sweep yet; run `emotune sweep` first")
    values: dict[str, dict[str, list[float]]] = {}
    owner: dict[tuple[str, str], bool] = {}  # (variant, column) -> filled by the sweep that targets it
    targets: list[str] = []
    for run in parents:  # newest first
        objective = run.data.tags.get("objective", "")
        for (variant, column), seeds in _per_seed_values(client, run).items():
            _, kind, target = (column.split("_", 2) + ["", ""])[:3]
            if target == "mean":  # val_ccc_mean is the MTL objective, not a target of its own
                continue
            # A target's columns (not e.g. mse_reconstruction); per-corpus columns (``ua_emotion.iemocap``) stay in
            # the values for the paper tables but make no target of their own.
            if target not in targets and kind in ("ccc", "ua", "wa") and "." not in target:
                targets.append(target)
            targeted = objective.endswith(f"_{target}")
            if (variant, column) in owner and (owner[(variant, column)] or not targeted):
                continue
            values.setdefault(variant, {})[column] = seeds
            owner[(variant, column)] = targeted
    order = [t for t in (*ATTRIBUTES, "emotion") if t in targets] + [t for t in targets if t not in ATTRIBUTES
                                                                       and t != "emotion"]
    return values, order


def _per_seed_values(client, run) -> dict[tuple[str, str], list[float]]:
    """``{(variant, column): values in seed order}`` of a sweep's parent run, from ``results/per_seed.csv``.

    Parent runs of older emotune versions have no such file; their per-seed values are metric histories
    (``<variant>.<column>``, step = seed).
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    out: dict[tuple[str, str], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run.info.run_id, "results/per_seed.csv", d)
            with open(path, newline="") as f:
                rows = sorted(csv.DictReader(f), key=lambda r: int(r["seed"]))
    except (MlflowException, OSError):
        rows = None
    if rows is not None:
        for row in rows:
            for column, value in row.items():
                if column.startswith(("val_", "test_")) and value not in ("", None):
                    out.setdefault((row["variant"], column), []).append(float(value))
        return out
    for key in run.data.metrics:
        variant, dot, column = key.partition(".")
        if dot and column.startswith(("val_", "test_")) and not column.endswith((".mean", ".std")):
            history = client.get_metric_history(run.info.run_id, key)
            out[(variant, column)] = [m.value for m in sorted(history, key=lambda m: m.step)]
    return out


# ---- each family's own tables (the paper's layout) -----------------------------------------------------------

def _split_arm(label: str) -> tuple[str, str]:
    """``s_a_c-mfcc`` -> (``s_a_c``, ``mfcc``); a label without an input -> (label, "")."""
    variant, _, input_name = label.partition("-")
    return variant, input_name


def _cell(xs: Sequence[float] | None, scale: float, digits: int) -> str:
    if not xs:
        return "–"
    mean, std = mean_std(np.asarray(xs, dtype=float) * scale)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


CENTER_LOSS_NAMES = {"s": "S", "s_a": "S+A", "s_c": "S+C", "s_a_c": "S+A+C", "a": "A"}


def center_loss_tables(values: Values) -> str:
    """The center-loss paper's Table 1 (test overall accuracy = WA and class accuracy = UA, %, per model and input)
    and Table 2 (test reconstruction MSE x 1e-4 of A, S+A, S+A+C), mean ± std over seeds."""
    arms = [(label, *_split_arm(label)) for label in values]
    inputs = list(dict.fromkeys(i for _, _, i in arms))

    def rows(variants: Sequence[str], cells) -> list[str]:
        out = []
        for input_name in inputs:
            for v in variants:
                label = f"{v}-{input_name}" if input_name else v
                if label in values:
                    out.append(f"| {CENTER_LOSS_NAMES[v]} | {input_name or '–'} | "
                               + " | ".join(cells(values[label])) + " |")
        return out

    def seeds(per: Mapping) -> int:
        return max((len(x) for x in per.values()), default=0)

    t1 = rows(("s", "s_a", "s_c", "s_a_c"), lambda per: [_cell(per.get("test_wa_emotion"), 100, 1),
                                                         _cell(per.get("test_ua_emotion"), 100, 1), str(seeds(per))])
    t2 = rows(("a", "s_a", "s_a_c"), lambda per: [_cell(per.get("test_mse_reconstruction"), 1e4, 2),
                                                  str(seeds(per))])
    lines = ["Table 1: test accuracy (%), mean ± std over seeds (S = softmax, A = reconstruction, C = center loss)",
             "", "| Model | Input | Overall accuracy (WA) | Class accuracy (UA) | seeds |", "|---|---|---|---|---|",
             *t1, "", "Table 2: test reconstruction MSE (x 1e-4), mean ± std over seeds", "",
             "| Model | Input | MSE (1e-4) | seeds |", "|---|---|---|---|", *t2]
    return "\n".join(lines) + "\n"


SELECTIVE_MTL_NAMES = {"separate": "Baseline (separate)", "combined": "Combined", "mtl": "MTL",
                       "selective_mtl": "Selective MTL"}
PAPER_CLASS_ORDER = ("angry", "sad", "happy", "neutral")  # Tables 4-5: anger, sadness, happiness, neutral


def selective_mtl_tables(values: Values) -> str:
    """The selective-MTL paper's Table 3 (test UA and WA, %, of every setting and its half-data row, over the
    test rows of both corpora together) and Tables 4-5 (per corpus: per-class accuracy, UA, WA), mean ± std over
    seeds.

    Table 3 pools the two corpora's test rows (``test_ua_emotion``), which is what the paper's numbers are: its
    baseline row (UA 59.83 %, WA 62.08 %) matches the union of Tables 4 and 5 weighted by Table 1's class counts
    (59.6 %, 61.4 %), not their mean (57.8 %, 60.9 %). The per-corpus mean is ``*.corpus_mean`` in the generic
    table's CSV and on the parent run.
    """
    order = [(v, half) for half in (False, True) for v in SELECTIVE_MTL_NAMES]
    arms = [(f"{v}-half" if half else v, v, half) for v, half in order if (f"{v}-half" if half else v) in values]

    def name(v: str, half: bool) -> str:
        return SELECTIVE_MTL_NAMES[v] + (" (half)" if half else "")

    def seeds(per: Mapping, column: str) -> str:
        return str(len(per.get(column, ())))

    lines = ["Table 3: test UA and WA (%) over both corpora's test rows, mean ± std over seeds", "",
             "| Setting | UA | WA | seeds |", "|---|---|---|---|"]
    for label, v, half in arms:
        per = values[label]
        lines.append(f"| {name(v, half)} | {_cell(per.get('test_ua_emotion'), 100, 2)} | "
                     f"{_cell(per.get('test_wa_emotion'), 100, 2)} | {seeds(per, 'test_ua_emotion')} |")
    corpora = sorted({c.partition(".")[2] for per in values.values() for c in per
                      if c.startswith("test_ua_emotion.") and not c.endswith(".corpus_mean")})
    prefix = "test_acc_emotion_"
    found = {c.partition(".")[0][len(prefix):] for per in values.values() for c in per if c.startswith(prefix)}
    classes = [c for c in PAPER_CLASS_ORDER if c in found] + sorted(found - set(PAPER_CLASS_ORDER))
    for corpus in corpora:
        lines += ["", f"Tables 4-5: detailed test results in corpus {corpus} (%), mean ± std over seeds", "",
                  "| Setting | " + " | ".join(classes) + " | UA | WA | seeds |",
                  "|---|" + "---|" * (len(classes) + 3)]
        for label, v, half in arms:
            per = values[label]
            cells = [_cell(per.get(f"{prefix}{k}.{corpus}"), 100, 2) for k in classes]
            cells += [_cell(per.get(f"test_{m}_emotion.{corpus}"), 100, 2) for m in ("ua", "wa")]
            cells.append(seeds(per, f"test_ua_emotion.{corpus}"))
            lines.append(f"| {name(v, half)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DCGAN_NAMES = {"basic_cnn": "BasicCNN", "multitask_cnn": "MultitaskCNN", "basic_dcgan": "BasicDCGAN",
               "multitask_dcgan": "MultitaskDCGAN"}


def dcgan_tables(values: Values) -> str:
    """The multitask-DCGAN paper's results table: per model, test valence 5-class UA (either label of a rater tie
    accepted), 3-class UA (levels 1-2 / 3 / 4-5) and Pearson r of the expected level, mean ± std over seeds (the
    paper averages the 5 folds' test sets; each seed's value here is already that average)."""
    lines = ["Table: test valence, mean ± std over seeds (5-class and 3-class UA in %)", "",
             "| Model | 5-class UA | 3-class UA | Pearson r | seeds |", "|---|---|---|---|---|"]
    for variant, name in DCGAN_NAMES.items():
        per = values.get(variant)
        if per is None:
            continue
        lines.append(f"| {name} | {_cell(per.get('test_ua5_valence'), 100, 2)} | "
                     f"{_cell(per.get('test_ua3_valence'), 100, 2)} | {_cell(per.get('test_pearson_valence'), 1, 3)} "
                     f"| {len(per.get('test_ua5_valence', ()))} |")
    return "\n".join(lines) + "\n"


AAE_NAMES = {"cnn": "CNN (supervised)", "ae": "AE", "aae_stl": "AAE (STL)", "aae_mtl": "AAE-MTL"}
AUXILIARY_TARGETS = ("gender", "speaker", "style")


def aae_mtl_tables(values: Values) -> str:
    """The semi-supervised AAE paper's results for one sweep (its protocol and primary task): test UA and WA of the
    primary task per model and auxiliary task (Table 3 or 4 by protocol; the AAE-MTL rows are Tables 5-6's ablation),
    the gender task's UA, and the speaker task: verification EER on unseen speakers, or identification accuracy when
    the test speakers are training speakers (speaker 10-fold). %, mean ± std over seeds."""
    found = {c[len("test_ua_"):] for per in values.values() for c in per
             if c.startswith("test_ua_") and "." not in c}
    primaries = sorted(found - set(AUXILIARY_TARGETS))
    rows = []
    for variant, name in AAE_NAMES.items():
        labels = [label for label in values if label.partition("-")[0] == variant]
        for label in sorted(labels, key=lambda x: ("gender" not in x, "speaker" not in x, x)):
            tasks = label.partition("-")[2].removeprefix("aux_tasks")
            rows.append((f"{name} ({tasks})" if tasks else name, values[label]))
    lines = []
    for primary in primaries:
        lines += [f"Test results, primary task {primary} (%), mean ± std over seeds", "",
                  "| Model | UA | WA | gender UA | speaker EER | speaker id acc | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for name, per in rows:
            cells = [_cell(per.get(f"test_{m}"), 100, 2) for m in (f"ua_{primary}", f"wa_{primary}", "ua_gender",
                                                                  "eer_speaker", "acc_speaker_id")]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(per.get(f'test_ua_{primary}', ()))} |")
        lines.append("")
    return "\n".join(lines)


def confusion_table(counts: np.ndarray, names: Sequence[str]) -> str:
    """A confusion matrix (rows: true class, columns: predicted) as a markdown table with row totals."""
    header = "| true \\ predicted | " + " | ".join(names) + " | total |"
    rows = [f"| {name} | " + " | ".join(str(int(c)) for c in row) + f" | {int(row.sum())} |"
            for name, row in zip(names, counts, strict=True)]
    return "\n".join([header, "|---|" + "---|" * (len(names) + 1), *rows]) + "\n"


# family -> its paper's tables from the per-seed values; `emotune report` prints them after the generic table.
PAPER_TABLES = {"center_loss": center_loss_tables, "selective_mtl": selective_mtl_tables, "dcgan": dcgan_tables,
                "aae_mtl": aae_mtl_tables}


def paper_tables(family: str | None, values: Values) -> str:
    """The family's own tables, or "" for a family without any."""
    make = PAPER_TABLES.get(family or "")
    return make(values) if make else ""


def _newest_sweep(experiment: str, tracking_uri: str):
    """``(client, the newest finished sweep's parent run)``, the run None when there is none."""
    from mlflow.tracking import MlflowClient

    from cluster.tracking import ROLE_TAG

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, None
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return client, (runs[0] if runs else None)


def experiment_family(experiment: str, tracking_uri: str) -> str | None:
    """The ``family`` tag of the newest finished sweep of an experiment (None when there is none)."""
    _, run = _newest_sweep(experiment, tracking_uri)
    return run.data.tags.get("family") if run else None


def best_model_confusion(experiment: str, tracking_uri: str) -> str:
    """The newest finished sweep's test confusion matrices of its best model (:data:`BEST_CONFUSION`, logged by the
    driver for class and soft targets), or "" when it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    client, run = _newest_sweep(experiment, tracking_uri)
    if run is None:
        return ""
    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run.info.run_id, BEST_CONFUSION, d)
            with open(path) as f:
                return f.read()
    except (MlflowException, OSError):
        return ""
