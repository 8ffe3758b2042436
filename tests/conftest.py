"""Session-wide synthetic data: every test package reuses one generated corpus set and one shard set."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep any Ray a test starts on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def synth_corpora(tmp_path_factory):
    """All synthetic layouts, small scale, seed 3: ``root/<layout>/...``."""
    from data_io import synth

    root = tmp_path_factory.mktemp("corpora")
    for layout in synth.LAYOUTS:
        synth.generate(layout, root / layout, seed=3)
    return root


@pytest.fixture(scope="session")
def msp_functionals(synth_corpora, tmp_path_factory):
    """Functionals (and logmel) shards of the synthetic MSP-Podcast corpus: ``(shard_root, IngestSummary)``."""
    from data_io.ingest import ingest

    out = tmp_path_factory.mktemp("shards")
    summary = ingest("msp_podcast", synth_corpora / "msp_podcast", out, ["functionals", "logmel"], shard_size=64)
    return out, summary


@pytest.fixture(scope="session")
def frame_shards(synth_corpora, tmp_path_factory):
    """fbank40 shards of the synthetic IEMOCAP, call-centre (CSV, corpus ``csv``) and LibriSpeech corpora, and
    IEMOCAP logmel: ``shard_root`` with ``<corpus>/<feature_set>`` folders."""
    from data_io.ingest import ingest

    out = tmp_path_factory.mktemp("frame_shards")
    ingest("iemocap", synth_corpora / "iemocap", out, ["fbank40", "logmel"], shard_size=128)
    ingest("csv", synth_corpora / "callcenter", out, ["fbank40"], shard_size=128)
    ingest("librispeech", synth_corpora / "librispeech", out, ["fbank40"], shard_size=128)
    return out


@pytest.fixture(scope="session")
def msp_search(msp_functionals):
    """The synthetic MSP-Podcast functionals as the loop sees them: ``(SearchData of the predefined fold's training
    and validation rows, targets arousal/valence/dominance; the whole FeatureStore; the fold)``."""
    from data_io import folds as folds_mod
    from data_io import shards
    from trainables.data import SearchData, load_store

    out, _ = msp_functionals
    ss = shards.open_shards(out / "msp_podcast" / "functionals")
    (fold,) = folds_mod.build_folds("predefined", ss.metadata())
    store = load_store([ss])
    data = SearchData(store=store.subset([*fold.train_ids, *fold.val_ids]), folds=[fold.for_search()],
                      targets=("arousal", "valence", "dominance"))
    return data, store, fold


@pytest.fixture(scope="session")
def iemocap_cl_shards(synth_corpora, tmp_path_factory):
    """The center-loss family's two inputs of the synthetic IEMOCAP corpus: ``shard_root`` with
    ``iemocap/mfcc`` and ``iemocap/logmel128``."""
    from data_io.ingest import ingest

    out = tmp_path_factory.mktemp("cl_shards")
    ingest("iemocap", synth_corpora / "iemocap", out, ["mfcc", "logmel128"], shard_size=128)
    return out


@pytest.fixture(scope="session")
def dcgan_shards(synth_corpora, tmp_path_factory):
    """The dcgan family's data: ``spectrogram1024`` shards of the synthetic IEMOCAP (labelled, word alignments) and
    AMI (unlabeled meeting chunks) corpora: ``shard_root`` with ``iemocap/`` and ``ami/`` folders."""
    from data_io.ingest import ingest

    out = tmp_path_factory.mktemp("dcgan_shards")
    ingest("iemocap", synth_corpora / "iemocap", out, ["spectrogram1024"], shard_size=128)
    ingest("ami", synth_corpora / "ami", out, ["spectrogram1024"], shard_size=128)
    return out
