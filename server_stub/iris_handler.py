"""A finished handler for the course model.

Notebook 05 serves this handler so that the Flask exercises do not depend on your
notebook-04 answer. Do notebook 04 first: this file is one possible answer to it.
"""
from __future__ import annotations

import json
import math
from numbers import Real

import numpy as np

from server_stub.handler import MAX_ABS_VALUE, BaseHandler, Context, HandlerError
from server_stub.model import MODEL_FILE, read_meta


class IrisHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        import joblib

        model_dir = context.model_dir
        self.meta = read_meta(model_dir)
        self.features = list(self.meta["features"])
        self.classes = list(self.meta["classes"])
        self.model = joblib.load(model_dir / MODEL_FILE)
        self.context = context
        self.initialized = True

    def _row(self, index: int, instance) -> list[float]:
        if isinstance(instance, dict):
            unknown = sorted(set(instance) - set(self.features))
            if unknown:
                raise HandlerError(f"instance {index}: unknown feature '{unknown[0]}'")
            missing = [name for name in self.features if name not in instance]
            if missing:
                raise HandlerError(f"instance {index}: feature '{missing[0]}' is missing")
            values = [(name, instance[name]) for name in self.features]
        elif isinstance(instance, list):
            if len(instance) != len(self.features):
                raise HandlerError(
                    f"instance {index}: expected {len(self.features)} feature values, got {len(instance)}"
                )
            values = list(zip(self.features, instance))
        else:
            raise HandlerError(
                f"instance {index}: expected a list of {len(self.features)} numbers or an object keyed by feature name"
            )
        row = []
        for name, value in values:
            # bool is a subclass of int; true/false is not a measurement.
            if isinstance(value, bool) or not isinstance(value, Real):
                raise HandlerError(f"instance {index}: feature '{name}' must be a number, got {value!r}")
            if not math.isfinite(value):
                raise HandlerError(f"instance {index}: feature '{name}' must be finite, got {value!r}")
            if abs(value) > MAX_ABS_VALUE:
                raise HandlerError(f"instance {index}: feature '{name}' is out of range (±{MAX_ABS_VALUE:g}), got {value!r}")
            row.append(float(value))
        return row

    def preprocess(self, data: list[dict]) -> np.ndarray:
        if not isinstance(data, list) or not data:
            raise HandlerError("expected a non-empty list of requests")
        rows = []
        for index, request in enumerate(data):
            if not isinstance(request, dict) or ("body" not in request and "data" not in request):
                raise HandlerError(f"request {index}: expected a dict with 'body' or 'data'")
            payload = request.get("body", request.get("data"))
            if isinstance(payload, (bytes, bytearray)):
                payload = payload.decode("utf-8", errors="replace")
            if isinstance(payload, str):
                try:
                    payload = json.loads(payload)
                except ValueError:
                    raise HandlerError(f"instance {index}: body is not valid JSON") from None
            rows.append(self._row(index, payload))
        return np.asarray(rows, dtype=float)

    def inference(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)

    def postprocess(self, y: np.ndarray) -> list[dict]:
        best = np.argmax(y, axis=1)
        return [
            {"label": self.classes[int(k)], "confidence": float(row[k])}
            for k, row in zip(best, y)
        ]

    def handle(self, data: list[dict], context: Context) -> list[dict]:
        if not self.initialized:
            self.initialize(context)
        return self.postprocess(self.inference(self.preprocess(data)))
