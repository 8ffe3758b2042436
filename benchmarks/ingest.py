"""Ingestion and shard-read throughput on one core: real-time factor per feature set, shard read vs ``np.load``.

Part 1, ingest: a synthetic MSP-Podcast corpus (``data_io.synth``; its generation is timed but excluded) is
ingested in-process (``ingest(..., map_unordered=None)``, one worker process, BLAS held to one thread) once per
feature set, each into a fresh output folder. The number is the end-to-end real-time factor per core::

    RTF/core = seconds of audio ingested / (wall seconds x worker processes)

End to end means adapter listing + decode + checks + features + Parquet write (fsync, sha256) + manifest. A
warm-up first times the first and second call of each stage (adapter listing, decode, ``features.extract`` per
feature set, one ``process_chunk``), so first-call costs (librosa filter banks, window caches, lazy imports, the
Parquet writer) are reported on their own lines instead of landing in the first feature set's number. The
CPU-time RTF printed next to it is what one core delivers when nothing else runs (wall > CPU means another
process took the core, or fsync waited on the disk).

Part 2, shard read: ``--rows`` utterances of float32 frame features (``--frames`` on average x ``--bins``,
log-mel-like values) are written with ``data_io.shards.build_table``/``write_shard``/``write_manifest`` in parts
of ``--rows-per-part``; ``open_shards(...).read_all()`` is timed against ``np.load`` of the same values saved as
one ``.npy`` (best of ``--repeats``, page cache warm, MB = 1e6 bytes of float32 feature payload).

No number here is asserted; targets are printed next to the measurements. Usage::

    .venv/bin/python benchmarks/ingest.py            # full: scale=full corpus, 2000 x ~500 x 64 shard set
    .venv/bin/python benchmarks/ingest.py --smoke    # tiny sizes, ~15 s
    .venv/bin/python benchmarks/ingest.py --profile functionals   # cProfile one feature set's ingest
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

FEATURE_SETS = ("logmel", "mfcc", "fbank40", "spectrogram", "functionals")
# Real-time factor per core each feature set should reach (None: no target set).
RTF_TARGETS = {"logmel": 1000.0, "functionals": 80.0}
READ_TARGET_MBS = 400.0
MB = 1e6


def _fmt_target(value: float, target: float | None, unit: str) -> str:
    if target is None:
        return "-"
    return f">= {target:g}{unit} ({'met' if value >= target else 'MISSED'})"


# ---- part 1: ingest ----------------------------------------------------------------------------------------

def warm_up(feature_sets: list[str], corpus_dir: Path, work: Path) -> list[tuple[str, float, float]]:
    """Time first and second calls of each stage, so one-time costs do not land in the first feature set.

    Stages: the adapter's record listing, one audio decode, ``features.extract`` of a 2 s signal per feature set,
    and ``process_chunk`` of 8 utterances with every feature set (Parquet writer, hashing, fsync).

    Returns:
        ``(stage, first_call_s, second_call_s)`` rows.
    """
    from data_io import adapters, audio, features
    from data_io.ingest import process_chunk
    from data_io.schema import SAMPLE_RATE

    def twice(fn) -> tuple[float, float]:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times[0], times[1]

    records = adapters.get_adapter("msp_podcast", corpus_dir).records()
    rows = [("adapter records()", *twice(lambda: adapters.get_adapter("msp_podcast", corpus_dir).records()))]
    rows.append(("audio decode (1 file)", *twice(lambda: audio.load_audio(records[0].audio_path, sr=SAMPLE_RATE))))
    y = np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32) * 0.1
    configs = [features.resolve_feature_set(name) for name in feature_sets]
    for cfg in configs:
        rows.append((f"extract {cfg.name} (2 s)", *twice(lambda cfg=cfg: features.extract(y, cfg, sr=SAMPLE_RATE))))
    min_samples = max(features.min_samples(c) for c in configs)
    (work / "warm-up" / "_progress").mkdir(parents=True)  # ingest() makes it before any chunk runs
    calls = iter(range(2))
    rows.append(("process_chunk (8 utts)", *twice(
        lambda: process_chunk(next(calls), records[:8], configs, work / "warm-up", min_samples))))
    return rows


def bench_ingest(corpus_dir: Path, work: Path, feature_sets: list[str], shard_size: int) -> list[dict]:
    """Ingest the corpus once per feature set into a fresh folder; wall and CPU seconds of each ``ingest()``."""
    from data_io.ingest import ingest

    out = []
    for i, name in enumerate(feature_sets):
        dest = work / f"ingest-{i}-{name}"  # fresh per run: a folder that holds the set would be skipped as done
        c0, t0 = time.process_time(), time.perf_counter()
        summary = ingest("msp_podcast", corpus_dir, dest, [name], shard_size=shard_size, map_unordered=None)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append({"name": name, "wall": wall, "cpu": cpu, "audio_s": summary.audio_seconds,
                    "rows": summary.ingested, "quarantined": summary.quarantined})
    return out


def profile_ingest(corpus_dir: Path, work: Path, name: str, shard_size: int, top: int = 25) -> str:
    """cProfile of one feature set's in-process ingest, sorted by own time (``tottime``)."""
    from data_io.ingest import ingest

    prof = cProfile.Profile()
    prof.enable()
    ingest("msp_podcast", corpus_dir, work / f"profile-{name}", [name], shard_size=shard_size)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# ---- part 2: shard read ------------------------------------------------------------------------------------

def _bench_rows(start: int, frames: np.ndarray) -> list[dict]:
    rows = []
    for k, t in enumerate(frames):
        i = start + k
        rows.append({"utt_id": f"bench_{i:06d}", "corpus": "bench", "speaker": f"spk_{i % 64:03d}",
                     "gender": "FM"[i % 2], "session": None, "split": ("train", "validation", "test")[i % 3],
                     "style": "spontaneous", "emotion": "neutral", "arousal": 4.0, "valence": 4.0,
                     "dominance": 4.0, "rater_hist": None, "speech": [0.0, float(t) * 0.01], "words": None,
                     "duration_s": float(t) * 0.01})
    return rows


def write_shard_set(folder: Path, n_rows: int, mean_frames: int, n_bins: int, rows_per_part: int,
                    seed: int = 0) -> np.ndarray:
    """Write a shard set of random log-mel-like float32 features; return every value, flat, in shard order.

    Frame counts are uniform in [0.5, 1.5] x ``mean_frames`` (utterances differ in length); the values have
    random mantissas, like real log-mel energies, so no codec could cheat.
    """
    from data_io import shards
    from data_io.schema import SCHEMA_VERSION

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    frames = rng.integers(max(1, mean_frames // 2), mean_frames * 3 // 2 + 1, size=n_rows)
    files, flat = [], []
    for part, start in enumerate(range(0, n_rows, rows_per_part)):
        fr = frames[start:start + rows_per_part]
        feats = [(rng.standard_normal((int(t), n_bins), dtype=np.float32) * 2.0 - 6.0) for t in fr]
        flat.extend(f.reshape(-1) for f in feats)
        table = shards.build_table(_bench_rows(start, fr), feats, feature_dtype="float32")
        files.append(shards.write_shard(table, folder / f"part-{part:05d}.parquet"))
    manifest = shards.Manifest(
        schema_version=SCHEMA_VERSION, corpus="bench", feature_set="logmel_bench",
        feature_config={"name": "logmel_bench", "n_bins": n_bins, "random": True}, librosa_version="n/a",
        label_scale=[1.0, 7.0], feature_dtype="float32", speech_detection={}, files=files, total_rows=n_rows,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    shards.write_manifest(folder, manifest)
    return np.concatenate(flat)


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall seconds of ``repeats`` calls after one untimed warm call, and that call's CPU seconds."""
    fn()
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = min(best, (wall, cpu))
    return best


def bench_read(work: Path, n_rows: int, mean_frames: int, n_bins: int, rows_per_part: int,
               repeats: int) -> dict:
    """Time ``open_shards(...).read_all()`` and ``np.load`` of the same payload (best of ``repeats``)."""
    from data_io import shards

    folder = work / "read" / "bench" / "logmel_bench"
    t0 = time.perf_counter()
    values = write_shard_set(folder, n_rows, mean_frames, n_bins, rows_per_part)
    write_s = time.perf_counter() - t0
    npy = work / "read" / "values.npy"
    np.save(npy, values)
    _, got, _, _ = shards.open_shards(folder).read_all()
    if not np.array_equal(got, values):  # a fast read of the wrong values would be no result
        raise RuntimeError("read_all returned other values than were written")
    del got
    shard_wall, shard_cpu = _best(lambda: shards.open_shards(folder).read_all(), repeats)
    npy_wall, npy_cpu = _best(lambda: np.load(npy), repeats)
    parts = sorted(folder.glob("part-*.parquet"))
    return {"payload_mb": values.nbytes / MB, "files_mb": sum(p.stat().st_size for p in parts) / MB,
            "parts": len(parts), "write_s": write_s, "shard_wall": shard_wall, "shard_cpu": shard_cpu,
            "npy_wall": npy_wall, "npy_cpu": npy_cpu}


# ---- main --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (< 60 s): small corpus, small shard set")
    p.add_argument("--scale", choices=("small", "full"), default=None,
                   help="synthetic corpus scale (default: full; small with --smoke)")
    p.add_argument("--features", default=",".join(FEATURE_SETS), help="comma-separated feature sets")
    p.add_argument("--shard-size", type=int, default=256, help="utterances per ingest shard")
    p.add_argument("--rows", type=int, default=None, help="shard-read rows (default 2000; 200 with --smoke)")
    p.add_argument("--frames", type=int, default=500, help="shard-read mean frames per row")
    p.add_argument("--bins", type=int, default=64, help="shard-read bins per frame")
    p.add_argument("--rows-per-part", type=int, default=256, help="shard-read rows per part file")
    p.add_argument("--repeats", type=int, default=3, help="shard-read timings to take the best of")
    p.add_argument("--skip-ingest", action="store_true", help="only the shard-read part")
    p.add_argument("--skip-read", action="store_true", help="only the ingest part")
    p.add_argument("--profile", metavar="FEATURE_SET", default=None,
                   help="also print a cProfile (top own time) of this feature set's ingest")
    p.add_argument("--tmpdir", default=None, help="parent of the temporary work folder (default: system temp)")
    args = p.parse_args(argv)
    scale = args.scale or ("small" if args.smoke else "full")
    rows = args.rows or (200 if args.smoke else 2000)
    feature_sets = [f.strip() for f in args.features.split(",") if f.strip()]

    print(f"emotune ingest benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  "
          f"python {platform.python_version()}  {_cpu_line()}")
    print("one worker process, BLAS limited to 1 thread; timings are noisy when other jobs share the cores "
          "(compare wall and CPU columns)\n")
    with tempfile.TemporaryDirectory(prefix="emotune-bench-ingest-", dir=args.tmpdir) as tmp, \
            threadpool_limits(limits=1):
        work = Path(tmp)
        if not args.skip_ingest:
            _run_ingest(work, scale, feature_sets, args.shard_size, args.profile)
        if not args.skip_read:
            _run_read(work, rows, args.frames, args.bins, args.rows_per_part, args.repeats)


def _cpu_line() -> str:
    import os

    n = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{n} cores, load avg {load:.2f}"


def _run_ingest(work: Path, scale: str, feature_sets: list[str], shard_size: int, profile: str | None) -> None:
    from data_io import synth

    t0 = time.perf_counter()
    import data_io.ingest  # noqa: F401  (librosa, pyarrow, scipy: import cost reported, not counted)

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = synth.generate("msp_podcast", work / "corpus", scale=scale)
    gen_s = time.perf_counter() - t0
    corpus_dir = Path(info["corpus_dir"])
    print(f"== ingest: synthetic msp_podcast scale={scale}: {info['n_utterances']} utterances, "
          f"{info['audio_seconds']:.0f} s of audio (generated in {gen_s:.1f} s, excluded)")
    print(f"import data_io.ingest: {import_s:.2f} s (excluded)")
    print("warm-up, excluded from the RTF below (first call / second call):")
    for name, first, second in warm_up(feature_sets, corpus_dir, work):
        print(f"  {name:28s} {first * 1e3:9.1f} ms / {second * 1e3:7.1f} ms")
    results = bench_ingest(corpus_dir, work, feature_sets, shard_size)
    print(f"\n{'feature set':12s} {'rows':>5s} {'audio s':>8s} {'wall s':>7s} {'cpu s':>7s} "
          f"{'RTF/core':>9s} {'RTF/cpu-s':>9s}  target")
    for r in results:
        rtf, rtf_cpu = r["audio_s"] / r["wall"], r["audio_s"] / max(r["cpu"], 1e-9)
        target = RTF_TARGETS.get(r["name"])
        print(f"{r['name']:12s} {r['rows']:5d} {r['audio_s']:8.0f} {r['wall']:7.2f} {r['cpu']:7.2f} "
              f"{rtf:8.0f}x {rtf_cpu:8.0f}x  {_fmt_target(rtf, target, 'x')}")
        if r["quarantined"]:
            print(f"  ({r['quarantined']} utterances quarantined)")
    if profile:
        print(f"\n== cProfile of ingest({profile!r}), top own time")
        print(profile_ingest(corpus_dir, work, profile, shard_size))


def _run_read(work: Path, rows: int, frames: int, bins: int, rows_per_part: int, repeats: int) -> None:
    r = bench_read(work, rows, frames, bins, rows_per_part, repeats)
    shard_mbs, npy_mbs = r["payload_mb"] / r["shard_wall"], r["payload_mb"] / r["npy_wall"]
    print(f"\n== shard read: {rows} rows x ~{frames} frames x {bins} bins float32 = {r['payload_mb']:.0f} MB payload "
          f"in {r['parts']} parts ({r['files_mb']:.0f} MB on disk, written in {r['write_s']:.1f} s); "
          f"best of {repeats}, page cache warm")
    print(f"{'reader':28s} {'wall s':>7s} {'cpu s':>7s} {'MB/s':>7s}")
    print(f"{'open_shards().read_all()':28s} {r['shard_wall']:7.3f} {r['shard_cpu']:7.3f} {shard_mbs:7.0f}  "
          f"target {_fmt_target(shard_mbs, READ_TARGET_MBS, ' MB/s')}")
    print(f"{'np.load (.npy)':28s} {r['npy_wall']:7.3f} {r['npy_cpu']:7.3f} {npy_mbs:7.0f}")
    print(f"ratio shard / np.load: {shard_mbs / npy_mbs:.2f}")


if __name__ == "__main__":
    main()
