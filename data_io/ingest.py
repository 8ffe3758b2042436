"""Ingestion: corpus adapter -> audio checks -> speech regions + librosa features -> atomic Parquet shards + manifest.

The corpus's utterances (sorted by id) are cut into fixed chunks of ``shard_size``; chunk ``i`` becomes
``part-0000i.parquet`` in every requested feature set's folder ``<out>/<corpus>/<feature set>/``. Each chunk is
one unit of work, so ingestion is:

* **resumable, and redoes exactly what changed**: a chunk is done when its commit record
  ``_progress/chunk-NNNNN.json`` exists, names every requested feature set and carries the chunk's current
  *fingerprint*: a sha256 over, for each of its records, every field of the :class:`UtteranceRecord` that goes
  into the shard (labels, speaker, split, ...), the audio path (and segment) and the audio file's size and
  ``mtime_ns`` (or that it is absent, or the adapter's problem with the row), plus ``max_seconds``. A re-run skips
  done chunks; a chunk whose fingerprint changed (a relabelled CSV row, a replaced or touched audio file, a fixed
  row) is recomputed for every requested feature set and its part replaced atomically (temp file, then rename);
  the manifests are rebuilt, so the manifest hash changes with the data. While such a chunk is redone the feature
  sets' ``_manifest.json`` are removed, so no reader mixes old and new parts. A different utterance list or
  chunking (``plan.json``) is refused: ``--overwrite`` re-ingests from scratch. A rewrite that keeps a file's
  size and mtime to the nanosecond is not noticed.
* **parallel without knowing Ray**: :func:`ingest` takes a ``map_unordered`` callable; ``cluster`` passes one that
  runs chunks as Ray tasks, tests pass none and run in-process (DESIGN.md: Ray at the edge).
* **lossless on bad input**: a bad row or file is quarantined with its reason (``<out>/_quarantine.jsonl``,
  rebuilt from the commit records on every run) and the rest is ingested. Reasons: the adapter's (``bad_row``,
  ``non_finite_label`` for a malformed CSV row), ``non_finite_label`` (a NaN/inf attribute or vote),
  :data:`data_io.audio.REASONS` (missing, undecodable, implausible sample rate, longer than ``max_seconds``
  -- refused from the header, before decoding --, empty, NaN samples, too short, silent), ``non_finite_features``
  (NaN/inf in a feature, in its storage dtype), and ``exception`` for anything else raised while processing that
  one file (type and message in the detail). No single file aborts the run.
* **retrying quarantined files**: a quarantined file is retried whenever its chunk's fingerprint changes, i.e.
  when the file (size, mtime, appearing) or its row changed, since every other check gives the same answer on
  the same input. A chunk with an ``exception`` quarantine (possibly transient: memory, I/O) is retried on every
  run. The summary says how many quarantined files were retried and how many of them are now ingested.

Every ingested row also gets ``speech``: :func:`data_io.audio.speech_regions` at its defaults
(:data:`SPEECH_DETECTION`, recorded in each manifest) on the decoded 16 kHz mono signal, so training can centre
crops and cut windows over speech; ``words`` comes from the adapter's record.

Corpus and feature-set names become folders, so they must be plain names (:func:`data_io.adapters.check_plain_name`):
nothing is written outside ``out``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import librosa
import numpy as np
from tqdm import tqdm

from data_io import adapters, audio, features, shards
from data_io.schema import SAMPLE_RATE, SCHEMA_VERSION, UtteranceRecord

PROGRESS_DIR = "_progress"
PLAN_FILE = "plan.json"
QUARANTINE_FILE = "_quarantine.jsonl"
DEFAULT_SHARD_SIZE = 256
DEFAULT_MAX_SECONDS = audio.DEFAULT_MAX_SECONDS
# Quarantine reason of an unexpected exception while processing one file; such chunks are retried every run.
EXCEPTION_REASON = "exception"
_DETAIL_CHARS = 1000  # an exception message can be huge (a repr of an array); the report keeps its start

# What filled the speech column: speech_regions' keyword defaults plus the fixed reference percentile.
SPEECH_DETECTION = {**audio.SPEECH_DETECTION, "ref_percentile": audio.SPEECH_REF_PERCENTILE,
                    "noise_percentile": audio.SPEECH_NOISE_PERCENTILE}

MapUnordered = Callable[[Callable, Sequence[tuple]], Iterator]


class IngestError(ValueError):
    """Ingestion cannot proceed; the message names the problem and the fix."""


@dataclass
class IngestSummary:
    """What one ``ingest`` call did.

    ``skipped_as_done`` counts rows of chunks finished by an earlier run whose inputs did not change;
    ``chunks_changed`` the chunks redone because their fingerprint changed; ``retried`` the files quarantined by an
    earlier run that were processed again, and ``recovered`` those of them ingested now.
    """

    corpus: str
    out: Path
    feature_sets: list[str]
    ingested: int = 0
    quarantined: int = 0
    skipped_as_done: int = 0
    chunks_total: int = 0
    chunks_done_now: int = 0
    chunks_changed: int = 0
    retried: int = 0
    recovered: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    manifests: dict[str, str] = field(default_factory=dict)  # feature set -> content hash
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human summary, printed by the CLI."""
        out = [
            f"corpus {self.corpus}: ingested {self.ingested} / quarantined {self.quarantined} / "
            f"skipped as done {self.skipped_as_done} utterances "
            f"({self.chunks_done_now} of {self.chunks_total} shards written now, {self.seconds:.1f} s)",
        ]
        if self.chunks_changed:
            out.append(f"  redone because their inputs changed: {self.chunks_changed} shards (labels, metadata, "
                       f"audio file size or mtime, or --max-seconds)")
        if self.retried:
            out.append(f"  retried {self.retried} quarantined files: {self.recovered} now ingested, "
                       f"{self.retried - self.recovered} still quarantined")
        if self.quarantine_reasons:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.quarantine_reasons.items()))
            out.append(f"  quarantined by reason: {reasons} (details in {self.out / QUARANTINE_FILE})")
        for fs, h in self.manifests.items():
            out.append(f"  {fs}: {self.out / self.corpus / fs} (manifest hash {h[:12]})")
        return out


def _json_write_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _config_hash(cfg: features.FeatureConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


class _Quarantine(Exception):
    """One file or row cannot be ingested; ``process_chunk`` records it with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _label_problem(rec: UtteranceRecord) -> str | None:
    """Describe a non-finite (or non-numeric) attribute or rater vote of ``rec``; None when all are fine."""
    values = [(name, getattr(rec, name)) for name in ("arousal", "valence", "dominance")]
    values += [(f"rater_hist[{i}]", v) for i, v in enumerate(rec.rater_hist or ())]
    for name, value in values:
        if value is None:
            continue
        try:
            ok = math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return f"{rec.utt_id}: {name} = {value!r}; labels must be finite numbers (or None)"
    return None


def _process_record(rec: UtteranceRecord, configs: Sequence[features.FeatureConfig], min_samples: int,
                    max_seconds: float, problem: tuple[str, str] | None) -> tuple[dict, dict[str, np.ndarray]]:
    """One utterance's shard row and features; raises to quarantine it."""
    if problem is not None:  # the adapter could not read the row: no audio is touched
        raise _Quarantine(*problem)
    label_problem = _label_problem(rec)
    if label_problem:
        raise _Quarantine("non_finite_label", label_problem)
    y = audio.load_audio(rec.audio_path, sr=SAMPLE_RATE, min_samples=min_samples, max_seconds=max_seconds,
                         segment=rec.segment)
    extracted = {c.name: features.extract(y, c, sr=SAMPLE_RATE) for c in configs}
    # Checked in the storage dtype: a value finite in float32 can overflow float16.
    bad = [c.name for c in configs if not np.isfinite(np.asarray(extracted[c.name]).astype(c.dtype)).all()]
    if bad:  # features guard against this; a NaN that slips through must not reach a model
        raise _Quarantine("non_finite_features", f"{rec.audio_path.name}: non-finite feature values in {bad}")
    speech = audio.speech_regions(y, SAMPLE_RATE, **audio.SPEECH_DETECTION)
    row = {**rec.metadata(), "speech": speech.ravel().tolist(), "duration_s": len(y) / SAMPLE_RATE}
    return row, extracted


def _quarantine_entry(rec: UtteranceRecord, reason: str, detail: str) -> dict:
    if len(detail) > _DETAIL_CHARS:
        detail = detail[:_DETAIL_CHARS] + " [...]"
    return {"utt_id": rec.utt_id, "corpus": rec.corpus, "path": str(rec.audio_path), "reason": reason,
            "detail": detail}


def _tables(rows: list[dict], feats: dict[str, list], configs: Sequence[features.FeatureConfig],
            records: dict[str, UtteranceRecord], quarantined: list[dict]) -> dict:
    """Build each feature set's table; a row the shard writer refuses on its own is quarantined, not fatal."""
    try:
        return {c.name: shards.build_table(rows, feats[c.name], feature_dtype=c.dtype) for c in configs}
    except Exception as chunk_err:  # find the rows at fault (rare: this path costs one small table per row)
        keep = []
        for i, row in enumerate(rows):
            try:
                for c in configs:
                    shards.build_table([row], [feats[c.name][i]], feature_dtype=c.dtype)
                keep.append(i)
            except Exception as err:
                quarantined.append(_quarantine_entry(records[row["utt_id"]], EXCEPTION_REASON,
                                                     f"{type(err).__name__}: {err}"))
        if len(keep) == len(rows):
            raise chunk_err  # not one row's fault (e.g. too many values for one part): the chunk fails
        rows[:] = [rows[i] for i in keep]
        for c in configs:
            feats[c.name] = [feats[c.name][i] for i in keep]
        return {c.name: shards.build_table(rows, feats[c.name], feature_dtype=c.dtype) for c in configs}


def process_chunk(chunk_index: int, records: Sequence[UtteranceRecord], configs: Sequence[features.FeatureConfig],
                  corpus_out: Path, min_samples: int, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                  problems: dict[str, tuple[str, str]] | None = None, fingerprint: str | None = None,
                  replace: bool = False) -> dict:
    """Decode, check and featurise one chunk; write its parts and then its commit record.

    Runs in a Ray task or in-process; touches nothing outside ``corpus_out``. Any exception while processing one
    record quarantines that record (reason ``exception``); only a chunk-wide failure (disk full, a part too
    large) raises.

    Args:
        chunk_index: The chunk's number (its parts are ``part-{chunk_index:05d}.parquet``).
        records: The chunk's utterances.
        configs: Feature sets to compute.
        corpus_out: ``<out>/<corpus>``.
        min_samples: Shortest acceptable signal at 16 kHz.
        max_seconds: Longest acceptable audio file.
        problems: ``utt_id -> (reason, detail)`` from the adapter; those records are quarantined unread.
        fingerprint: The chunk's input fingerprint, stored in the commit record.
        replace: The inputs changed: drop the parts of feature sets not computed now from the commit record
            (they describe the old inputs) instead of keeping them.

    Returns:
        The commit record: ``{"chunk", "rows", "audio_seconds", "quarantined": [...], "parts": {fs: info},
        "fingerprint"}``.
    """
    problems = problems or {}
    rows, feats, quarantined = [], {c.name: [] for c in configs}, []
    for rec in records:
        try:
            row, extracted = _process_record(rec, configs, min_samples, max_seconds, problems.get(rec.utt_id))
        except (_Quarantine, audio.AudioCheckError) as err:
            quarantined.append(_quarantine_entry(rec, err.reason, err.detail))
            continue
        except Exception as err:  # whatever one file does, the others are ingested
            quarantined.append(_quarantine_entry(rec, EXCEPTION_REASON, f"{type(err).__name__}: {err}"))
            continue
        rows.append(row)
        for name, f in extracted.items():
            feats[name].append(f)
    tables = _tables(rows, feats, configs, {r.utt_id: r for r in records}, quarantined)
    parts = {}
    for cfg in configs:
        folder = corpus_out / cfg.name
        folder.mkdir(parents=True, exist_ok=True)
        info = shards.write_shard(tables[cfg.name], folder / f"part-{chunk_index:05d}.parquet")
        parts[cfg.name] = {**info, "config_hash": _config_hash(cfg)}
    commit = {"chunk": chunk_index, "rows": len(rows), "audio_seconds": sum(r["duration_s"] for r in rows),
              "quarantined": quarantined, "parts": parts, "fingerprint": fingerprint}
    # The commit record is written last: its presence is what makes the chunk "done" for a re-run.
    progress = corpus_out / PROGRESS_DIR
    old = _read_commit(progress, chunk_index)
    if old is not None and not replace:  # keep parts of other feature sets that an earlier run wrote
        commit["parts"] = {**old.get("parts", {}), **parts}
    _json_write_atomic(progress / f"chunk-{chunk_index:05d}.json", commit)
    return commit


def _read_commit(progress: Path, chunk_index: int) -> dict | None:
    path = progress / f"chunk-{chunk_index:05d}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn record (impossible with the atomic write, but cheap to survive): redo the chunk


def _serial_map(func: Callable, args_list: Sequence[tuple]) -> Iterator:
    for args in args_list:
        yield func(*args)


def _clean_temp_files(folder: Path) -> None:
    """Remove temp files a killed run left behind (they never match part-*.parquet or *.json)."""
    if not folder.exists():
        return
    for p in folder.rglob("*"):
        if p.is_file() and ".tmp" in p.name:
            p.unlink(missing_ok=True)


def _check_plan(progress: Path, plan: dict) -> None:
    path = progress / PLAN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise IngestError(f"{path} cannot be read ({type(err).__name__}: {err}); pass --overwrite to re-ingest "
                              f"from scratch") from None
        if old != plan:
            changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise IngestError(
                f"{progress.parent} holds an ingest of this corpus with different settings ({', '.join(changed)} "
                f"changed: the corpus files, --shard-size, or this emotune's schema or speech detection differ). "
                f"Use a fresh --out folder, or pass --overwrite to re-ingest from scratch."
            )
    else:
        progress.mkdir(parents=True, exist_ok=True)
        _json_write_atomic(path, plan)


def _file_state(path: Path) -> list:
    """``[size, mtime_ns]`` of a file, or ``["absent", errno]``: what the fingerprint knows of the audio."""
    try:
        st = os.stat(path)
    except OSError as err:
        return ["absent", err.errno]
    return [st.st_size, st.st_mtime_ns]


def _chunk_fingerprint(records: Sequence[UtteranceRecord], problems: dict[str, tuple[str, str]],
                       max_seconds: float) -> str:
    """sha256 over what makes a chunk's rows: every record's shard metadata, path, segment and audio file state
    (or the adapter's problem with the row), and ``max_seconds``."""
    h = hashlib.sha256(json.dumps({"max_seconds": float(max_seconds)}).encode())
    for rec in records:
        problem = problems.get(rec.utt_id)
        entry = {"record": rec.metadata(), "path": str(rec.audio_path),
                 "input": list(problem) if problem else _file_state(rec.audio_path)}
        if rec.segment is not None:  # only then, so whole-file records keep their fingerprints
            entry["segment"] = list(rec.segment)
        h.update(json.dumps(entry, sort_keys=True, default=repr).encode() + b"\n")
    return h.hexdigest()


def _probe_features(configs: Sequence[features.FeatureConfig], min_samples: int) -> None:
    """Extract every feature set from one second of noise, so a parameter that cannot work fails here, once,
    instead of quarantining every file."""
    y = (0.1 * np.random.default_rng(0).standard_normal(max(min_samples, SAMPLE_RATE))).astype(np.float32)
    for cfg in configs:
        try:
            features.extract(y, cfg, sr=SAMPLE_RATE)
        except ImportError:
            raise
        except Exception as err:
            raise IngestError(f"feature set {cfg.name!r} cannot be extracted with these parameters: "
                              f"{type(err).__name__}: {err}") from None


def ingest(corpus: str, root: Path, out: Path, feature_sets: Iterable[str], *,
           feature_overrides: dict[str, dict] | None = None, adapter_options: dict | None = None,
           shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
           max_seconds: float = DEFAULT_MAX_SECONDS, map_unordered: MapUnordered | None = None,
           show_progress: bool = False) -> IngestSummary:
    """Ingest a corpus into Parquet shards, one folder per feature set.

    Args:
        corpus: Adapter name (``iemocap``, ``msp_podcast``, ``msp_improv``, ``librispeech``, ``csv``, ``ami``).
        root: The corpus folder as distributed (or the folder holding it).
        out: Output root; shards go to ``out/<corpus name>/<feature_set>/``. The corpus name is the adapter's
            name, except for ``csv``, whose ``name`` option sets it (default ``csv``).
        feature_sets: Preset names from ``data_io.features.PRESETS``.
        feature_overrides: Per feature set, overrides of preset fields (e.g. ``{"logmel": {"n_mels": 80}}``).
        adapter_options: Extra adapter options (e.g. ``{"manifest": "labels.csv", "name": "calls"}`` for ``csv``).
        shard_size: Utterances per shard.
        overwrite: Delete ``out/<corpus name>`` first instead of resuming.
        max_seconds: Longest audio file ingested; longer ones are quarantined (``too_long``) from their header,
            before decoding, so it also bounds the memory one file takes.
        map_unordered: ``(func, [args, ...]) -> iterator of results`` in any order; None runs in-process. Called
            only after every check passed and only when chunks remain (so a bad argument never starts Ray).
        show_progress: Show a progress bar (utterances) on stderr.

    Returns:
        An :class:`IngestSummary`.

    Raises:
        IngestError: Settings that conflict with an earlier ingest into the same folder, bad arguments (a feature
            set or corpus name that is not a plain name, ``out`` that is a file, parameters a feature set cannot
            be extracted with), or a CSV manifest none of whose rows can be read.
        ValueError, FileNotFoundError: From the adapter (no corpus under ``root``, a malformed label file).
    """
    t0 = time.perf_counter()
    feature_sets = list(dict.fromkeys(feature_sets))
    if not feature_sets:
        raise IngestError("--features must name at least one feature set, e.g. --features logmel,functionals")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise IngestError(f"--shard-size must be an integer >= 1, got {shard_size!r}")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not (
            math.isfinite(max_seconds) and max_seconds > 0):
        raise IngestError(f"--max-seconds must be a finite number > 0, got {max_seconds!r}")
    overrides = feature_overrides or {}
    unknown = sorted(set(overrides) - set(feature_sets))
    if unknown:
        raise IngestError(f"feature overrides given for {unknown}, which are not in --features {feature_sets}")
    configs = [features.resolve_feature_set(name, overrides.get(name)) for name in feature_sets]
    names = [adapters.check_plain_name(c.name, f"the feature set name of {fs!r} (its shard folder)")
             for fs, c in zip(feature_sets, configs, strict=True)]
    if len(set(names)) != len(names):
        raise IngestError(f"two feature sets would share a shard folder: names {names}; give each its own "
                          f"name (e.g. --feature-param logmel.name=logmel80)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out} is a file; pass a folder (it is created if missing)")
    adapter = adapters.get_adapter(corpus, Path(root), **(adapter_options or {}))
    corpus_name = adapters.check_plain_name(adapter.name, "the corpus name")
    records = adapter.records()
    problems = dict(adapter.problems)
    if not records:
        raise IngestError(f"the {corpus} adapter found no labelled utterances under {root}; check --root")
    if len(problems) == len(records):  # a format problem, not a few bad rows: say so before any work
        first = next(iter(problems.values()))
        raise IngestError(f"none of the {len(records)} entries under {root} can be read; the first: {first[1]}")
    min_samples = max(features.min_samples(c) for c in configs)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IngestError(f"--out {out} cannot be created: {err}") from None
    corpus_out = out / corpus_name
    if corpus_out.exists() and not corpus_out.is_dir():
        raise IngestError(f"{corpus_out} is a file, not a shard folder; move it or pass another --out")
    if overwrite and corpus_out.exists():
        shutil.rmtree(corpus_out)
    progress_dir = corpus_out / PROGRESS_DIR
    _clean_temp_files(corpus_out)
    chunks = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    ids_hash = hashlib.sha256("\n".join(r.utt_id for r in records).encode()).hexdigest()
    _check_plan(progress_dir, {"schema_version": SCHEMA_VERSION, "shard_size": shard_size,
                               "n_chunks": len(chunks), "utt_ids_sha256": ids_hash, "corpus": corpus_name,
                               "speech_detection": SPEECH_DETECTION})

    summary = IngestSummary(corpus=corpus_name, out=out, feature_sets=feature_sets, chunks_total=len(chunks))
    wanted = {c.name: _config_hash(c) for c in configs}
    todo, commits, retried = [], {}, {}
    for i, chunk in enumerate(chunks):
        commit = _read_commit(progress_dir, i)
        parts = (commit or {}).get("parts", {})
        for name, h in wanted.items():
            if name in parts and parts[name].get("config_hash") != h:
                raise IngestError(
                    f"{corpus_out / name} was ingested with other {name} parameters; use a fresh --out, "
                    f"a different feature-set name, or --overwrite"
                )
        chunk_problems = {r.utt_id: problems[r.utt_id] for r in chunk if r.utt_id in problems}
        fingerprint = _chunk_fingerprint(chunk, chunk_problems, max_seconds)
        have = [c for c in configs if c.name in parts and (corpus_out / c.name / parts[c.name]["name"]).exists()]
        changed = commit is not None and commit.get("fingerprint") != fingerprint
        transient = commit is not None and any(q.get("reason") == EXCEPTION_REASON
                                               for q in commit.get("quarantined", []))
        if commit is not None and not changed and not transient and len(have) == len(configs):
            commits[i] = commit
            summary.skipped_as_done += commit["rows"]
            continue
        summary.chunks_changed += changed
        # Changed inputs (or a possibly transient failure): every requested feature set is recomputed. Otherwise
        # only the missing ones are; audio is decoded once for all of them.
        redo = configs if changed or transient else [c for c in configs if c not in have]
        if commit is not None:
            retried[i] = {q["utt_id"] for q in commit.get("quarantined", [])}
        todo.append((i, chunk, redo, corpus_out, min_samples,
                     {"max_seconds": max_seconds, "problems": chunk_problems, "fingerprint": fingerprint,
                      "replace": changed or transient}))

    if todo:
        _probe_features(configs, min_samples)
    if any(t[5]["replace"] for t in todo):
        for cfg in configs:  # parts are about to be replaced: no reader may pair the old manifest with them
            (corpus_out / cfg.name / shards.MANIFEST_NAME).unlink(missing_ok=True)
    runner = (map_unordered or _serial_map) if todo else _serial_map
    bar = tqdm(total=sum(len(t[1]) for t in todo), unit="utt", desc=f"ingest {corpus_name}",
               disable=not show_progress or not todo)
    for commit in runner(_run_chunk, todo):
        i = commit["chunk"]
        commits[i] = commit
        summary.ingested += commit["rows"]
        summary.audio_seconds += commit["audio_seconds"]
        summary.chunks_done_now += 1
        if i in retried:
            still = {q["utt_id"] for q in commit["quarantined"]}
            summary.retried += len(retried[i])
            summary.recovered += len(retried[i] - still)
        bar.update(commit["rows"] + len(commit["quarantined"]))
    bar.close()

    for commit in commits.values():
        summary.quarantined += len(commit["quarantined"])
        for q in commit["quarantined"]:
            summary.quarantine_reasons[q["reason"]] = summary.quarantine_reasons.get(q["reason"], 0) + 1
    _write_quarantine_report(out)
    for cfg in configs:
        manifest = _build_manifest(corpus_name, cfg, adapter.label_scale, commits, len(chunks))
        shards.write_manifest(corpus_out / cfg.name, manifest)
        summary.manifests[cfg.name] = manifest.content_hash
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_chunk(chunk_index: int, records: Sequence[UtteranceRecord], configs: Sequence[features.FeatureConfig],
               corpus_out: Path, min_samples: int, options: dict) -> dict:
    """:func:`process_chunk` with its keyword options as one positional argument (``map_unordered`` passes
    positional arguments only)."""
    return process_chunk(chunk_index, records, configs, corpus_out, min_samples, **options)


def _build_manifest(corpus: str, cfg: features.FeatureConfig, label_scale, commits: dict[int, dict],
                    n_chunks: int) -> shards.Manifest:
    files = []
    for i in range(n_chunks):
        info = commits[i]["parts"][cfg.name]
        files.append({k: info[k] for k in ("name", "rows", "bytes", "sha256")})
    return shards.Manifest(
        schema_version=SCHEMA_VERSION, corpus=corpus, feature_set=cfg.name, feature_config=cfg.to_dict(),
        librosa_version=librosa.__version__, label_scale=list(label_scale) if label_scale else None,
        feature_dtype=cfg.dtype, speech_detection=dict(SPEECH_DETECTION), files=files,
        total_rows=sum(f["rows"] for f in files),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _write_quarantine_report(out: Path) -> None:
    """Rebuild ``<out>/_quarantine.jsonl`` from every corpus's chunk records (so resumed runs lose nothing)."""
    lines = []
    for record in sorted(out.glob(f"*/{PROGRESS_DIR}/chunk-*.json")):
        try:
            commit = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # a torn record: its chunk is redone by the next ingest of that corpus
        lines.extend(json.dumps(q, sort_keys=True) for q in commit.get("quarantined", []))
    tmp = out / f".{QUARANTINE_FILE}.tmp-{os.getpid()}"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / QUARANTINE_FILE)
