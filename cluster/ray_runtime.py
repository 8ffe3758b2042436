"""Starting or joining Ray, and running plain functions as Ray tasks (the edge where Ray meets data_io).

Local clusters bind to 127.0.0.1 only: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be set before Ray is imported,
otherwise Ray rewrites the node address to the host IP and listens on all interfaces (notes, pitfall 11).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, *, dashboard: bool = False,
             runtime_env: dict | None = None, log_level: str = "WARNING") -> bool:
    """Join the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``) or start a local one.

    Args:
        num_cpus: CPUs of a local cluster (default: all cores); ignored when joining a cluster.
        num_gpus: GPUs of a local cluster (default: detected).
        dashboard: Start the dashboard of a local cluster (on 127.0.0.1).
        runtime_env: Runtime environment (e.g. ``env_vars`` for the MLflow tracking URI on remote workers).
        log_level: Python logging level of Ray's worker processes (``LoggingConfig``): WARNING keeps per-epoch INFO
            lines such as "Checkpoint successfully created" off the console; INFO shows them.

    Returns:
        True when this call started a local cluster (the caller should shut it down), False otherwise.
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=True,
                 logging_config=ray.LoggingConfig(log_level=log_level))
        return False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=True, configure_logging=True, logging_level="WARNING",
             logging_config=ray.LoggingConfig(log_level=log_level))
    return True


def ray_map_unordered(func: Callable, args_list: Sequence[tuple], num_cpus: float = 1.0) -> Iterator:
    """Run ``func(*args)`` for every args tuple as Ray tasks; yield results as they finish.

    At most one task per CPU runs at once, each with ``num_cpus`` CPUs, so N tasks never each use every core
    (Ray sets OMP_NUM_THREADS to the task's CPUs when unset).
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(func)
    pending = [remote.remote(*args) for args in args_list]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
