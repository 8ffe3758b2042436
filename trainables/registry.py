"""The explicit family registry (STYLE.md 5): a family name -> its config class, model class and search space.

Never import-by-string: a config names a family, and only names listed here exist. Adding a family is one line
here plus its model module, its space, its config YAML and its row in the contract-test table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from searchspace import aae_mtl as aae_mtl_space
from searchspace import center_loss as center_loss_space
from searchspace import dcgan as dcgan_space
from searchspace import ladder as ladder_space
from searchspace import selective_mtl as selective_mtl_space
from trainables import aae_mtl, center_loss, dcgan, ladder, selective_mtl
from trainables.base import SERModel


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Attributes:
        name: Registry key, also the ``family`` tag in MLflow.
        config_cls: Typed dataclass config with the paper's defaults.
        model_cls: The :class:`SERModel` subclass built from ``(config, DataSpec)``.
        space: ``space(trial, **options) -> dict`` Optuna define-by-run space (importable, for Tuner.restore).
        search_only: Optuna parameters that are reparametrisations, not config fields (ignored when building
            the config; e.g. ``beta_share``).
        grid_space: ``grid_space(**space_options) -> {param: [values]}`` for Optuna's GridSampler, or None when
            the family has no grid (then ``sampler: grid`` is refused before Ray starts).
        grid_fixed: Values of the continuous knobs during grid search (the paper's), merged under ``fixed``.
        warm_start: ``warm_start(point, **options) -> point`` mapping config-field names to the space's
            Optuna parameter names (e.g. ``beta`` -> ``beta_share``).
        arm_params: Config fields that, beside the variant (and input), make a row of the paper's tables: selection
            and repeats are per value (e.g. the selective-MTL paper's ``half`` data setting).
        needs_auxiliary: Variants that learn from unlabeled rows (the DCGAN variants): a sweep of one of them with
            an empty ``data.auxiliary`` is refused before Ray starts.
    """

    name: str
    config_cls: type
    model_cls: type[SERModel]
    space: Callable
    search_only: tuple[str, ...] = ()
    grid_space: Callable | None = None
    grid_fixed: dict = dataclasses.field(default_factory=dict)
    warm_start: Callable | None = None
    arm_params: tuple[str, ...] = ()
    needs_auxiliary: tuple[str, ...] = ()

    def config_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config_cls)}


FAMILIES: dict[str, Family] = {
    "ladder": Family("ladder", ladder.LadderConfig, ladder.LadderModel, ladder_space.space,
                     search_only=tuple(ladder_space.SEARCH_ONLY_PARAMS), grid_space=ladder_space.grid_search_space,
                     grid_fixed=dict(ladder_space.PAPER_FIXED), warm_start=ladder_space.warm_start_params),
    "center_loss": Family("center_loss", center_loss.CenterLossConfig, center_loss.CenterLossModel,
                          center_loss_space.space, grid_space=center_loss_space.grid_search_space,
                          grid_fixed=dict(center_loss_space.PAPER_FIXED)),
    "selective_mtl": Family("selective_mtl", selective_mtl.SelectiveMTLConfig, selective_mtl.SelectiveMTLModel,
                            selective_mtl_space.space, grid_space=selective_mtl_space.grid_search_space,
                            grid_fixed=dict(selective_mtl_space.PAPER_FIXED), arm_params=("half",)),
    "dcgan": Family("dcgan", dcgan.DCGANConfig, dcgan.DCGANModel, dcgan_space.space,
                    search_only=dcgan_space.SEARCH_ONLY_PARAMS, grid_space=dcgan_space.grid_search_space,
                    grid_fixed=dict(dcgan_space.PAPER_FIXED), warm_start=dcgan_space.warm_start_params,
                    needs_auxiliary=("basic_dcgan", "multitask_dcgan")),
    "aae_mtl": Family("aae_mtl", aae_mtl.AAEMTLConfig, aae_mtl.AAEMTLModel, aae_mtl_space.space,
                      grid_space=aae_mtl_space.grid_search_space, grid_fixed=dict(aae_mtl_space.PAPER_FIXED),
                      arm_params=("aux_tasks",)),
}


def get_family(name: str) -> Family:
    """The registered family called ``name``.

    Raises:
        ValueError: Unknown name; the message lists the registered families.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; registered families: {sorted(FAMILIES)}") from None
