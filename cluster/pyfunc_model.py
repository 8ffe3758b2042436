"""The registered emotion model as an MLflow "models from code" pyfunc: features in, named predictions out.

MLflow copies this file into the logged model and runs it on ``mlflow.pyfunc.load_model``; it must therefore import
nothing but torch, numpy, pandas and mlflow (a user loads the model where emotune is not installed). It is logged by
``cluster.export.log_registered_model`` with two artifacts:

* ``network``: the fold's model with its training-fold normalisation baked in (``trainables.loop.Standardized``),
  saved with ``torch.export`` in eval mode (no dropout, batch norm on running statistics) and a dynamic batch axis.
  It maps raw features ``(n, *input_shape)`` float32 to stacked outputs ``(n, n_columns)``: regression targets on
  the training scale [-1, 1], class and soft targets as softmax probabilities.
* ``outputs``: JSON describing the input and every output column (``cluster.export.output_spec``)::

      {"input": {"name": "features", "shape": [D]},
       "columns": ["arousal", "valence", "emotion.neutral", ...],
       "targets": [{"name": "arousal", "kind": "regression", "columns": ["arousal"], "scale": [1.0, 7.0],
                    "corpus": "msp_podcast"},
                   {"name": "emotion", "kind": "class", "columns": ["emotion.neutral", ...]}, ...]}

``predict`` maps each regression column back onto its corpus's own rating scale, ``low + (v + 1) / 2 * (high -
low)``: the inverse of the training encoder ``v = 2 * (y - low) / (high - low) - 1`` (``data_io.targets``). The
result is not clipped: a model may predict slightly outside the scale, as it did when it was validated.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

INPUT_NAME = "features"
MAX_BATCH_VALUES = 2**23  # about 32 MiB of float32 input per forward pass (as the training loop's evaluation)


# predict() is unannotated on purpose (type hints would replace the named signature the model is logged with);
# MLflow warns about that whenever a class like this is defined, here and wherever the model is loaded.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


class EmotionModel(mlflow.pyfunc.PythonModel):
    """Raw acoustic features -> a DataFrame of named predictions (see the module docstring)."""

    def load_context(self, context) -> None:
        self.net = torch.export.load(context.artifacts["network"]).module()
        spec = json.loads(Path(context.artifacts["outputs"]).read_text())
        self.input_shape = tuple(int(s) for s in spec["input"]["shape"])
        self.columns = [str(c) for c in spec["columns"]]
        # (first column, last column + 1, low, high) of each regression target with a corpus scale
        self.rescale = []
        start = 0
        for target in spec["targets"]:
            stop = start + len(target["columns"])
            if target["kind"] == "regression" and target.get("scale") is not None:
                low, high = (float(v) for v in target["scale"])
                self.rescale.append((start, stop, low, high))
            start = stop
        if start != len(self.columns):
            raise ValueError(f"outputs.json lists {len(self.columns)} columns but its targets cover {start}; the "
                             f"artifact is corrupt")

    # No type hints on model_input: MLflow 3 would infer a signature from them and enforce that one instead of the
    # logged tensor signature.
    def predict(self, context, model_input, params=None):
        """Predict emotions of ``n`` examples.

        Args:
            context: MLflow's model context (unused after ``load_context``).
            model_input: Raw (un-normalised) features of shape ``(n, *input_shape)``, or ``input_shape`` for one
                example, float32 or float64 (cast to float32): a numpy array; a dict ``{"features": array}``; or a
                pandas DataFrame whose column ``features`` holds one array per row, or whose columns are the
                feature dimensions (vector features only).
            params: Unused.

        Returns:
            A DataFrame with one row per example and the columns of ``outputs.json``: regression targets on their
            corpus's rating scale, ``<target>.<class>`` probabilities of class and soft targets.

        Raises:
            ValueError: An input of another shape, or a dict or DataFrame without ``features``.
        """
        x = self._features(model_input)
        if len(x) == 0:
            return pd.DataFrame({c: np.zeros(0) for c in self.columns})
        step = max(1, min(4096, MAX_BATCH_VALUES // max(1, int(np.prod(self.input_shape)))))
        with torch.no_grad():
            y = np.concatenate([self.net(torch.from_numpy(x[i:i + step])).numpy()
                                for i in range(0, len(x), step)]).astype(np.float64)
        if y.shape[1] != len(self.columns):
            raise ValueError(f"the network gives {y.shape[1]} outputs per example but outputs.json names "
                             f"{len(self.columns)} columns {self.columns}; the artifacts do not belong together")
        for start, stop, low, high in self.rescale:
            y[:, start:stop] = low + (y[:, start:stop] + 1.0) * 0.5 * (high - low)
        return pd.DataFrame(y, columns=self.columns)

    def _features(self, model_input) -> np.ndarray:
        """``(n, *input_shape)`` float32, C-contiguous, from any accepted input form."""
        x = model_input
        if isinstance(x, dict):
            if INPUT_NAME not in x:
                raise ValueError(f"a dict input needs the key {INPUT_NAME!r}, got keys {sorted(x)}")
            x = x[INPUT_NAME]
        if isinstance(x, pd.DataFrame):
            if INPUT_NAME in x.columns:
                x = np.stack([np.asarray(v) for v in x[INPUT_NAME]]) if len(x) else np.zeros((0, *self.input_shape))
            elif len(self.input_shape) == 1:
                x = x.to_numpy()
            else:
                raise ValueError(f"a DataFrame input needs a column {INPUT_NAME!r} holding one {self.input_shape} "
                                 f"array per row; its columns are {list(x.columns)[:5]}...")
        x = np.asarray(x)
        if x.shape == self.input_shape:
            x = x[None]  # one example
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{INPUT_NAME} must have shape (n, {', '.join(map(str, self.input_shape))}) or "
                             f"{self.input_shape} for one example, got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{INPUT_NAME} must hold numbers (float32 or float64), got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)


mlflow.models.set_model(EmotionModel())
