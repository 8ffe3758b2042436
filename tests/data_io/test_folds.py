"""Fold builders and the test lockbox (data_io/folds.py; DESIGN.md: Protocols, Contracts: Test lockbox)."""

from __future__ import annotations

import copy
import pickle

import cloudpickle
import pyarrow as pa
import pytest

from data_io.folds import (
    PROTOCOLS,
    Fold,
    LockboxError,
    SearchFold,
    TestLockbox,
    build_corpus_folds,
    build_folds,
    fold_summary,
)


def _table(rows: list[dict]) -> pa.Table:
    columns = ("utt_id", "corpus", "speaker", "gender", "session", "split", "emotion")
    return pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})


def iemocap_like(n_sessions: int = 5, n_utts: int = 6, corpus: str = "iemocap") -> pa.Table:
    """n_sessions sessions x one F and one M speaker x n_utts utterances, the IEMOCAP layout."""
    rows = []
    for s in range(1, n_sessions + 1):
        for g in ("F", "M"):
            spk = f"Ses{s:02d}{g}"
            for u in range(n_utts):
                rows.append({
                    "utt_id": f"{corpus}_{spk}_{u:03d}", "corpus": corpus, "speaker": spk, "gender": g,
                    "session": f"Ses{s:02d}", "split": None, "emotion": "neutral" if u % 3 else None,
                })
    return _table(rows)


def podcast_like() -> pa.Table:
    rows = []
    for split, n_spk in (("train", 4), ("validation", 2), ("test", 2), ("test2", 1)):
        for k in range(n_spk):
            for u in range(3):
                spk = f"{split}_spk{k}"
                rows.append({"utt_id": f"pod_{spk}_{u}", "corpus": "podcast", "speaker": spk, "split": split})
    return _table(rows)


# Emotions of the call-centre-like corpus: uneven classes, and unlabelled rows (None) as a stratum of their own.
CALLCENTER_EMOTIONS = {"neutral": 25, "angry": 11, "sad": 9, "happy": 5, None: 3}


def callcenter_like(corpus: str = "callcenter") -> pa.Table:
    """53 utterances without speaker or session labels, as the selective-MTL paper's spontaneous corpus."""
    rows = []
    for emotion, n in CALLCENTER_EMOTIONS.items():
        for u in range(n):
            rows.append({"utt_id": f"{corpus}_{emotion}_{u:03d}", "corpus": corpus, "emotion": emotion})
    return _table(rows)


def _ids(table: pa.Table, **where: str) -> set[str]:
    rows = table.to_pylist()
    return {r["utt_id"] for r in rows if all(r[k] == v for k, v in where.items())}


def _speakers(table: pa.Table, ids) -> set[str]:
    spk = dict(zip(table.column("utt_id").to_pylist(), table.column("speaker").to_pylist(), strict=True))
    return {spk[i] for i in ids}


def _test_ids(fold: Fold) -> tuple[str, ...]:
    return fold.test.open("unit test")


# --- loso -------------------------------------------------------------------------------------------------


def test_loso_holds_out_each_session_speaker_independently():
    meta = iemocap_like()
    folds = build_folds("loso", meta)
    assert [f.name for f in folds] == [f"loso-iemocap-Ses{s:02d}" for s in range(1, 6)]
    for s, fold in enumerate(folds, start=1):
        test = _test_ids(fold)
        train_spk, val_spk, test_spk = (_speakers(meta, p) for p in (fold.train_ids, fold.val_ids, test))
        assert val_spk == {f"Ses{s:02d}F"} and test_spk == {f"Ses{s:02d}M"}  # sorted-first speaker validates
        assert not (train_spk & val_spk) and not (train_spk & test_spk)
        assert set(fold.val_ids) | set(test) == _ids(meta, session=f"Ses{s:02d}")
        assert set(fold.train_ids) | set(fold.val_ids) | set(test) == _ids(meta)
        assert list(fold.train_ids) == sorted(fold.train_ids) and list(test) == sorted(test)


def test_loso_second_and_both():
    meta = iemocap_like()
    second = build_folds("loso", meta, val_speaker="second")
    assert _speakers(meta, second[0].val_ids) == {"Ses01M"}
    both = build_folds("loso", meta, val_speaker="both")
    assert len(both) == 10
    a, b = both[0], both[1]
    assert set(a.val_ids) == set(_test_ids(b)) and set(b.val_ids) == set(_test_ids(a))
    assert len({f.name for f in both}) == 10


def test_loso_splits_larger_sessions_in_halves_and_rejects_single_speaker_sessions():
    rows = [{"utt_id": f"{s}_{u}", "corpus": "improv", "speaker": s, "session": "S1"}
            for s in ("a", "b", "c", "d") for u in range(2)]
    rows += [{"utt_id": f"e_{u}", "corpus": "improv", "speaker": "e", "session": "S2"} for u in range(2)]
    with pytest.raises(ValueError, match="'S2'.*one speaker"):
        build_folds("loso", _table(rows))
    rows += [{"utt_id": "f_0", "corpus": "improv", "speaker": "f", "session": "S2"}]
    fold = build_folds("loso", _table(rows))[0]
    assert fold.speakers["val"] == ("a", "b") and fold.speakers["test"] == ("c", "d")


def test_loso_needs_a_session_on_every_row():
    rows = iemocap_like().to_pylist()
    rows[0]["session"] = None
    with pytest.raises(ValueError, match="'session' on every row.*1 of 60"):
        build_folds("loso", _table(rows))


# --- speaker_kfold ----------------------------------------------------------------------------------------


def test_speaker_kfold_is_speaker_disjoint_and_tests_every_speaker_once():
    meta = iemocap_like()
    folds = build_folds("speaker_kfold", meta, k=5, seed=1)
    assert len(folds) == 5
    tested = []
    for fold in folds:
        parts = [_speakers(meta, p) for p in (fold.train_ids, fold.val_ids, _test_ids(fold))]
        assert all(parts)
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert set().union(*parts) == _speakers(meta, _ids(meta))
        tested += sorted(parts[2])
    assert sorted(tested) == sorted(_speakers(meta, _ids(meta)))
    # group i + 1 validates fold i
    assert set(folds[0].val_ids) == set(_test_ids(folds[1]))


def _snapshot(folds):
    return [(f.name, f.train_ids, f.val_ids, f.test.open("determinism check")) for f in folds]


def test_speaker_kfold_is_deterministic_per_seed():
    meta = iemocap_like()
    def kfold(table, seed):
        return _snapshot(build_folds("speaker_kfold", table, seed=seed))

    assert kfold(meta, 3) == kfold(meta, 3)
    assert kfold(meta, 3) != kfold(meta, 4)
    # row order of the table must not matter either
    assert kfold(meta.take(list(reversed(range(meta.num_rows)))), 3) == kfold(meta, 3)


def test_speaker_kfold_rejects_k_above_speakers_or_below_three():
    with pytest.raises(ValueError, match="k=11 with 10 speakers"):
        build_folds("speaker_kfold", iemocap_like(), k=11)
    with pytest.raises(ValueError, match="k >= 3"):
        build_folds("speaker_kfold", iemocap_like(), k=2)


# --- random_kfold -----------------------------------------------------------------------------------------


def test_random_kfold_tests_every_utterance_once_with_disjoint_parts():
    meta = callcenter_like()
    folds = build_folds("random_kfold", meta, k=5, seed=1)
    assert [f.name for f in folds] == [f"random_kfold-callcenter-{i}" for i in range(5)]
    tested = []
    for fold in folds:
        test = set(_test_ids(fold))
        train, val = set(fold.train_ids), set(fold.val_ids)
        assert train and val and test
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == _ids(meta)
        tested += sorted(test)
    assert sorted(tested) == sorted(_ids(meta))  # each utterance in exactly one test group
    assert {len(f.test) for f in folds} == {10, 11}  # 53 dealt round-robin into 5 groups
    assert set(folds[0].val_ids) == set(_test_ids(folds[1]))  # group i + 1 validates fold i
    assert set(folds[4].val_ids) == set(_test_ids(folds[0]))
    assert fold_summary(folds)[0]["n_speakers_test"] == 0  # speakers unknown: nothing to log, nothing to fail


def test_random_kfold_needs_no_speaker_column_and_names_mixed_corpora_without_a_corpus():
    meta = callcenter_like().drop_columns(["speaker", "session"])
    folds = build_folds("random_kfold", meta, k=3)
    assert len(folds) == 3 and folds[0].speakers == {}
    mixed = build_folds("random_kfold", pa.concat_tables([callcenter_like(), iemocap_like()]), k=4)
    assert [f.name for f in mixed] == [f"random_kfold-{i}" for i in range(4)]


def test_random_kfold_is_deterministic_per_seed_and_ignores_row_order():
    meta = callcenter_like()

    def kfold(table, seed, **options):
        return _snapshot(build_folds("random_kfold", table, seed=seed, **options))

    assert kfold(meta, 3) == kfold(meta, 3)
    assert kfold(meta, 3) != kfold(meta, 4)
    assert kfold(meta.take(list(reversed(range(meta.num_rows)))), 3) == kfold(meta, 3)
    assert kfold(meta, 3, stratify="emotion") == kfold(meta, 3, stratify="emotion")
    assert kfold(meta, 3, stratify="emotion") != kfold(meta, 4, stratify="emotion")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_kfold_stratify_spreads_each_class_evenly(seed):
    meta = callcenter_like()
    emotion = dict(zip(meta.column("utt_id").to_pylist(), meta.column("emotion").to_pylist(), strict=True))
    k = 5
    folds = build_folds("random_kfold", meta, k=k, stratify="emotion", seed=seed)
    tested = []
    for fold in folds:
        test = _test_ids(fold)
        tested += test
        for value, n in CALLCENTER_EMOTIONS.items():  # None included: the unlabelled rows are a stratum too
            held = sum(emotion[u] == value for u in test)
            assert abs(held - n / k) < 1, (fold.name, value, held)
    assert sorted(tested) == sorted(_ids(meta))
    assert max(len(f.test) for f in folds) - min(len(f.test) for f in folds) <= 1


def test_random_kfold_rejects_bad_k_and_stratify():
    with pytest.raises(ValueError, match="k >= 3"):
        build_folds("random_kfold", callcenter_like(), k=2)
    with pytest.raises(ValueError, match="k=60 with 53 utterances; lower k"):
        build_folds("random_kfold", callcenter_like(), k=60)
    with pytest.raises(ValueError, match=r"needs metadata columns \['valence'\]"):
        build_folds("random_kfold", callcenter_like(), stratify="valence")
    with pytest.raises(TypeError, match="stratify must be a metadata column name or None"):
        build_folds("random_kfold", callcenter_like(), stratify=["emotion"])


# --- build_corpus_folds -----------------------------------------------------------------------------------

MTL_PROTOCOLS = {"iemocap": ("loso", {}), "callcenter": ("random_kfold", {"k": 5, "seed": 7})}


def _acted_and_spontaneous() -> pa.Table:
    """The selective-MTL paper's pair: IEMOCAP (sessions, speakers) and a call-centre corpus (neither)."""
    return pa.concat_tables([iemocap_like(), callcenter_like()])


def test_build_corpus_folds_combines_fold_i_of_each_corpus_as_its_own_protocol_gives_it():
    meta = _acted_and_spontaneous()
    folds = build_corpus_folds(meta, MTL_PROTOCOLS)
    own = {"iemocap": build_folds("loso", iemocap_like()),
           "callcenter": build_folds("random_kfold", callcenter_like(), k=5, seed=7)}
    assert [f.name for f in folds] == [
        f"random_kfold-callcenter-{i}+loso-iemocap-Ses{i + 1:02d}" for i in range(5)  # sorted corpus order
    ]
    tested = []
    for i, fold in enumerate(folds):
        test = set(_test_ids(fold))
        tested += sorted(test)
        for corpus, corpus_folds in own.items():
            ids = _ids(meta, corpus=corpus)
            assert test & ids == set(_test_ids(corpus_folds[i]))  # where the corpus's own protocol put them
            assert set(fold.train_ids) & ids == set(corpus_folds[i].train_ids)
            assert set(fold.val_ids) & ids == set(corpus_folds[i].val_ids)
        assert not test & set(fold.train_ids) and not test & set(fold.val_ids)
        assert set(fold.train_ids) | set(fold.val_ids) | test == _ids(meta)
        assert list(fold.train_ids) == sorted(fold.train_ids) and list(fold.val_ids) == sorted(fold.val_ids)
    assert len(tested) == len(set(tested))  # no utterance tested twice
    assert set(tested) & _ids(meta, corpus="callcenter") == _ids(meta, corpus="callcenter")  # each fold a group
    assert folds[0].speakers["val"] == ("iemocap/Ses01F",) and folds[0].speakers["test"] == ("iemocap/Ses01M",)
    assert folds[0].counts_by_corpus["test"] == {"callcenter": 11, "iemocap": 6}


def test_build_corpus_folds_is_deterministic_and_respects_require():
    meta = _acted_and_spontaneous()
    assert _snapshot(build_corpus_folds(meta, MTL_PROTOCOLS)) == _snapshot(build_corpus_folds(meta, MTL_PROTOCOLS))
    reseeded = {**MTL_PROTOCOLS, "callcenter": ("random_kfold", {"k": 5, "seed": 8})}
    assert _snapshot(build_corpus_folds(meta, MTL_PROTOCOLS)) != _snapshot(build_corpus_folds(meta, reseeded))
    labelled = _ids(meta) - {r["utt_id"] for r in meta.to_pylist() if r["emotion"] is None}
    for fold in build_corpus_folds(meta, MTL_PROTOCOLS, require="emotion"):
        assert set(fold.train_ids) | set(fold.val_ids) | set(_test_ids(fold)) == labelled


def test_build_corpus_folds_summary_counts_per_corpus_without_opening_the_lockbox():
    folds = build_corpus_folds(_acted_and_spontaneous(), MTL_PROTOCOLS)
    row = fold_summary(folds)[0]
    assert row["n_test_by_corpus"] == {"callcenter": 11, "iemocap": 6}
    assert row["n_val_by_corpus"] == {"callcenter": 11, "iemocap": 6}  # callcenter group 1 has 11 of 53
    assert row["n_train_by_corpus"] == {"callcenter": 31, "iemocap": 48}
    assert row["n_test"] == 17 and row["n_speakers_train"] == 8
    assert all(f.test.accesses == () for f in folds)
    # a fold of one corpus keeps today's summary, without per-corpus keys
    assert "n_test_by_corpus" not in fold_summary(build_folds("loso", iemocap_like()))[0]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps, copy.deepcopy], ids=["pickle", "cloudpickle",
                                                                                         "deepcopy"])
def test_build_corpus_folds_lockbox_still_refuses_to_leave_the_driver(dumps):
    fold = build_corpus_folds(_acted_and_spontaneous(), MTL_PROTOCOLS)[0]
    with pytest.raises(LockboxError, match="cannot be shipped to a trial"):
        dumps(fold)
    with pytest.raises(LockboxError):
        dumps(fold.test)
    search = fold.for_search()
    blob = pickle.dumps(search)
    assert not any(i.encode() in blob for i in _test_ids(fold))


def test_build_corpus_folds_mismatched_fold_counts_name_each_corpus_and_the_fix():
    meta = _acted_and_spontaneous()
    four = {**MTL_PROTOCOLS, "callcenter": ("random_kfold", {"k": 4})}
    with pytest.raises(ValueError, match=(
        r"'callcenter': random_kfold gives 4 folds; 'iemocap': loso gives 5 folds\. "
        r"Set k=5 in the options of 'callcenter' to match 'iemocap' \(loso\)"
    )):
        build_corpus_folds(meta, four)
    both_k = {"iemocap": ("speaker_kfold", {"k": 3}), "callcenter": ("random_kfold", {"k": 5})}
    with pytest.raises(ValueError, match="Set the same k for every corpus"):
        build_corpus_folds(meta, both_k)


def test_build_corpus_folds_needs_exactly_the_corpora_of_the_table():
    meta = _acted_and_spontaneous()
    with pytest.raises(ValueError, match=(
        r"holds \['callcenter', 'iemocap'\], protocols names \['iemocap'\] "
        r"\(missing from protocols: \['callcenter'\]; not in the table: none\)\. Add a \(protocol, options\)"
    )):
        build_corpus_folds(meta, {"iemocap": ("loso", {})})
    with pytest.raises(ValueError, match=r"not in the table: \['podcast'\]"):
        build_corpus_folds(meta, {**MTL_PROTOCOLS, "podcast": ("predefined", {})})


def test_build_corpus_folds_rejects_bad_entries_and_names_the_corpus_in_builder_errors():
    meta = _acted_and_spontaneous()
    with pytest.raises(ValueError, match=r"protocols\['iemocap'\] must be \(protocol, options\)"):
        build_corpus_folds(meta, {**MTL_PROTOCOLS, "iemocap": "loso"})
    with pytest.raises(ValueError, match=r"protocols\['iemocap'\]: cross_corpus .* cannot split one corpus"):
        build_corpus_folds(meta, {**MTL_PROTOCOLS, "iemocap": ("cross_corpus", {})})
    with pytest.raises(TypeError, match=r"corpus 'iemocap' \(protocol 'loso'\): .*unknown option\(s\) \['k'\]"):
        build_corpus_folds(meta, {**MTL_PROTOCOLS, "iemocap": ("loso", {"k": 5})})
    with pytest.raises(ValueError, match=r"corpus 'callcenter' \(protocol 'loso'\): .*'speaker' on every row"):
        build_corpus_folds(meta, {**MTL_PROTOCOLS, "callcenter": ("loso", {})})
    with pytest.raises(TypeError, match="protocols must map each corpus"):
        build_corpus_folds(meta, [("iemocap", "loso")])


# --- predefined -------------------------------------------------------------------------------------------


def test_predefined_uses_the_split_column_and_leaves_other_splits_out():
    meta = podcast_like()
    (fold,) = build_folds("predefined", meta)
    assert set(fold.train_ids) == _ids(meta, split="train")
    assert set(fold.val_ids) == _ids(meta, split="validation")
    assert set(_test_ids(fold)) == _ids(meta, split="test")
    assert fold_summary([fold])[0]["n_speakers_train"] == 4
    (renamed,) = build_folds("predefined", meta, test_split="test2")
    assert set(_test_ids(renamed)) == _ids(meta, split="test2")


def test_predefined_names_the_missing_split_and_suggests_other_protocols():
    with pytest.raises(ValueError, match=r"split == 'train'.*speaker_kfold.*loso"):
        build_folds("predefined", iemocap_like())  # split is null throughout
    rows = [r for r in podcast_like().to_pylist() if r["split"] != "validation"]
    with pytest.raises(ValueError, match=r"split == 'validation' \(val_split\)"):
        build_folds("predefined", _table(rows))


# --- cross_corpus -----------------------------------------------------------------------------------------


def test_cross_corpus_trains_on_one_corpus_and_splits_the_other_by_speaker():
    source, target = iemocap_like(corpus="iemocap"), iemocap_like(corpus="improv")
    extra = iemocap_like(n_sessions=1, corpus="other")
    meta = pa.concat_tables([source, target, extra])
    (fold,) = build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="improv", seed=0)
    assert fold.name == "cross_corpus-iemocap-to-improv"
    test = _test_ids(fold)
    assert set(fold.train_ids) == _ids(meta, corpus="iemocap")
    assert set(fold.val_ids) | set(test) == _ids(meta, corpus="improv")
    # speakers share names across corpora ("Ses01F"); they are keyed by corpus, so only val/test are compared
    assert not (_speakers(target, fold.val_ids) & _speakers(target, test))
    assert len(fold.speakers["val"]) == 3 and len(fold.speakers["test"]) == 7  # 30 % of 10 speakers
    assert fold.speakers["val"][0].startswith("improv/")


def test_cross_corpus_unknown_or_missing_corpus_lists_the_corpora_present():
    meta = pa.concat_tables([iemocap_like(corpus="iemocap"), iemocap_like(corpus="improv")])
    with pytest.raises(ValueError, match=r"target_corpus='podcast'.*\['iemocap', 'improv'\]"):
        build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="podcast")
    with pytest.raises(ValueError, match="needs the option train_corpus"):
        build_folds("cross_corpus", meta, target_corpus="improv")


# --- require, registry, options ---------------------------------------------------------------------------


def test_require_drops_unlabelled_rows_before_building():
    meta = iemocap_like()
    labelled = _ids(meta) - {r["utt_id"] for r in meta.to_pylist() if r["emotion"] is None}
    for fold in build_folds("loso", meta, require="emotion"):
        assert set(fold.train_ids) | set(fold.val_ids) | set(_test_ids(fold)) == labelled
    with pytest.raises(ValueError, match="require='valence' is not a metadata column"):
        build_folds("loso", meta, require="valence")


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cross_corpus, loso, predefined, random_kfold, speaker_kfold"):
        build_folds("kfold", iemocap_like())
    assert set(PROTOCOLS) == {"predefined", "loso", "speaker_kfold", "cross_corpus", "random_kfold"}


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match=r"'loso' got unknown option\(s\) \['k'\]"):
        build_folds("loso", iemocap_like(), k=5)
    with pytest.raises(ValueError, match="val_speaker must be one of"):
        build_folds("loso", iemocap_like(), val_speaker="random")


def test_duplicate_utt_ids_across_corpora_are_rejected():
    rows = iemocap_like().to_pylist() + [dict(r, corpus="copy") for r in iemocap_like().to_pylist()]
    with pytest.raises(ValueError, match="utt_id must be unique.*60 repeated"):
        build_folds("speaker_kfold", _table(rows))


def test_fold_rejects_overlapping_or_empty_parts():
    with pytest.raises(ValueError, match=r"fold 'f': train and test share 1 utt_ids"):
        Fold("f", ("a", "b"), ("c",), TestLockbox(["b", "d"]))
    with pytest.raises(ValueError, match=r"fold 'f': train and val share 2"):
        Fold("f", ("a", "b"), ("a", "b"), TestLockbox(["d"]))
    with pytest.raises(ValueError, match=r"fold 'f': the val part is empty"):
        Fold("f", ("a",), (), TestLockbox(["d"]))
    with pytest.raises(ValueError, match=r"fold 'f': the test part is empty"):
        Fold("f", ("a",), ("b",), TestLockbox([]))


def test_fold_summary_splits_counts_by_corpus_when_a_fold_spans_several():
    meta = pa.concat_tables([iemocap_like(corpus="iemocap"), iemocap_like(corpus="improv")])
    (fold,) = build_folds("cross_corpus", meta, train_corpus="iemocap", target_corpus="improv")
    row = fold_summary([fold])[0]
    assert row["n_train_by_corpus"] == {"iemocap": 60, "improv": 0}
    assert row["n_val_by_corpus"] == {"iemocap": 0, "improv": 18}
    assert row["n_test_by_corpus"] == {"iemocap": 0, "improv": 42}


def test_fold_rejects_per_corpus_counts_that_do_not_match_its_parts():
    with pytest.raises(ValueError, match=r"counts_by_corpus\['test'\] sums to 1, but the test part holds 2"):
        Fold("f", ("a",), ("b",), TestLockbox(["c", "d"]), counts_by_corpus={"test": {"x": 1}})
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['dev'\]"):
        Fold("f", ("a",), ("b",), TestLockbox(["c"]), counts_by_corpus={"dev": {"x": 1}})


def test_fold_summary_gives_counts_only():
    folds = build_folds("loso", iemocap_like())
    summary = fold_summary(folds)
    assert summary[0] == {"name": "loso-iemocap-Ses01", "n_train": 48, "n_val": 6, "n_test": 6,
                          "n_speakers_train": 8, "n_speakers_val": 1, "n_speakers_test": 1}
    assert all(f.test.accesses == () for f in folds)  # summarising never opens a lockbox


# --- the lockbox ------------------------------------------------------------------------------------------


def test_search_fold_carries_no_test_ids():
    fold = build_folds("loso", iemocap_like())[0]
    search = fold.for_search()
    assert isinstance(search, SearchFold)
    assert not any(isinstance(getattr(search, a), TestLockbox) for a in dir(search) if not a.startswith("__"))
    assert not hasattr(search, "test")
    test = _test_ids(fold)
    for blob in (pickle.dumps(search), cloudpickle.dumps(search)):
        assert not any(i.encode() in blob for i in test)
        assert pickle.loads(blob) == search
    assert fold.train_ids[0].encode() in pickle.dumps(search)  # the check above can see ids


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps, copy.deepcopy, copy.copy],
                         ids=["pickle", "cloudpickle", "deepcopy", "copy"])
def test_lockbox_and_fold_refuse_to_leave_the_driver(dumps):
    fold = build_folds("loso", iemocap_like())[0]
    with pytest.raises(LockboxError, match=r"fold.for_search\(\)"):
        dumps(fold.test)
    if dumps is copy.copy:
        return  # a shallow copy of a Fold (or a list) shares the lockbox, which stays in the process
    with pytest.raises(LockboxError, match="cannot be shipped to a trial"):
        dumps(fold)
    with pytest.raises(LockboxError):
        dumps({"folds": [fold]})  # nested, as inside a trainable's closure or a config dict


def test_a_closure_over_a_fold_cannot_be_shipped():
    fold = build_folds("loso", iemocap_like())[0]

    def trainable(config):
        return fold.test.open("sneaky")

    with pytest.raises(LockboxError):
        cloudpickle.dumps(trainable)


def test_lockbox_records_accesses_and_hides_ids_in_repr():
    box = TestLockbox(["u1", "u2", "u3"])
    assert len(box) == 3 and "u1" not in repr(box) and "n=3" in repr(box)
    fold = Fold("f", ("a",), ("b",), box)
    assert "u1" not in repr(fold) and "u1" not in str(fold)
    assert box.accesses == ()
    assert box.open("score selected trial") == ("u1", "u2", "u3")
    box.open("seed repeat 2")
    assert [p for p, _ in box.accesses] == ["score selected trial", "seed repeat 2"]
    assert all(t.tzinfo is not None and t.utcoffset().total_seconds() == 0 for _, t in box.accesses)
    with pytest.raises(LockboxError, match="purpose"):
        box.open("")
