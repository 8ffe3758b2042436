"""One contract suite over every registered family (STYLE.md 9): a table row per family drives it all."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from searchspace.schema import VARIANTS
from trainables.base import DataSpec
from trainables.loop import split_config
from trainables.registry import FAMILIES

# family -> (tiny config fields, input shape, targets, class counts[, target kinds]). A family missing here fails
# test_table_matches_registry.
FAMILY_CASES = {
    "ladder": ({"hidden": (16, 16)}, (24,), ("arousal", "valence", "dominance"), {}),
    "center_loss": ({"filters": 4, "hidden": 8, "decoder_hidden": (16,), "frames": 24}, (24, 16), ("emotion",),
                    {"emotion": 4}),
    "selective_mtl": ({"lstm_cells": 8, "attention_size": 8, "heads": 2, "fc1": 16, "fc2": 8, "frames": 12,
                       "neutral_index": 0}, (12, 10), ("emotion", "style"), {"emotion": 4, "style": 2}),
    "dcgan": ({"crop_width": 32, "filter_size": 3, "filters": 4, "fc_hidden": 8, "z_dim": 8}, (32, 16),
              ("valence", "arousal"), {"valence": 5, "arousal": 5}, {"valence": "soft", "arousal": "soft"}),
    "aae_mtl": ({"window": 32, "channels": (4, 4, 4), "head_filters": 4, "dense": (8, 8)}, (32, 16),
                ("emotion", "gender", "speaker"), {"emotion": 4, "gender": 2, "speaker": 5}),
}

CASES = [(name, variant) for name in FAMILY_CASES for variant in VARIANTS[name]]


def test_table_matches_registry():
    assert set(FAMILY_CASES) == set(FAMILIES)


def _batch(spec: DataSpec, n: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn((n, *spec.input_shape), generator=g), "utt_index": torch.arange(n)}
    for t in spec.targets:
        if spec.kind(t) == "regression":
            batch[t] = torch.rand(n, generator=g) * 2 - 1
        elif spec.kind(t) == "soft":
            batch[t] = torch.softmax(torch.randn(n, spec.n_classes[t], generator=g), dim=-1)
        else:
            batch[t] = torch.randint(0, spec.n_classes[t], (n,), generator=g)
        batch[f"{t}_mask"] = torch.ones(n, dtype=torch.bool)
    return batch


@pytest.mark.parametrize("family_name, variant", CASES)
def test_model_contract(family_name, variant):
    family = FAMILIES[family_name]
    fields, shape, targets, n_classes, *kinds = FAMILY_CASES[family_name]
    spec = DataSpec(input_shape=shape, targets=targets, n_classes=n_classes, kinds=kinds[0] if kinds else {})
    torch.manual_seed(0)
    model = family.model_cls(family.config_cls(variant=variant, **fields), spec)
    batch = _batch(spec)
    model.set_epoch(0)
    model.train()
    loss, logs = model.loss(batch)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and all(math.isfinite(v) for v in logs.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    optimizers = model.configure_optimizers()
    logs = model.training_step(batch, optimizers)
    assert math.isfinite(logs["loss"])
    model.eval()
    out = model.predict(batch)
    predicted = [t for t in targets if t in out]  # other keys are the family's own outputs (an embedding, ...)
    assert predicted
    for t, y in out.items():
        assert y.shape[0] == 8 and torch.isfinite(y).all(), t
        if t in targets:
            assert y.shape == ((8,) if spec.kind(t) == "regression" else (8, n_classes[t])), t
    exported = model(batch["x"])
    width = sum(1 if spec.kind(t) == "regression" else n_classes[t] for t in predicted)
    assert exported.shape == (8, width)
    assert model.example_input().shape == (2, *shape)


@pytest.mark.parametrize("family_name", sorted(FAMILY_CASES))
def test_space_yields_valid_configs(family_name):
    family = FAMILIES[family_name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(25):
        params = family.space(study.ask(), variants=VARIANTS[family_name])
        model_kwargs, _ = split_config({"family": family_name, **params}, family)
        family.config_cls(**model_kwargs)  # raises on an invalid combination


@pytest.mark.parametrize("family_name", sorted(FAMILY_CASES))
def test_unknown_config_keys_are_rejected(family_name):
    with pytest.raises(ValueError, match="not_a_field"):
        split_config({"family": family_name, "not_a_field": 1}, FAMILIES[family_name])
