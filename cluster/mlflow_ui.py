"""Where a sweep's runs are in the MLflow UI, and how to open them.

MLflow 3.x opens an experiment on its GenAI pages (Overview: traces, token usage) unless the UI is in its
"Model training" workflow; the sweep's trial runs are then one toggle and one expander away. What decides the
view in the MLflow 3.17 UI (read from its bundle, ``mlflow/server/js/build/static/js``):

* The workflow type: the ``workflowType`` query parameter of the page (``genai`` or ``machine_learning``),
  else the last toggle position kept in the browser (``localStorage["mlflow.workflowType_v1"]``), else
  ``genai``. :func:`runs_url` sets ``workflowType=machine_learning``, so its link opens the training runs table.
* The experiment tag ``mlflow.experimentKind`` (``custom_model_development`` = "Machine learning",
  ``genai_development``, ...). The 3.17 open-source UI reads it only where its experiment-kind feature flag is
  off; that flag is on in the open-source build, so the tag alone does not change what it shows. It is still the
  documented kind of the experiment for UIs that do read it, so :func:`mark_training_experiment` sets it.
  MLflow's Python package has no constant or API for it (only ``set_experiment_tag``).
* Nested runs: the runs table nests child runs (tag ``mlflow.parentRunId``) under a collapsed parent row while
  it is sorted by creation time; sorted by another column it lists every run. :func:`runs_url` sorts by run name
  so the trial runs are listed straight away (``flat=False`` keeps MLflow's nested default).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sqlite3
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from mlflow.tracking import MlflowClient

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT ("Machine learning")
DEFAULT_PORT = 5000
HOST = "127.0.0.1"  # what ``make mlflow-ui`` binds
REPO = Path(__file__).resolve().parent.parent
MAKE_STORE = REPO / "mlflow.db"  # ``make mlflow-ui`` serves ``sqlite:///mlflow.db`` relative to the repo


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as a model-training one (``mlflow.experimentKind`` = :data:`TRAINING_KIND`).

    Idempotent: the tag is written only when missing or different. See the module docstring for what the
    MLflow 3.17 UI does with it (the link from :func:`runs_url` is what opens the runs table there).
    """
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def _port(port: int | None) -> int:
    """``port`` when given, else ``$MLFLOW_PORT`` (the Makefile's variable), else 5000."""
    if port is not None:
        return int(port)
    env = os.environ.get("MLFLOW_PORT", "").strip()
    return int(env) if env.isdigit() and 0 < int(env) < 65536 else DEFAULT_PORT


def _is_http(tracking_uri: str) -> bool:
    return urlsplit(tracking_uri).scheme.lower() in ("http", "https")


def ui_base_url(tracking_uri: str, port: int | None = None) -> str:
    """The UI's address: an http(s) tracking server itself; for a local store (sqlite, file) the UI that
    ``make mlflow-ui`` / ``mlflow ui`` serves on ``http://127.0.0.1:<port>``.

    ``port`` (local stores only) defaults to ``$MLFLOW_PORT``, else 5000. Credentials in an http URI are left out.
    """
    if _is_http(tracking_uri):
        parts = urlsplit(tracking_uri)
        host = parts.hostname or HOST
        if host in ("0.0.0.0", "::"):  # a bind-all address is not one a browser can open
            host = HOST
        elif ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
    return f"http://{HOST}:{_port(port)}"


def runs_url(tracking_uri: str, experiment_id: str, port: int | None = None, *, flat: bool = True) -> str:
    """The direct link to the experiment's training runs table (MLflow 3.x route ``#/experiments/<id>/runs``).

    ``workflowType=machine_learning`` puts the UI in its "Model training" view; with ``flat`` the table is
    sorted by run name, which lists child (trial) runs as rows instead of folding them under their parent run.
    """
    query = "workflowType=machine_learning"
    if flat:
        query += "&orderByKey=" + quote("tags.`mlflow.runName`", safe="") + "&orderByAsc=true"
    return f"{ui_base_url(tracking_uri, port)}/#/experiments/{quote(str(experiment_id), safe='')}/runs?{query}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, port: int | None = None) -> str:
    """The direct link to one run's page (``#/experiments/<id>/runs/<run id>``), in the "Model training" view."""
    exp, run = quote(str(experiment_id), safe=""), quote(str(run_id), safe="")
    return f"{ui_base_url(tracking_uri, port)}/#/experiments/{exp}/runs/{run}?workflowType=machine_learning"


def _local_store_path(tracking_uri: str) -> Path | None:
    """The file or folder of a local store (``sqlite:///rel.db``, ``sqlite:////abs.db``, ``file:...``, a path)."""
    scheme = urlsplit(tracking_uri).scheme.lower()
    if scheme == "sqlite":
        rest = tracking_uri.split(":", 1)[1]
        if not rest.startswith("///") or rest == "///" or rest.startswith("///:memory:"):
            return None
        return Path(rest[3:])
    if scheme == "file":
        parts = urlsplit(tracking_uri)
        return Path(parts.path) if parts.path else None
    if scheme == "" and tracking_uri and not tracking_uri.startswith(("databricks", "uc")):
        return Path(tracking_uri)  # a bare path: MLflow's file store
    return None


def _mlflow_command() -> str:
    """``mlflow`` where it is on PATH, else the one next to this interpreter (a venv that is not activated)."""
    if shutil.which("mlflow"):
        return "mlflow"
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.exists() else "mlflow"


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """One line (two for a store other than the repo's ``mlflow.db``) telling how to open the runs table."""
    url = runs_url(tracking_uri, experiment_id)
    if _is_http(tracking_uri):
        return f"MLflow: {url}"
    path = _local_store_path(tracking_uri)
    if path is None:
        return f"MLflow: open the experiment {experiment_id} of {tracking_uri} in an MLflow UI"
    path = path.expanduser().resolve()
    if path == MAKE_STORE.resolve() and (REPO / "Makefile").is_file():
        return f"MLflow: make mlflow-ui, then open {url}"
    store = f"sqlite:///{path}" if urlsplit(tracking_uri).scheme.lower() == "sqlite" else path.as_uri()
    port = _port(None)
    command = f"{_mlflow_command()} ui --backend-store-uri {shlex.quote(store)} --host {HOST} --port {port}"
    return f"MLflow: {command}\n  then open {url}"


def store_experiments(db: Path) -> list[tuple[str, str]]:
    """``(experiment_id, name)`` of the active experiments in a sqlite store, read-only (an MlflowClient would
    create or migrate the file); empty when the file is missing or not an MLflow store."""
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            rows = con.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                               "ORDER BY experiment_id").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    return [(str(eid), name) for eid, name in rows]


def banner(db: Path, port: int | None = None, limit: int = 10) -> str:
    """What ``make mlflow-ui`` prints before it starts the UI on store ``db``: the address, and the runs link of
    each experiment in the store (the Default one only when it is the only one)."""
    uri = f"sqlite:///{db.resolve()}"
    lines = [f"MLflow UI: {ui_base_url(uri, port)} (starting; Ctrl-C stops it)"]
    exps = store_experiments(db)
    shown = [(eid, name) for eid, name in exps if eid != "0"] or exps
    if not shown:
        lines.append(f"  no experiments in {db} yet: `make demo` or `emotune sweep` log there and print the runs link")
    for eid, name in shown[:limit]:
        lines.append(f"  {name} runs: {runs_url(uri, eid, port)}")
    if len(shown) > limit:
        lines.append(f"  ... {len(shown) - limit} more experiments")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the MLflow UI links of a local sqlite store's experiments.")
    parser.add_argument("--store", default=str(MAKE_STORE), help="the sqlite file (default: the repo's mlflow.db)")
    parser.add_argument("--port", type=int, default=None, help="the UI's port (default: $MLFLOW_PORT, else 5000)")
    args = parser.parse_args(argv)
    print(banner(Path(args.store), args.port), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
