"""The ``emotune`` command line: synth, ingest, shards, sweep, report, promote, demo.

Every subcommand validates its arguments before any Ray or MLflow work starts, and exits with status 2 and a
one-line message naming the problem and the fix on bad input (no traceback for user errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster import ray_runtime  # noqa: F401  (sets the loopback / no-usage-stats environment before Ray loads)

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ImportError)


def _parse_feature_params(items: list[str]) -> dict[str, dict]:
    """``["logmel.n_mels=80", ...]`` -> ``{"logmel": {"n_mels": 80}}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        fs, dot, field = key.partition(".")
        if not sep or not dot or not fs or not field:
            raise ValueError(f"--feature-param must look like FEATURE_SET.FIELD=VALUE (e.g. logmel.n_mels=80), "
                             f"got {item!r}")
        try:
            out.setdefault(fs, {})[field] = yaml.safe_load(value)
        except yaml.YAMLError as err:  # its str() spans several lines; the first problem is enough
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--feature-param {item!r}: the value {value!r} is not a YAML value ({problem}); "
                             f"e.g. logmel.n_mels=80 or logmel.fmax=null") from None
    return out


def cmd_synth(args: argparse.Namespace) -> int:
    from data_io import synth

    summary = synth.generate(args.layout, Path(args.out), seed=args.seed, scale=args.scale)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from data_io.ingest import DEFAULT_MAX_SECONDS, ingest

    feature_sets = [f.strip() for f in args.features.split(",") if f.strip()]
    adapter_options = {"manifest": args.manifest} if args.manifest else {}
    name = getattr(args, "name", None)  # cmd_demo builds its own Namespace
    if args.corpus == "csv":
        if name is None:
            raise ValueError("--corpus csv needs --name NAME: the corpus's name, used for its shard folder "
                             "OUT/NAME/ and its rows' corpus column (so two CSV corpora stay apart)")
        adapter_options["name"] = name
    elif name is not None:
        raise ValueError(f"--name is for --corpus csv only; {args.corpus} shards go to OUT/{args.corpus}/")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    started = []

    def ray_map(func, args_list):
        # Ray starts here, after ingest() validated its arguments and found chunks to do.
        started.append(ray_runtime.init_ray(num_cpus=workers))
        return ray_runtime.ray_map_unordered(func, args_list)

    use_ray = workers > 1 or bool(os.environ.get("RAY_ADDRESS"))
    try:
        summary = ingest(args.corpus, Path(args.root), Path(args.out), feature_sets,
                         feature_overrides=_parse_feature_params(args.feature_param),
                         adapter_options=adapter_options, shard_size=args.shard_size,
                         overwrite=args.overwrite, max_seconds=getattr(args, "max_seconds", DEFAULT_MAX_SECONDS),
                         map_unordered=ray_map if use_ray else None,
                         show_progress=not args.quiet)
    finally:
        if any(started):
            import ray

            ray.shutdown()
    print("\n".join(summary.lines()))
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from data_io import shards

    folder = args.path if shards.is_uri(args.path) else Path(args.path)  # s3://, gs://, file:// stay URIs
    ss = shards.open_shards(folder, verify_checksums=args.verify)
    print(shards_summary(ss))
    return 0


def shards_summary(ss) -> str:
    """A few lines describing a shard set: rows, speakers, labels, feature shape, hash."""
    import pyarrow.compute as pc

    meta = ss.metadata(columns=["speaker", "emotion", "arousal", "split", "n_frames", "n_bins"])
    m = ss.manifest
    emotions = pc.value_counts(meta["emotion"]).to_pylist()
    counts = ", ".join(f"{e['values']}: {e['counts']}" for e in emotions)
    splits = ", ".join(f"{e['values']}: {e['counts']}" for e in pc.value_counts(meta["split"]).to_pylist())
    frames = meta["n_frames"].to_numpy()
    return "\n".join([
        f"{ss.folder}: {m.total_rows} utterances in {len(m.files)} shards, corpus {m.corpus}, "
        f"feature set {m.feature_set} ({m.feature_dtype}), schema v{m.schema_version}",
        f"  speakers: {len(pc.unique(meta['speaker']))}; emotions: {counts or 'none'}; splits: {splits or 'none'}",
        f"  feature: frames {int(frames.min()) if len(frames) else 0}-{int(frames.max()) if len(frames) else 0} "
        f"x {meta['n_bins'][0].as_py() if len(frames) else 0} bins; label scale {m.label_scale}",
        f"  manifest hash {ss.content_hash}",
    ])


def build_parser() -> argparse.ArgumentParser:
    from data_io import adapters, audio, features, synth

    p = argparse.ArgumentParser(prog="emotune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic corpus in a real corpus's on-disk layout")
    s.add_argument("--layout", required=True, choices=synth.LAYOUTS)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", default="small", choices=("small", "full"))
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="extract features from a corpus into Parquet shards")
    s.add_argument("--corpus", required=True, choices=sorted(adapters.ADAPTERS))
    s.add_argument("--root", required=True, help="corpus folder as distributed (or its parent)")
    s.add_argument("--features", required=True,
                   help=f"comma-separated feature sets from {sorted(features.PRESETS)}")
    s.add_argument("--out", required=True, help="shard root; shards go to OUT/CORPUS/FEATURE_SET/")
    s.add_argument("--name", default=None,
                   help="csv corpus (required there): its name, so shards go to OUT/NAME/FEATURE_SET/ and rows "
                        "carry corpus NAME")
    s.add_argument("--max-seconds", type=float, default=audio.DEFAULT_MAX_SECONDS,
                   help="quarantine audio files longer than this many seconds (judged from the header, before "
                        "decoding; bounds the memory one file takes)")
    s.add_argument("--shard-size", type=int, default=256, help="utterances per shard")
    s.add_argument("--workers", type=int, default=None, help="parallel Ray tasks (default: all cores; 1 = no Ray)")
    s.add_argument("--overwrite", action="store_true", help="re-ingest from scratch instead of resuming")
    s.add_argument("--manifest", default=None, help="csv corpus: manifest file name inside --root")
    s.add_argument("--feature-param", action="append", default=[], metavar="SET.FIELD=VALUE",
                   help="override a preset field, e.g. logmel.n_mels=80 (repeatable)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("shards", help="summarise (and optionally verify) a shard set")
    s.add_argument("path", help="OUT/CORPUS/FEATURE_SET folder")
    s.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest")
    s.set_defaults(func=cmd_shards)

    s = sub.add_parser("sweep", help="run (or resume) a hyperparameter sweep from a YAML config")
    s.add_argument("config", help="sweep config YAML (see configs/)")
    s.add_argument("--smoke", action="store_true", help="2 trials, 2 epochs, 2 seeds: a quick end-to-end check")
    s.add_argument("--fresh", action="store_true", help="discard the experiment folder instead of resuming")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. search.num_samples=8 (repeatable)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all cores)")
    s.add_argument("--verbose", action="store_true",
                   help="Ray Tune's full output (status tables, results, worker INFO logs) besides emotune's lines")
    s.add_argument("--check", action="store_true",
                   help="run no trial: report what the sweep needs (config, shards, storage, tracking server, "
                        "resources), one OK/FAIL line each; exit 2 if any fails. On a cluster, run it as the job "
                        "would: ray job submit ... -- emotune sweep --check CONFIG")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("report", help="paper-style results table of an MLflow experiment")
    s.add_argument("--experiment", required=True, help="MLflow experiment name (the sweep name by default)")
    s.add_argument("--baseline", default=None, help="variant to test against (one-tailed Welch, p < 0.05)")
    s.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    s.add_argument("--csv", default=None, help="also write the table as CSV to this file")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("promote", help="move the champion alias to the candidate if it wins on validation")
    s.add_argument("--model", required=True, help="registered model name (emotune-<family> by default)")
    s.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    s.add_argument("--candidate", default="candidate", help="alias of the version to promote")
    s.add_argument("--champion", default="champion", help="alias to move")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("demo", help="synth + ingest + sweep + report on the built-in synthetic corpus")
    s.add_argument("--out", default="demo_out", help="working folder for the corpus and shards")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--verbose", action="store_true", help="Ray Tune's full output during the sweep")
    s.add_argument("--family", default="ladder", choices=sorted(DEMOS),
                   help="which family's demo (synthetic corpus, feature sets and demo config) to run")
    s.set_defaults(func=cmd_demo)
    return p


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set must look like FIELD=VALUE (e.g. search.num_samples=8), got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({problem}); quote strings and close "
                             f"brackets, e.g. --set 'model.fixed.hidden=[64, 64]'") from None
    return out


def cmd_sweep(args: argparse.Namespace, *, show_table: bool = True) -> int:
    from cluster.sweep import SMOKE_OVERRIDES, run_sweep

    if getattr(args, "check", False):  # cmd_demo builds its own Namespace, without it
        from cluster.preflight import format_report, run_checks

        overrides = {**(SMOKE_OVERRIDES if args.smoke else {}), **_parse_sets(args.set)}  # what run_sweep would use
        checks = run_checks(Path(args.config), overrides, num_cpus=args.num_cpus)
        print(format_report(checks))
        return 0 if all(c.ok for c in checks) else 2
    result = run_sweep(Path(args.config), smoke=args.smoke, overrides=_parse_sets(args.set), fresh=args.fresh,
                       num_cpus=args.num_cpus, verbose=getattr(args, "verbose", False))
    print(f"\nsweep finished: {result.search_trials} search trials; selected on validation:")
    for key, sel in result.selected.items():
        print(f"  {key}: trial {sel['trial_id']} (val {sel['val_score']:.4f} at epoch {sel['best_epoch']})")
    if result.model_version:
        print(f"registered model version {result.model_version} (alias candidate); MLflow parent run "
              f"{result.parent_run_id}")
    if show_table:
        print("\n" + result.table_markdown.rstrip())
        print(result.ui_hint)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cluster import console
    from cluster.report import best_model_confusion, experiment_family, format_table, paper_tables, values_from_mlflow
    from cluster.tracking import resolve_tracking_uri

    console.configure(verbose=False)

    uri = resolve_tracking_uri(args.tracking_uri)
    values, targets = values_from_mlflow(args.experiment, uri)
    md, table_csv = format_table(values, targets, baseline=args.baseline)
    print(md)
    own = paper_tables(experiment_family(args.experiment, uri), values)
    if own:
        print(own)
    confusion = best_model_confusion(args.experiment, uri)
    if confusion:
        print(confusion)
    if args.csv:
        Path(args.csv).write_text(table_csv)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from cluster.promote import promote
    from cluster.tracking import resolve_tracking_uri

    decision = promote(args.model, resolve_tracking_uri(args.tracking_uri), args.candidate, args.champion)
    print(decision.message)
    # Exit 1 only when the gate refused the candidate; nothing to do (already champion) is not a failure.
    return 0 if decision.promoted or decision.noop else 1


@dataclass(frozen=True)
class Demo:
    """A family's demo: its sweep config in ``configs/`` and the variant the report tests the others against.

    The config names its shard folders under ``../demo_out/shards/<corpus>/<preset>`` (``data.shards``,
    ``data.inputs``, ``data.auxiliary``); ``emotune demo`` synthesises and ingests exactly those corpora and presets
    (:data:`DEMO_CORPORA`) under ``--out`` and points the sweep there.
    """

    config: str
    baseline: str | None = None


DEMOS = {
    "ladder": Demo("demo.yaml", baseline="dnn_mtl"),
    "center_loss": Demo("center_loss_demo.yaml", baseline="s-logmel128"),
    "selective_mtl": Demo("selective_mtl_demo.yaml", baseline="separate"),
    "dcgan": Demo("dcgan_demo.yaml", baseline="basic_cnn"),
    "aae_mtl": Demo("aae_mtl_demo.yaml", baseline="cnn"),
}
# Shard folder name -> (synthetic layout, ingest adapter, csv corpus name).
DEMO_CORPORA = {
    "msp_podcast": ("msp_podcast", "msp_podcast", None),
    "iemocap": ("iemocap", "iemocap", None),
    "callcenter": ("callcenter", "csv", "callcenter"),
    "librispeech": ("librispeech", "librispeech", None),
    "ami": ("ami", "ami", None),
    "msp_improv": ("msp_improv", "msp_improv", None),
}
DEMO_SHARDS = "../demo_out/shards/"  # how demo configs name their shard folders (relative to configs/)


def demo_data(config_path: Path, shard_root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """A demo config's shard folders: ``({corpus: [presets]}, --set overrides re-rooting them under shard_root)``."""
    import json

    import yaml

    data = (yaml.safe_load(config_path.read_text()) or {}).get("data", {})
    needed: dict[str, list[str]] = {}

    def reroot(path: str) -> str:
        if not path.startswith(DEMO_SHARDS):
            raise ValueError(f"{config_path.name}: demo shard folders must start with {DEMO_SHARDS}, got {path!r}")
        corpus, _, preset = path[len(DEMO_SHARDS):].partition("/")
        if corpus not in DEMO_CORPORA:
            raise ValueError(f"{config_path.name}: no synthetic corpus for shard folder {corpus!r}; "
                             f"demo corpora: {sorted(DEMO_CORPORA)}")
        needed.setdefault(corpus, [])
        if preset not in needed[corpus]:
            needed[corpus].append(preset)
        return str((shard_root / corpus / preset).resolve())

    sets = []
    if data.get("shards"):
        sets.append("data.shards=" + json.dumps([reroot(p) for p in data["shards"]]))
    if data.get("inputs"):
        sets.append("data.inputs=" + json.dumps({k: [reroot(p) for p in v] for k, v in data["inputs"].items()}))
    if data.get("auxiliary"):
        aux = [{"shards": a} if isinstance(a, str) else dict(a) for a in data["auxiliary"]]
        sets.append("data.auxiliary=" + json.dumps([{**a, "shards": reroot(a["shards"])} for a in aux]))
    return needed, sets


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's first command: synthetic corpora in real corpora's layouts -> shards -> sweep -> report."""
    import yaml

    from data_io.synth import CORPUS_FOLDERS

    demo = DEMOS[getattr(args, "family", None) or "ladder"]
    config = Path(__file__).resolve().parent.parent / "configs" / demo.config
    out = Path(args.out)
    corpus_root, shard_root = out / "corpus", out / "shards"
    needed, sets = demo_data(config, shard_root)
    for corpus, presets in needed.items():
        layout, adapter, name = DEMO_CORPORA[corpus]
        if not (corpus_root / CORPUS_FOLDERS[layout]).exists():
            cmd_synth(argparse.Namespace(layout=layout, out=str(corpus_root), seed=args.seed, scale="small"))
        cmd_ingest(argparse.Namespace(corpus=adapter, name=name, root=str(corpus_root / CORPUS_FOLDERS[layout]),
                                      out=str(shard_root), features=",".join(presets), manifest=None, workers=None,
                                      shard_size=64, overwrite=False, feature_param=[], quiet=False))
        for preset in presets:
            cmd_shards(argparse.Namespace(path=str(shard_root / corpus / preset), verify=True))
    cmd_sweep(argparse.Namespace(config=str(config), smoke=False, fresh=False, num_cpus=None,
                                 verbose=getattr(args, "verbose", False),
                                 set=[*sets, f"storage.path={(out / 'ray_results').resolve()}"]),
              show_table=False)  # the report below prints the table once, with the significance marks
    raw = yaml.safe_load(config.read_text())
    experiment = (raw.get("tracking") or {}).get("experiment") or raw["name"]  # the sweep's own default
    print()
    cmd_report(argparse.Namespace(experiment=experiment, baseline=demo.baseline, tracking_uri=None, csv=None))
    print(_runs_hint(experiment))
    return 0


def _runs_hint(experiment: str, tracking_uri: str | None = None) -> str:
    """How to open an experiment's runs in the MLflow UI (the direct URL of its runs table)."""
    from mlflow.tracking import MlflowClient

    from cluster.mlflow_ui import ui_hint
    from cluster.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    return ui_hint(uri, exp.experiment_id) if exp is not None else f"no MLflow experiment {experiment!r} at {uri}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"emotune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
