"""The aae_mtl family: encoder, mirrored decoder, heads and discriminator; the three phases and what each updates;
auxiliary rows kept out of the primary loss; gender/speaker pre-training; speaker verification; validation and
learning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.trainables.helpers import record_steps
from trainables.aae_mtl import PHASES, VARIANTS, AAEMTLConfig, AAEMTLModel, parameter_count
from trainables.base import DataSpec

B, T, NF = 8, 32, 16
N_SPK = 4
SPEC = DataSpec(input_shape=(T, NF), targets=("emotion", "gender", "speaker"),
                n_classes={"emotion": 4, "gender": 2, "speaker": N_SPK})
TINY = {"window": T, "channels": (4, 4, 4), "head_filters": 4, "dense": (8, 8), "lr": 0.01}
GROUPS = ("encoder", "decoder", "discriminator", "emotion", "gender", "speaker")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainables/conftest.py


def make_batch(n: int = B, seed: int = 0, primary: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(n, dtype=torch.bool)
    return {"x": torch.randn(n, T, NF, generator=g), "utt_index": torch.arange(n),
            "emotion": torch.arange(n) % 4, "emotion_mask": ones.clone() if primary else ~ones,
            "gender": torch.arange(n) % 2, "gender_mask": ones.clone(),
            "speaker": torch.arange(n) % N_SPK, "speaker_mask": ones.clone()}


def build(variant: str = "aae_mtl", spec: DataSpec = SPEC, **kw) -> AAEMTLModel:
    torch.manual_seed(0)
    return AAEMTLModel(AAEMTLConfig(variant=variant, **{**TINY, **kw}), spec)


def groups(model: AAEMTLModel) -> dict[str, list[torch.nn.Parameter]]:
    out = {"encoder": list(model.encoder.parameters())}
    if model.decoder is not None:
        out["decoder"] = list(model.decoder.parameters())
    if model.discriminator is not None:
        out["discriminator"] = list(model.discriminator.parameters())
    out.update({t: list(h.parameters()) for t, h in model.heads.items()})
    return out


# ---- structure -------------------------------------------------------------------------------------------------

def test_paper_size_code_and_parameter_count():
    spec = DataSpec(input_shape=(256, 128), targets=("emotion", "gender", "speaker"),
                    n_classes={"emotion": 4, "gender": 2, "speaker": 610})
    model = AAEMTLModel(AAEMTLConfig(), spec).eval()
    x = torch.zeros(2, 256, 128)
    with torch.no_grad():
        z = model.encoder(model._image(x))
        assert z.shape == (2, 32, 16, 16)  # the paper's 16 x 16 x 32 code
        assert model.reconstruct(x).shape == x.shape
    sizes = {v: parameter_count(AAEMTLModel(AAEMTLConfig(variant=v), spec)) for v in VARIANTS}
    print(f"parameters at paper size (256 x 128 windows, 610 speakers): {sizes}")
    assert sizes["cnn"] < sizes["ae"] < sizes["aae_stl"] < sizes["aae_mtl"]
    assert 2_000_000 < sizes["aae_mtl"] < 4_000_000


def test_encoder_layers_batch_norm_before_relu_and_max_pooling():
    model = build()
    blocks = list(model.encoder.layers)
    assert len(blocks) == 3
    for block in blocks[:-1]:
        kinds = [type(m) for m in block]
        assert kinds == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d]
    assert [type(m) for m in blocks[-1]] == [torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.BatchNorm2d]  # no ReLU
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    # The decoder runs the encoder backwards: transposed conv j has the weight shape of conv 2 - j.
    assert [tuple(d.weight.shape) for d in deconvs] == [tuple(c.weight.shape) for c in convs[::-1]]
    head = model.heads["emotion"]
    assert [type(m) for m in head.conv] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU,
                                            torch.nn.MaxPool2d, torch.nn.Flatten]
    dense = [m for m in head.hidden if isinstance(m, torch.nn.Linear)]
    drop = [m for m in head.hidden if isinstance(m, torch.nn.Dropout)]
    assert len(dense) == 2 and len(drop) == 1 and drop[0].p == 0.3
    assert model.discriminator.out.out_features == 1


def test_variants_have_the_papers_parts():
    for v in VARIANTS:
        model = build(v)
        assert (model.decoder is not None) == (v != "cnn")
        assert (model.discriminator is not None) == v.startswith("aae")
        assert set(model.heads) == ({"emotion", "gender", "speaker"} if v == "aae_mtl" else {"emotion"})
    assert set(build(aux_tasks="gender").heads) == {"emotion", "gender"}
    assert set(build(aux_tasks="speaker").heads) == {"emotion", "speaker"}


def test_predict_reconstruct_and_export_shapes():
    model = build().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model.predict(batch)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "emotion": (B, 4), "gender": (B, 2), "speaker": (B, N_SPK), "speaker_embedding": (B, 8)}
        assert model.reconstruct(batch["x"]).shape == (B, T, NF)
        assert model(batch["x"]).shape == (B, 4 + 2 + N_SPK)
    assert set(build("cnn").eval().predict(batch)) == {"emotion"}
    with pytest.raises(ValueError, match="has no decoder"):
        build("cnn").reconstruct(batch["x"])


# ---- the three phases ------------------------------------------------------------------------------------------

# What each phase's step moves (Section 3): reconstruction E and the decoder; regularisation the discriminator, then
# E as the generator; classification E and the classifiers.
EXPECTED = {"reconstruction": {"encoder", "decoder"}, "discriminator": {"discriminator"}, "generator": {"encoder"},
            "classification": {"encoder", "emotion", "gender", "speaker"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_phases_run_in_order_and_update_what_the_paper_says(variant):
    model = build(variant, pretrain_epochs=0).train()
    opts = model.configure_optimizers()
    assert list(opts) == list(PHASES[variant])
    assert all(isinstance(o, torch.optim.SGD) and o.param_groups[0]["lr"] == TINY["lr"] for o in opts.values())
    steps, moved = record_steps(opts, groups(model))
    logs = model.training_step(make_batch(), opts)
    assert steps == list(PHASES[variant])
    heads = set(model.heads)
    assert moved == {p: EXPECTED[p] & ({"encoder", "decoder", "discriminator"} | heads) for p in PHASES[variant]}
    assert logs["loss"] == pytest.approx(sum(logs[f"loss_{p}"] for p in PHASES[variant]))
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next batch


def test_phase_losses_are_the_papers_weighted_terms():
    model = build(alpha=0.5, beta=0.7, pretrain_epochs=0).train()
    batch = make_batch()
    loss, _, parts = model._phase_loss("reconstruction", batch)
    assert float(loss.detach()) == pytest.approx(0.5 * parts["mse_reconstruction"], rel=1e-5)  # alpha * L_AE
    loss, _, parts = model._phase_loss("classification", batch)
    expected = 0.7 * parts["ce_emotion"] + 0.3 * (parts["ce_gender"] + parts["ce_speaker"])  # Eq. 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss, _, parts = build("aae_stl", beta=0.7)._phase_loss("classification", batch)
    assert set(parts) == {"ce_emotion"} and float(loss.detach()) == pytest.approx(0.7 * parts["ce_emotion"], rel=1e-5)
    loss, _, parts = build("cnn", beta=0.7)._phase_loss("classification", batch)
    assert float(loss.detach()) == pytest.approx(parts["ce_emotion"], rel=1e-5)  # cnn: no beta


def test_auxiliary_rows_never_reach_the_primary_loss_or_the_unsupervised_phases():
    model = build(pretrain_epochs=0).train()
    batch = make_batch()
    batch["emotion_mask"][4:] = False  # rows 4..7 are auxiliary: gender and speaker labels only
    batch["emotion"][4:] = 99  # an index that would fail any loss it reached
    labelled = {k: v[:4] for k, v in batch.items()}
    for phase in ("reconstruction", "discriminator", "generator"):
        torch.manual_seed(0)
        mixed, used, _ = model._phase_loss(phase, batch)
        torch.manual_seed(0)
        alone, _, _ = model._phase_loss(phase, labelled)
        assert used == 4 and float(mixed.detach()) == pytest.approx(float(alone.detach()), rel=1e-5), phase
    _, used, parts = model._phase_loss("classification", batch)
    assert used == B  # the auxiliary rows train gender and speaker
    model.eval()  # batch statistics aside, the emotion cross-entropy is that of the labelled rows alone
    _, _, mixed = model._phase_loss("classification", batch)
    _, _, alone = model._phase_loss("classification", labelled)
    assert mixed["ce_emotion"] == pytest.approx(alone["ce_emotion"], rel=1e-5)
    assert mixed["ce_gender"] != pytest.approx(alone["ce_gender"], rel=1e-5)


def test_a_batch_of_auxiliary_rows_trains_only_the_encoder_and_the_auxiliary_heads():
    model = build(pretrain_epochs=0).train()
    opts = model.configure_optimizers()
    steps, moved = record_steps(opts, groups(model))
    logs = model.training_step(make_batch(primary=False), opts)
    assert steps == ["classification"]  # the unsupervised phases have no rows
    assert moved["classification"] == {"encoder", "gender", "speaker"}
    assert logs["loss_reconstruction"] == logs["loss_discriminator"] == logs["loss_generator"] == 0.0
    assert logs["ce_emotion"] == 0.0


def test_pretraining_epochs_train_only_gender_and_speaker():
    model = build(pretrain_epochs=2).train()
    opts = model.configure_optimizers()
    steps, moved = record_steps(opts, groups(model))
    for epoch in (0, 1):
        model.set_epoch(epoch)
        assert model.pretraining and model.phases() == ("classification",)
        logs = model.training_step(make_batch(), opts)
        assert set(logs) == {"loss", "loss_classification", "ce_gender", "ce_speaker"}
    assert steps == ["classification", "classification"]
    assert moved["classification"] == {"encoder", "gender", "speaker"}  # the emotion head waits
    total, parts = model.loss(make_batch())
    assert float(total.detach()) == pytest.approx(parts["ce_gender"] + parts["ce_speaker"], rel=1e-5)  # weights 1
    model.set_epoch(2)
    assert not model.pretraining and model.phases() == PHASES["aae_mtl"]
    for v in ("cnn", "ae", "aae_stl"):  # no auxiliary heads: nothing to pre-train
        other = build(v, pretrain_epochs=3)
        other.set_epoch(0)
        assert not other.pretraining and other.phases() == PHASES[v]


# ---- speaker metrics -------------------------------------------------------------------------------------------

def _meta(speakers: list[str], corpus: str = "iemocap") -> pa.Table:
    return pa.table({"utt_id": [f"u{i:03d}" for i in range(len(speakers))], "corpus": [corpus] * len(speakers),
                     "speaker": speakers})


def test_eer_on_unseen_speakers_and_identification_on_training_speakers():
    model = build(enrol_utterances=2)
    rng = np.random.default_rng(0)
    speakers = [s for s in ("a", "b", "c") for _ in range(5)]
    centres = {"a": [1.0, 0, 0, 0], "b": [0, 1.0, 0, 0], "c": [0, 0, 1.0, 0]}
    emb = np.array([np.r_[centres[s], np.zeros(4)] + 0.05 * rng.random(8) for s in speakers])
    n = len(speakers)
    outputs = {"speaker_embedding": emb, "speaker": np.full((n, N_SPK), 1 / N_SPK), "emotion": np.full((n, 4), .25)}
    unseen = {"speaker": np.zeros(n, np.int64), "speaker_mask": np.zeros(n, bool)}
    assert model.extra_metrics(outputs, unseen, _meta(speakers)) == {"eer_speaker": 0.0}
    # Speakers swapped on half the trials' embeddings: verification gets worse.
    mixed = emb.copy()
    mixed[[2, 3, 7, 8]] = mixed[[7, 8, 2, 3]]
    assert model.extra_metrics({**outputs, "speaker_embedding": mixed}, unseen, _meta(speakers))["eer_speaker"] > 0.2
    # Training speakers (speaker 10-fold): identification accuracy from the speaker posteriors.
    post = np.eye(N_SPK)[[0, 1, 2, 3, 0, 0]]
    known = {"speaker": np.array([0, 1, 2, 3, 1, 0]), "speaker_mask": np.ones(6, bool)}
    metrics = model.extra_metrics({"speaker_embedding": emb[:6], "speaker": post}, known, _meta(speakers[:6]))
    assert metrics == {"acc_speaker_id": pytest.approx(5 / 6)}
    # One unseen speaker gives no trial of another speaker: no EER. No speaker head: no speaker metrics.
    assert model.extra_metrics(outputs, unseen, _meta(["a"] * n)) == {}
    assert build("aae_stl").extra_metrics(outputs, unseen, _meta(speakers)) == {}


# ---- config and construction -----------------------------------------------------------------------------------

def test_feed_is_speech_only_windows_with_auxiliary_speakers():
    feed = AAEMTLConfig().feed()
    assert (feed.examples.kind, feed.examples.frames, feed.examples.step) == ("windows", 256, 256)
    assert feed.examples.speech_only and feed.normalization == "zscore"
    assert feed.sampling.aux_ratio == 1.0 and feed.sampling.aux_speakers == 600
    assert AAEMTLConfig(hop=128, aux_speakers=None).feed().examples.step == 128
    assert AAEMTLConfig(aux_speakers=None).feed().sampling.aux_speakers is None
    assert AAEMTLConfig(variant="cnn").feed().sampling.aux_speakers is None  # it ignores auxiliary rows
    assert AAEMTLConfig(variant="cnn").unused_fields() == {"alpha", "beta", "aux_tasks", "pretrain_epochs",
                                                           "aux_speakers", "enrol_utterances"}
    assert AAEMTLConfig(aux_tasks="gender").unused_fields() == {"enrol_utterances"}
    assert AAEMTLConfig().unused_fields() == frozenset()


@pytest.mark.parametrize("kw, match", [
    ({"variant": "aae"}, r"variant must be one of \['cnn', 'ae', 'aae_stl', 'aae_mtl'\], got 'aae'"),
    ({"aux_tasks": "age"}, r"aux_tasks must be one of \['gender', 'speaker', 'both'\], got 'age'"),
    ({"primary": "speaker"}, "primary must name the primary task's target .* got 'speaker'"),
    ({"alpha": 0.0}, r"0 < alpha <= 1 must hold .*got 0.0"),
    ({"beta": 1.0}, r"0 < beta < 1 must hold .*got 1.0"),
    ({"lr": 0.0}, "lr > 0 must hold, got 0.0"),
    ({"momentum": 1.0}, "0 <= momentum < 1 must hold, got 1.0"),
    ({"dropout": 1.0}, "0 <= dropout < 1 must hold, got 1.0"),
    ({"aux_ratio": 0}, "aux_ratio > 0 must hold.*got 0"),
    ({"window": 0}, r"sizes must be integers >= 1, got \{'window': 0\}"),
    ({"aux_speakers": 2.5}, r"sizes must be integers >= 1, got \{'aux_speakers': 2.5\}"),
    ({"pretrain_epochs": -1}, "pretrain_epochs must be an integer >= 0, got -1"),
    ({"kernel": 4}, "kernel must be odd .*got 4"),
    ({"channels": (8, 8)}, r"one positive entry per encoder layer, got channels=\(8, 8\), pools=\(\(2, 2\)"),
    ({"dense": (8,)}, r"dense must be two positive sizes .*got \(8,\)"),
    ({"pools": "x"}, "pools a list of .* pairs"),
    ({"window": 200}, r"window must be a multiple of the encoder's time pooling 16 .*got 200"),
])
def test_config_validation_names_field_rule_and_value(kw, match):
    with pytest.raises(ValueError, match=match):
        AAEMTLConfig(**kw)


def test_yaml_lists_become_tuples():
    cfg = AAEMTLConfig(channels=[8, 8, 4], pools=[[2, 2], [2, 2], [2, 2]], dense=[16, 8], window=64)
    assert cfg.channels == (8, 8, 4) and cfg.pools == ((2, 2), (2, 2), (2, 2)) and cfg.dense == (16, 8)
    hash(cfg)


def test_construction_errors():
    with pytest.raises(ValueError, match="spectrogram feature set"):
        AAEMTLModel(AAEMTLConfig(**TINY), DataSpec(input_shape=(88,), targets=("emotion",),
                                                   n_classes={"emotion": 4}))
    with pytest.raises(ValueError, match=r"pools frequency by 8 and time by 16 .*got input_shape \(32, 20\)"):
        build(spec=DataSpec(input_shape=(T, 20), targets=("emotion",), n_classes={"emotion": 4}), variant="cnn")
    with pytest.raises(ValueError, match="smaller than the heads' 2 x 2 max pooling"):
        build(spec=DataSpec(input_shape=(16, 8), targets=("emotion",), n_classes={"emotion": 4}), variant="cnn",
              window=16)
    with pytest.raises(ValueError, match=r"classifies the class target 'speaker'.*data targets are \['emotion', "
                                         r"'gender'\]"):
        build(spec=DataSpec(input_shape=(T, NF), targets=("emotion", "gender"), n_classes={"emotion": 4,
                                                                                          "gender": 2}))
    # The primary may be any class target: an attribute's levels or V-A clusters.
    levels = DataSpec(input_shape=(T, NF), targets=("arousal",), n_classes={"arousal": 3}, kinds={"arousal": "class"})
    assert build("aae_stl", spec=levels, primary="arousal").predict(make_batch())["arousal"].shape == (B, 3)
    with pytest.raises(ValueError, match="classifies the class target 'arousal'"):
        build("cnn", spec=DataSpec(input_shape=(T, NF), targets=("arousal",)), primary="arousal")


# ---- learning --------------------------------------------------------------------------------------------------

def banded(n: int, seed: int, aux: int = 0) -> dict[str, torch.Tensor]:
    """Emotion k lights frequency bins 4k..4k+3; speaker s lights frames 8s..8s+7, and gender is s % 2. The last
    ``aux`` rows carry no emotion label (auxiliary rows)."""
    g = torch.Generator().manual_seed(seed)
    emotion = torch.randint(0, 4, (n,), generator=g)
    speaker = torch.randint(0, N_SPK, (n,), generator=g)
    x = torch.randn(n, T, NF, generator=g)
    for k in range(4):
        x[emotion == k, :, 4 * k:4 * k + 4] += 1.5
        x[speaker == k, 8 * k:8 * k + 8, :] += 1.5
    ones = torch.ones(n, dtype=torch.bool)
    emotion_mask = ones.clone()
    emotion_mask[n - aux:] = False
    return {"x": x, "utt_index": torch.arange(n), "emotion": emotion, "emotion_mask": emotion_mask,
            "gender": speaker % 2, "gender_mask": ones.clone(), "speaker": speaker, "speaker_mask": ones.clone()}


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


@pytest.mark.parametrize("variant", ["cnn", "aae_mtl"])
def test_learns_emotion_gender_and_speaker_from_bands(variant):
    train, test = banded(96, 0, aux=32), banded(96, 1)
    # A 4 x 4 code keeps the bands apart (the default pooling's 2 x 2 code learns them too, but less reliably in 30
    # steps).
    model = build(variant, channels=(8, 8, 8), pools=((2, 2), (2, 2), (1, 2)), head_filters=8, dense=(32, 32),
                  lr=0.1, momentum=0.9, pretrain_epochs=1)
    opts = model.configure_optimizers()
    model.train()
    for step in range(30):
        model.set_epoch(0 if step < 5 else 1)  # five pre-training steps for aae_mtl
        model.training_step(train, opts)
    model.eval()
    with torch.no_grad():
        out = model.predict(test)
    acc = {t: accuracy(out[t], test[t]) for t in model.heads}
    print(f"{variant}: {acc}")
    # Measured over data/init seeds 0-7 (aae_mtl): emotion 0.98-1.0, gender 0.86-1.0, speaker 0.77-1.0.
    assert acc["emotion"] > 0.8, acc  # chance 0.25
    if variant == "aae_mtl":
        assert acc["gender"] > 0.75 and acc["speaker"] > 0.6, acc  # chance 0.5 and 0.25


@pytest.fixture(scope="module")
def aae_shards(synth_corpora, tmp_path_factory):
    """``spectrogram`` shards of the synthetic IEMOCAP (labelled) and LibriSpeech (auxiliary) corpora."""
    from data_io.ingest import ingest

    out = tmp_path_factory.mktemp("aae_shards")
    ingest("iemocap", synth_corpora / "iemocap", out, ["spectrogram"], shard_size=128)
    ingest("librispeech", synth_corpora / "librispeech", out, ["spectrogram"], shard_size=128)
    return out


@pytest.mark.slow
def test_aae_mtl_trains_on_the_synthetic_corpus_with_librispeech_speakers(aae_shards):
    """The shared loop end to end: speech-only windows, IEMOCAP emotion with LibriSpeech rows training gender and
    speaker, speaker-independent folds (so the speaker metric is the verification EER), the paper's lr schedule;
    test scored from the best state."""
    from data_io import folds as folds_mod
    from data_io import shards
    from data_io.store import load_store
    from trainables.data import SearchData
    from trainables.loop import evaluate_state, run_trial

    iemocap = shards.open_shards(aae_shards / "iemocap" / "spectrogram")
    libri = shards.open_shards(aae_shards / "librispeech" / "spectrogram")
    fold = folds_mod.build_folds("speaker_kfold", iemocap.metadata(), k=5)[0]
    store = load_store([iemocap], [(libri, ("gender", "speaker"))])
    aux_ids = libri.metadata().column("utt_id").to_pylist()
    data = SearchData(store=store.subset([*fold.train_ids, *fold.val_ids, *aux_ids]), folds=[fold.for_search()],
                      targets=("emotion", "gender", "speaker"),
                      classes={"emotion": ["neutral", "happy", "sad", "angry"]}, emotion_merge={"excited": "happy"})
    config = {"family": "aae_mtl", "variant": "aae_mtl", "window": 128, "pools": ((2, 2), (2, 2), (2, 2)),
              "channels": (16, 16, 8), "head_filters": 8, "dense": (32, 32), "lr": 0.02, "momentum": 0.9,
              "pretrain_epochs": 1, "aux_speakers": 4, "enrol_utterances": 3, "seed": 0, "max_epochs": 3,
              "patience": 2, "lr_schedule": "halve_on_plateau", "min_lr": 1e-3, "batch_size": 32,
              "metric": "val_ua_emotion", "mode": "max"}
    reports = []
    run_trial(config, data, lambda m, s: reports.append((m, s)))
    last = reports[-1][0]
    assert 0 <= last["val_eer_speaker"] <= 1 and "val_acc_speaker_id" not in last  # unseen validation speakers
    assert np.isfinite(last["val_ua_emotion"]) and "lr_scale" in last
    # Measured (seed 0): gender UA 0.91 after the second epoch, 1.0 after the third. Emotion needs more epochs than a
    # test affords (lr 0.01, 8 epochs: UA 0.25-0.27 for five epochs, then 0.46); the fast band test covers it.
    assert max(m["val_ua_gender"] for m, _ in reports) > 0.8, [m["val_ua_gender"] for m, _ in reports]
    state = [s for _, s in reports if s is not None][-1]
    test = evaluate_state(state, store, [list(fold.test.open("aae_mtl learning test"))])
    assert 0 <= test["test_ua_emotion"] <= 1 and 0 <= test["test_eer_speaker"] <= 1
