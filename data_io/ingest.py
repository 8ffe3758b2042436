"""Ingestion: corpus adapter -> audio checks -> speech regions + librosa features -> atomic Parquet shards + manifest.

The corpus's utterances (sorted by id) are cut into fixed chunks of ``shard_size``; chunk ``i`` becomes
``part-0000i.parquet`` in every requested feature set's folder. Each chunk is one unit of work, so ingestion is:

* **resumable and idempotent**: a chunk is done when its commit record ``_progress/chunk-NNNNN.json`` exists and
  names every requested feature set; a re-run skips done chunks and redoes the rest. Parts are written
  atomically (temp file, then rename) and named by chunk, so a killed run never leaves a partial or duplicate row.
* **parallel without knowing Ray**: :func:`ingest` takes a ``map_unordered`` callable; ``cluster`` passes one that
  runs chunks as Ray tasks, tests pass none and run in-process (DESIGN.md: Ray at the edge).
* **lossless on bad input**: a file that is missing, fails to decode, is empty, NaN, silent or shorter than one
  analysis window is quarantined with its reason (``<out>/_quarantine.jsonl``) and the rest is ingested.

Every ingested row also gets ``speech``: :func:`data_io.audio.speech_regions` at its defaults
(:data:`SPEECH_DETECTION`, recorded in each manifest) on the decoded 16 kHz mono signal, so training can centre
crops and cut windows over speech; ``words`` comes from the adapter's record.
"""

from __future__ import annotations

import hashlib
import json
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

# What filled the speech column: speech_regions' keyword defaults plus the fixed reference percentile.
SPEECH_DETECTION = {**audio.SPEECH_DETECTION, "ref_percentile": audio.SPEECH_REF_PERCENTILE,
                    "noise_percentile": audio.SPEECH_NOISE_PERCENTILE}

MapUnordered = Callable[[Callable, Sequence[tuple]], Iterator]


class IngestError(ValueError):
    """Ingestion cannot proceed; the message names the problem and the fix."""


@dataclass
class IngestSummary:
    """What one ``ingest`` call did. ``skipped_as_done`` counts rows of chunks finished by an earlier run."""

    corpus: str
    out: Path
    feature_sets: list[str]
    ingested: int = 0
    quarantined: int = 0
    skipped_as_done: int = 0
    chunks_total: int = 0
    chunks_done_now: int = 0
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


def process_chunk(chunk_index: int, records: Sequence[UtteranceRecord], configs: Sequence[features.FeatureConfig],
                  corpus_out: Path, min_samples: int) -> dict:
    """Decode, check and featurise one chunk; write its parts and then its commit record.

    Runs in a Ray task or in-process; touches nothing outside ``corpus_out``.

    Returns:
        The commit record: ``{"chunk", "rows", "audio_seconds", "quarantined": [...], "parts": {fs: info}}``.
    """
    rows, feats, quarantined = [], {c.name: [] for c in configs}, []
    audio_seconds = 0.0
    for rec in records:
        try:
            y = audio.load_audio(rec.audio_path, sr=SAMPLE_RATE, min_samples=min_samples)
            extracted = {c.name: features.extract(y, c, sr=SAMPLE_RATE) for c in configs}
        except audio.AudioCheckError as err:
            quarantined.append({"utt_id": rec.utt_id, "corpus": rec.corpus, "path": str(rec.audio_path),
                                "reason": err.reason, "detail": err.detail})
            continue
        bad = [name for name, f in extracted.items() if not np.isfinite(f).all()]
        if bad:  # features guard against this; a NaN that slips through must not reach a model
            quarantined.append({"utt_id": rec.utt_id, "corpus": rec.corpus, "path": str(rec.audio_path),
                                "reason": "non_finite", "detail": f"non-finite feature values in {bad}"})
            continue
        duration = len(y) / SAMPLE_RATE
        audio_seconds += duration
        speech = audio.speech_regions(y, SAMPLE_RATE, **audio.SPEECH_DETECTION)
        rows.append({**rec.metadata(), "speech": speech.ravel().tolist(), "duration_s": duration})
        for name, f in extracted.items():
            feats[name].append(f)
    parts = {}
    for cfg in configs:
        folder = corpus_out / cfg.name
        folder.mkdir(parents=True, exist_ok=True)
        table = shards.build_table(rows, feats[cfg.name], feature_dtype=cfg.dtype)
        info = shards.write_shard(table, folder / f"part-{chunk_index:05d}.parquet")
        parts[cfg.name] = {**info, "config_hash": _config_hash(cfg)}
    commit = {"chunk": chunk_index, "rows": len(rows), "audio_seconds": audio_seconds,
              "quarantined": quarantined, "parts": parts}
    # The commit record is written last: its presence is what makes the chunk "done" for a re-run.
    progress = corpus_out / PROGRESS_DIR
    old = _read_commit(progress, chunk_index)
    if old is not None:  # keep parts of feature sets that an earlier run wrote and this one did not redo
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
        old = json.loads(path.read_text())
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


def ingest(corpus: str, root: Path, out: Path, feature_sets: Iterable[str], *,
           feature_overrides: dict[str, dict] | None = None, adapter_options: dict | None = None,
           shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
           map_unordered: MapUnordered | None = None, show_progress: bool = False,
           ) -> IngestSummary:
    """Ingest a corpus into Parquet shards, one folder per feature set.

    Args:
        corpus: Adapter name (``iemocap``, ``msp_podcast``, ``msp_improv``, ``librispeech``, ``csv``).
        root: The corpus folder as distributed (or the folder holding it).
        out: Output root; shards go to ``out/<corpus>/<feature_set>/``.
        feature_sets: Preset names from ``data_io.features.PRESETS``.
        feature_overrides: Per feature set, overrides of preset fields (e.g. ``{"logmel": {"n_mels": 80}}``).
        adapter_options: Extra adapter options (e.g. ``{"manifest": "labels.csv"}`` for ``csv``).
        shard_size: Utterances per shard.
        overwrite: Delete ``out/<corpus>`` first instead of resuming.
        map_unordered: ``(func, [args, ...]) -> iterator of results`` in any order; None runs in-process. Called
            only after every check passed and only when chunks remain (so a bad argument never starts Ray).
        show_progress: Show a progress bar (utterances) on stderr.

    Returns:
        An :class:`IngestSummary`.

    Raises:
        IngestError: Settings that conflict with an earlier ingest into the same folder, or bad arguments.
    """
    t0 = time.perf_counter()
    feature_sets = list(dict.fromkeys(feature_sets))
    if not feature_sets:
        raise IngestError("--features must name at least one feature set, e.g. --features logmel,functionals")
    if shard_size < 1:
        raise IngestError(f"--shard-size must be >= 1, got {shard_size}")
    overrides = feature_overrides or {}
    unknown = sorted(set(overrides) - set(feature_sets))
    if unknown:
        raise IngestError(f"feature overrides given for {unknown}, which are not in --features {feature_sets}")
    configs = [features.resolve_feature_set(name, overrides.get(name)) for name in feature_sets]
    adapter = adapters.get_adapter(corpus, Path(root), **(adapter_options or {}))
    records = adapter.records()
    if not records:
        raise IngestError(f"the {corpus} adapter found no labelled utterances under {root}; check --root")
    min_samples = max(features.min_samples(c) for c in configs)

    out = Path(out)
    corpus_out = out / corpus
    if overwrite and corpus_out.exists():
        shutil.rmtree(corpus_out)
    progress_dir = corpus_out / PROGRESS_DIR
    _clean_temp_files(corpus_out)
    chunks = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    ids_hash = hashlib.sha256("\n".join(r.utt_id for r in records).encode()).hexdigest()
    _check_plan(progress_dir, {"schema_version": SCHEMA_VERSION, "shard_size": shard_size,
                               "n_chunks": len(chunks), "utt_ids_sha256": ids_hash, "corpus": corpus,
                               "speech_detection": SPEECH_DETECTION})

    summary = IngestSummary(corpus=corpus, out=out, feature_sets=feature_sets, chunks_total=len(chunks))
    wanted = {c.name: _config_hash(c) for c in configs}
    todo, commits = [], {}
    for i, chunk in enumerate(chunks):
        commit = _read_commit(progress_dir, i)
        parts = (commit or {}).get("parts", {})
        for name, h in wanted.items():
            if name in parts and parts[name].get("config_hash") != h:
                raise IngestError(
                    f"{corpus_out / name} was ingested with other {name} parameters; use a fresh --out, "
                    f"a different feature-set name, or --overwrite"
                )
        done = commit is not None and all(
            name in parts and (corpus_out / name / parts[name]["name"]).exists() for name in wanted)
        if done:
            commits[i] = commit
            summary.skipped_as_done += commit["rows"]
        else:
            # Only the missing feature sets are computed; audio is decoded once for all of them.
            missing = [c for c in configs if c.name not in parts
                       or not (corpus_out / c.name / parts[c.name]["name"]).exists()]
            todo.append((i, chunk, missing, corpus_out, min_samples))

    runner = (map_unordered or _serial_map) if todo else _serial_map
    bar = tqdm(total=sum(len(t[1]) for t in todo), unit="utt", desc=f"ingest {corpus}",
               disable=not show_progress or not todo)
    for commit in runner(process_chunk, todo):
        commits[commit["chunk"]] = commit
        summary.ingested += commit["rows"]
        summary.audio_seconds += commit["audio_seconds"]
        summary.chunks_done_now += 1
        bar.update(commit["rows"] + len(commit["quarantined"]))
    bar.close()

    for commit in commits.values():
        summary.quarantined += len(commit["quarantined"])
        for q in commit["quarantined"]:
            summary.quarantine_reasons[q["reason"]] = summary.quarantine_reasons.get(q["reason"], 0) + 1
    _write_quarantine_report(out)
    for cfg in configs:
        manifest = _build_manifest(corpus, cfg, adapter.label_scale, commits, len(chunks))
        shards.write_manifest(corpus_out / cfg.name, manifest)
        summary.manifests[cfg.name] = manifest.content_hash
    summary.seconds = time.perf_counter() - t0
    return summary


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
        commit = json.loads(record.read_text())
        lines.extend(json.dumps(q, sort_keys=True) for q in commit["quarantined"])
    tmp = out / f".{QUARANTINE_FILE}.tmp-{os.getpid()}"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / QUARANTINE_FILE)
