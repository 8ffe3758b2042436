"""A sweep run once per test session and shared by the tests that only read what it left behind."""

from __future__ import annotations

import contextlib
import io
import os
from types import SimpleNamespace

import pytest

from tests.cluster.helpers import write_config


@pytest.fixture(scope="session")
def finished_sweep(msp_functionals, tmp_path_factory):
    """Two ladder variants, 4 TPE trials under ASHA, 2 seeds each, both trained as repeat runs (``reuse_search``
    off: the repeat runs are what the MLflow tests read): its MLflow store, result and console output."""
    from cluster.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("finished_sweep")
    shard_dir = msp_functionals[0] / "msp_podcast" / "functionals"
    path = write_config(tmp, shard_dir, **{"model.variants": ["dnn_mtl", "ladder_mtl"], "search.num_samples": 4,
                                           "search.scheduler": "asha", "search.grace_period": 1,
                                           "search.reduction_factor": 2, "repeats.reuse_search": False})
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(tmp)  # MLflow's sqlite artifact root is the working folder at experiment creation
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = run_sweep(path)
    finally:
        os.chdir(here)
    return SimpleNamespace(result=result, tmp=tmp, path=path, shard_dir=shard_dir, console=out.getvalue(),
                           uri=f"sqlite:///{tmp / 'mlflow.db'}")
