"""What a trial is given: the read-only feature store of the rows search may use, the search folds, the targets.

The driver decodes the shards once (``data_io.store.load_store``), keeps only the rows that some fold trains or
validates on plus the auxiliary rows, and shares the result through Ray's object store (``tune.with_parameters``):
trials get a zero-copy, read-only view instead of one decoded copy each (notes 2), and build every batch out of it
(``data_io.feed``). Test rows that no fold trains on (every row of a ``predefined`` test split) are not in the store
at all. Under cross-validation protocols (``loso``, ``speaker_kfold``) a row tested in fold k trains fold j, so it is
in the store; fold k's trainable still only ever addresses its own ``SearchFold.train_ids``/``val_ids``, and its
test ids are never sent to a trial (``TestLockbox`` refuses to be pickled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from data_io import targets as targets_mod
from data_io.folds import SearchFold
from data_io.store import FeatureStore, load_store

__all__ = ["FeatureStore", "SearchData", "build_encoders", "load_store"]


@dataclass
class SearchData:
    """Everything a search trial receives: the store of train+validation (+ auxiliary) rows and the search folds.

    Attributes:
        store: Features of the rows that some fold trains or validates on, and every auxiliary row.
        folds: Search views of the protocol's folds (no test ids).
        targets: Target names, e.g. ``("arousal", "valence", "dominance")`` (``data.targets``).
        classes: Explicit class lists, e.g. ``{"emotion": ["neutral", "happy", "sad", "angry"]}``.
        emotion_merge: Category renames applied before class lookup (e.g. ``{"excited": "happy"}``).
        encoders: How each target is encoded (``data.encoders``); unlisted targets get their default encoder.
    """

    store: FeatureStore
    folds: list[SearchFold]
    targets: tuple[str, ...]
    classes: dict[str, list[str]] = field(default_factory=dict)
    emotion_merge: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str | dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fold in self.folds:
            if not isinstance(fold, SearchFold):
                raise TypeError(f"SearchData takes SearchFold views (fold.for_search()), got {type(fold).__name__}")
        self.targets = tuple(self.targets)
        self.target_specs = targets_mod.parse_targets(self.targets, self.encoders)

    def new_encoders(self) -> dict:
        """Fresh (unfitted) target encoders, one per target; each fold fits its own on its training rows."""
        return build_encoders(self.target_specs, self.store, self.classes, self.emotion_merge)


def build_encoders(specs: Sequence, store: FeatureStore, classes: Mapping | None, merge: Mapping | None) -> dict:
    """Unfitted encoders for ``specs`` with the store's label scales and class vocabulary."""
    classes = dict(classes or {})
    return targets_mod.build_encoders(specs, label_scales=store.label_scales,
                                      emotion_classes=classes.get("emotion"), emotion_merge=dict(merge or {}),
                                      vocabulary_meta=store.meta)
