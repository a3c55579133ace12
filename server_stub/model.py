"""The course model: a scikit-learn classifier on the iris data bundled with scikit-learn.

Training is deterministic and takes well under a second, so every notebook and test can
make its own copy without downloading anything.

A saved model directory holds two files:

- ``model.joblib``: the fitted ``Pipeline(StandardScaler, LogisticRegression)``;
- ``meta.json``: the name, version, feature order, class names and the library versions
  the model was saved with (see notebook 03 for why those travel with the artifact).
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"
MODEL_NAME = "iris"
MODEL_VERSION = "1"
# Short, URL- and JSON-friendly names in the order the model expects its columns.
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def train(seed: int = 0):
    """Fit the course model on iris. Returns ``(model, class_names)``."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(data.data, data.target)
    return model, [str(name) for name in data.target_names]


def save_model(model_dir: str | Path, seed: int = 0) -> Path:
    """Train the model and write ``model.joblib`` and ``meta.json`` into ``model_dir``.

    Returns the directory. Existing files are overwritten.
    """
    import joblib
    import sklearn

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model, classes = train(seed)
    joblib.dump(model, model_dir / MODEL_FILE)
    meta = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "features": FEATURES,
        "classes": classes,
        "sklearn_version": sklearn.__version__,
        "joblib_version": joblib.__version__,
    }
    (model_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return model_dir


def ensure_model(model_dir: str | Path, seed: int = 0) -> Path:
    """Return ``model_dir``, training and saving the model first if it is not there yet."""
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / META_FILE).is_file():
        save_model(model_dir, seed)
    return model_dir


def read_meta(model_dir: str | Path) -> dict:
    """Read ``meta.json`` from a model directory."""
    return json.loads((Path(model_dir) / META_FILE).read_text())


def sample_instances() -> list[list[float]]:
    """Three iris rows, one of each class, as lists in ``FEATURES`` order."""
    return [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 4.1, 1.0], [6.7, 3.1, 5.6, 2.4]]
