"""The Ray Tune function trainable: the only place where training meets Ray (STYLE.md 6).

It sets torch threads to the CPUs the trial was given (Ray only sets OMP_NUM_THREADS, and only when unset; notes
3), picks CUDA when the trial holds a GPU (Ray narrows CUDA_VISIBLE_DEVICES, so the GPU is ``cuda:0``), resumes
from the trial's checkpoint after a failure, and turns the loop's ``report(metrics, state)`` into
``tune.report`` with a ``tune.Checkpoint`` whenever the validation objective improved. The first result after each
start also says where the trial runs (:data:`PLACEMENT_KEYS`), which the driver turns into MLflow tags.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from trainables.data import SearchData
from trainables.loop import TrialDiverged, run_trial

STATE_FILE = "state.pt"
# Written into the trial's folder when it diverges: Tune retries failed trials (FailureConfig), and a retry from the
# last checkpoint with the same seed would diverge again; with the marker it fails at once with the same message.
DIVERGED_FILE = "emotune_diverged.txt"
# Test hook for the fault-tolerance tests: "<marker dir>:<epoch>" makes each trial raise once at that epoch.
FAULT_ENV = "EMOTUNE_FAIL_ONCE_AT_EPOCH"
# Where a trial runs: the Ray node id, the torch device's name ("cpu" or e.g. "NVIDIA H200") and the GPU ids Ray gave
# it ("" on CPU). Sent with the first result after every start, since a retried trial may land on another node, and
# always all three, since Tune's progress.csv takes its columns from the first result after a start. Strings in a
# result are fine: Tune's JSON and CSV loggers keep them, TensorBoard skips them, and the MLflow logger
# (cluster.tracking) logs only numbers as metrics and these as run tags.
NODE_ID_KEY, DEVICE_KEY, GPU_IDS_KEY = "node_id", "device_name", "gpu_ids"
PLACEMENT_KEYS = (NODE_ID_KEY, DEVICE_KEY, GPU_IDS_KEY)


def load_state(checkpoint_dir: str | Path) -> dict:
    """A checkpoint's training state (plain tensors and numbers only: ``weights_only=True``)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def placement(device: str) -> dict[str, str]:
    """:data:`PLACEMENT_KEYS` of this trial: its Ray node, its device's name and its GPU ids (inside a trial)."""
    import ray

    name = torch.cuda.get_device_name(torch.cuda.current_device()) if device == "cuda" else "cpu"
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return {NODE_ID_KEY: ray.get_runtime_context().get_node_id(), DEVICE_KEY: name, GPU_IDS_KEY: gpus}


def _maybe_inject_fault(trial_id: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    marker_dir, _, at = spec.rpartition(":")
    marker = Path(marker_dir) / f"{trial_id}.failed"
    if epoch == int(at) and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at epoch {epoch} ({FAULT_ENV})")


def tune_trainable(config: dict, data: SearchData | dict[str, SearchData]) -> None:
    """Ray Tune function trainable. ``config`` is a flat trial config; repeat runs nest it under ``repeat``.

    ``data`` is one :class:`SearchData`, or one per input feature set (``data.inputs``), of which the trial takes the
    one its config's ``input`` names.
    """
    import ray
    from ray import tune

    config = config.get("repeat", config)
    if isinstance(data, dict):
        data = data[config["input"]]
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    trial_id = tune.get_context().get_trial_id()
    marker = Path(tune.get_context().get_trial_dir()) / DIVERGED_FILE
    if marker.exists():
        raise TrialDiverged(marker.read_text())

    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume_state = load_state(d)

    where = placement(device)

    def report(metrics: dict, state: dict | None) -> None:
        nonlocal where
        _maybe_inject_fault(trial_id, int(metrics["epoch"]))
        if where:  # the first result of this start only
            metrics, where = {**metrics, **where}, {}
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        run_trial(config, data, report, resume_state=resume_state, device=device)
    except TrialDiverged as err:
        marker.write_text(str(err))
        raise
