"""``emotune promote``: move the ``champion`` alias to the ``candidate`` version behind a validation gate.

The gate compares validation scores only (the test set chose nothing), and only scores measured on the same data:
both versions carry the metric, its mode and the data manifest hash as model-version tags (set at registration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


@dataclass
class PromotionDecision:
    promoted: bool
    message: str
    candidate_version: str | None = None
    champion_version: str | None = None
    noop: bool = False  # the candidate already is the champion: nothing to do, not a refusal


def _by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _score(version) -> float | None:
    """The version's validation score, or None when the tag is missing or not a finite number."""
    try:
        value = float(version.tags["val_score"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def promote(model_name: str, tracking_uri: str, candidate_alias: str = "candidate",
            champion_alias: str = "champion") -> PromotionDecision:
    """Point ``champion_alias`` at the candidate version if it beats the champion on validation.

    Raises:
        ValueError: No registered model of that name, or no candidate version.
    """
    client = MlflowClient(tracking_uri)
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ValueError(f"no registered model {model_name!r} at {tracking_uri}; registered: {names}") from None
    cand = _by_alias(client, model_name, candidate_alias)
    if cand is None:
        raise ValueError(f"model {model_name!r} has no version with alias {candidate_alias!r}; run a sweep first")
    if _score(cand) is None:
        raise ValueError(f"candidate v{cand.version} of {model_name!r} has no finite validation score (tag val_score "
                         f"= {cand.tags.get('val_score')!r}); only versions registered by a finished sweep can be "
                         f"promoted")
    champ = _by_alias(client, model_name, champion_alias)
    if champ is None:
        client.set_registered_model_alias(model_name, champion_alias, cand.version)
        return PromotionDecision(True, f"no {champion_alias} yet: version {cand.version} "
                                       f"({cand.tags.get('val_metric')} = {_score(cand):.4f}) is now "
                                       f"{champion_alias}", cand.version, cand.version)
    if champ.version == cand.version:
        return PromotionDecision(False, f"nothing to do: version {cand.version} ({cand.tags.get('val_metric')} = "
                                        f"{_score(cand):.4f}) is already {champion_alias}", cand.version,
                                 champ.version, noop=True)
    c_tags, h_tags = cand.tags, champ.tags
    if (c_tags.get("val_metric"), c_tags.get("val_mode")) != (h_tags.get("val_metric"), h_tags.get("val_mode")):
        return PromotionDecision(False, f"not promoted: candidate v{cand.version} was selected on "
                                        f"{c_tags.get('val_metric')} ({c_tags.get('val_mode')}) but champion "
                                        f"v{champ.version} on {h_tags.get('val_metric')} ({h_tags.get('val_mode')}); "
                                        f"the scores are not comparable", cand.version, champ.version)
    if c_tags.get("data_manifest_hash") != h_tags.get("data_manifest_hash"):
        return PromotionDecision(False, f"not promoted: candidate v{cand.version} was validated on data "
                                        f"{str(c_tags.get('data_manifest_hash'))[:12]} but champion v{champ.version} "
                                        f"on {str(h_tags.get('data_manifest_hash'))[:12]}; validation scores on "
                                        f"different data are not comparable (re-run the sweep on the champion's "
                                        f"shards)", cand.version, champ.version)
    c_score, h_score = _score(cand), _score(champ)
    if h_score is None:  # a champion without a valid score (set by hand) is beaten by any scored candidate
        client.set_registered_model_alias(model_name, champion_alias, cand.version)
        return PromotionDecision(True, f"promoted: champion v{champ.version} has no finite validation score; "
                                       f"{champion_alias} -> v{cand.version}", cand.version, champ.version)
    better = c_score > h_score if c_tags.get("val_mode", "max") == "max" else c_score < h_score
    metric = c_tags.get("val_metric")
    if not better:
        return PromotionDecision(False, f"not promoted: candidate v{cand.version} {metric} = {c_score:.4f} does not "
                                        f"beat champion v{champ.version} {metric} = {h_score:.4f}", cand.version,
                                 champ.version)
    client.set_registered_model_alias(model_name, champion_alias, cand.version)
    return PromotionDecision(True, f"promoted: v{cand.version} {metric} = {c_score:.4f} beats v{champ.version} "
                                   f"{metric} = {h_score:.4f}; {champion_alias} -> v{cand.version}", cand.version,
                             champ.version)
