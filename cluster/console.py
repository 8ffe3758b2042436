"""What a sweep prints: phase headers, one line per finished trial, a progress bar per phase, the table once.

Ray's own output is configured through its public API, not muted: ``RunConfig(verbose=0)`` (Tune's status tables and
result boxes off) and ``ray.init(logging_config=LoggingConfig(log_level="WARNING"))`` (workers' INFO lines, e.g. one
"Checkpoint successfully created" per epoch, off). Warnings and trial errors still reach the console. ``--verbose``
gives Ray's full output back (``verbose=2``, INFO logging) next to these lines.

The trial lines come from :class:`cluster.tracking.TrialRunLogger` when it closes a trial's run, through the module's
active :class:`Progress` (the callback itself is pickled into the Tune experiment, a console is not).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

_active: Progress | None = None


def ray_verbosity(verbose: bool) -> int:
    """Tune's ``RunConfig.verbose``: 0 (silent; emotune prints its own lines) or 2 (Ray's full output)."""
    return 2 if verbose else 0


def ray_log_level(verbose: bool) -> str:
    return "INFO" if verbose else "WARNING"


def configure(verbose: bool) -> None:
    """Quiet defaults through each library's own settings; a variable the user set is left as it is.

    - Ray Tune: its new output engine prints an experiment banner and a results path even at ``verbose=0``; the
      legacy reporter (``RAY_AIR_NEW_OUTPUT=0``) prints nothing at 0, so a quiet sweep uses it.
    - MLflow: no per-artifact download bars (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``).
    - Optuna: WARNING (no "A new study created" lines).
    """
    import os

    import optuna

    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def phase(name: str, detail: str = "") -> None:
    """A phase header: ``== search: 8 trials, 2 at a time (tpe, asha) ==``."""
    print(f"\n== {name}{': ' + detail if detail else ''} ==", flush=True)


class Progress:
    """One phase's progress: a line per finished trial and a bar of finished / total trials (on stderr).

    Args:
        phase: ``search`` or ``repeats``.
        total: Trials the phase will run.
        metric: The objective, shown per trial at its best epoch.
        done: Trials already finished (a resumed phase).
    """

    def __init__(self, phase: str, total: int, metric: str, done: int = 0):
        from tqdm import tqdm

        self.phase, self.total, self.metric, self.done = phase, int(total), metric, int(done)
        # The bar only where a person watches a terminal: in a job log (ray job submit) or a pipe, the trial lines
        # ("search 3/8 ...") say the same without carriage-return noise.
        self.bar = tqdm(total=self.total, initial=done, desc=phase, unit="trial", file=sys.stderr, leave=False,
                        dynamic_ncols=True, mininterval=1.0, disable=not _isatty(sys.stderr))

    def __enter__(self) -> Progress:
        global _active
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        self.bar.close()

    def trial_finished(self, name: str, outcome: str, summary: Mapping[str, float], epochs: int) -> None:
        from tqdm import tqdm

        best = summary.get(f"best_{self.metric}")
        score = f"{self.metric} {best:.4f} at epoch {int(summary['best_epoch'])}" if best is not None else "no score"
        self.done += 1
        self.bar.update(1)
        n = min(self.done, self.total)
        tqdm.write(f"  {self.phase} {n:>{len(str(self.total))}}/{self.total}  {name:<22} epochs {epochs:>3}  "
                   f"{score}  {outcome}", file=sys.stdout)
        sys.stdout.flush()


def trial_finished(name: str, outcome: str, summary: Mapping[str, float], epochs: int) -> None:
    """Report a finished trial to the active phase's progress (nothing when none is active)."""
    if _active is not None:
        _active.trial_finished(name, outcome, summary, epochs)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
