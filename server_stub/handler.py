"""The handler contract, in the style of TorchServe's ``BaseHandler``.

A model server calls ``handle(data, context)`` once per batch. ``data`` is a list of
requests; each request is a dict holding its payload under ``"body"`` or ``"data"``.
``handle`` must return a list with exactly one result per request, in the same order.

You subclass :class:`BaseHandler` and fill in the five methods (notebook 04).
"""
from __future__ import annotations

from pathlib import Path


# Feature values beyond this magnitude are refused: no iris is a kilometre long, and values
# near the float limit overflow inside the model (a 500 instead of a 400).
MAX_ABS_VALUE = 1_000_000.0


class HandlerError(Exception):
    """A request the handler cannot serve.

    ``status`` is the HTTP status the server should answer with (400 for bad input),
    ``message`` says what is wrong and names the bad field, e.g.
    ``"instance 0: feature 'petal_width' is missing"``.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.message}


class Context:
    """What the server tells a handler about the model it serves.

    Mirrors the parts of TorchServe's context that a CPU model needs:
    ``system_properties["model_dir"]`` is where the serialized model lives, and
    ``manifest["model"]`` names the model and its version.
    """

    def __init__(self, model_dir: str | Path, model_name: str = "iris", model_version: str = "1"):
        self.model_name = model_name
        self.model_version = model_version
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"modelName": model_name, "modelVersion": model_version}}

    @property
    def model_dir(self) -> Path:
        return Path(self.system_properties["model_dir"])


class BaseHandler:
    """Base class for a model handler.

    Subclasses implement every method below. After ``initialize`` the handler sets
    ``self.initialized = True`` and keeps ``self.context``.
    """

    def __init__(self):
        self.initialized = False
        self.context: Context | None = None
        self.model = None

    def initialize(self, context: Context) -> None:
        """Load the serialized model from ``context.system_properties["model_dir"]``."""
        raise NotImplementedError

    def preprocess(self, data: list[dict]):
        """Validate a batch of requests and turn it into model input.

        Receives the list of requests; returns a 2-D array, one row per request.
        Raises :class:`HandlerError` (status 400) naming the first bad field.
        """
        raise NotImplementedError

    def inference(self, x):
        """Run the model on preprocessed input; return its raw outputs, one row per input row."""
        raise NotImplementedError

    def postprocess(self, y) -> list:
        """Turn raw outputs into one JSON-ready result per request, in order."""
        raise NotImplementedError

    def handle(self, data: list[dict], context: Context) -> list:
        """Run ``preprocess``, ``inference`` and ``postprocess`` on one batch."""
        raise NotImplementedError
