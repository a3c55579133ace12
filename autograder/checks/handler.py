"""Checks for notebook 04, the model handler.

Each check runs the student's handler class in a child process
(:func:`autograder.isolate.run_isolated`), gets back plain JSON observations, and compares
them here with what the finished :class:`~server_stub.iris_handler.IrisHandler` gives for
the same input.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered
from autograder.harness import DEFAULT_MODEL_DIR
from autograder.isolate import describe_exception, run_isolated

TOL = 1e-6


def _observe(handler_class, model_dir: str, calls: list):
    """Child side: build and initialize a handler, then run ``calls`` on it.

    ``calls`` is a list of ``(method, argument)``. Returns one observation per call:
    ``{"value": ...}`` with the result made JSON-ready, or ``{"raised": ...}``.
    """
    import numpy as np

    from server_stub.handler import Context, HandlerError

    def plain(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (np.generic,)):
            return value.item()
        return value

    def listed(value):
        try:
            return plain(list(value))
        except TypeError:
            return None

    def raised(exc):
        info = describe_exception(exc)
        info["handler_error"] = isinstance(exc, HandlerError)
        return {"raised": info}

    context = Context(model_dir)
    handler = handler_class()
    try:
        handler.initialize(context)
    except Exception as exc:  # noqa: BLE001
        return [{"init": raised(exc)}]
    observations = [{"init": {"initialized": getattr(handler, "initialized", False) is True}}]
    for method, argument in calls:
        try:
            if method == "inference":
                argument = np.asarray(argument, dtype=float)
            if method == "__dict__":
                result = {
                    "model_predicts": callable(getattr(getattr(handler, "model", None), "predict_proba", None)),
                    "features": listed(getattr(handler, "features", None)),
                    "classes": listed(getattr(handler, "classes", None)),
                    "context_kept": getattr(handler, "context", None) is context,
                }
            elif method == "handle":
                result = handler.handle(argument, context)
            else:
                result = getattr(handler, method)(argument)
            observations.append({"value": plain(result)})
        except Exception as exc:  # noqa: BLE001
            observations.append(raised(exc))
    return observations


def _run(handler_class, calls, model_dir=None):
    model_dir = _model_dir(model_dir)
    observations = run_isolated(_observe, handler_class, str(model_dir), calls, what="your ModelHandler")
    init = observations[0]["init"]
    if "raised" in init:
        raise _unexpected("ModelHandler().initialize(context)", init)
    return init, observations[1:]


def _model_dir(model_dir):
    from server_stub.model import ensure_model

    return ensure_model(model_dir or DEFAULT_MODEL_DIR).resolve()


# Model folders this process wrote (relabeled_model), with their class names. The judge's
# reference never reads a model folder: student code may have rewritten any of them.
_WRITTEN: dict[str, list[str]] = {}


@lru_cache(maxsize=1)
def _course_model():
    from server_stub.model import train

    return train()


def _classes(model_dir) -> list[str]:
    """The class names ``meta.json`` in ``model_dir`` must give: those this process wrote there, else the course model's."""
    return list(_WRITTEN.get(str(_model_dir(model_dir)), _course_model()[1]))


@lru_cache(maxsize=8)
def _reference(classes: tuple):
    from server_stub.iris_handler import IrisHandler
    from server_stub.model import FEATURES

    handler = IrisHandler()
    handler.meta = {"features": list(FEATURES), "classes": list(classes)}
    handler.features, handler.classes = list(FEATURES), list(classes)
    handler.model = _course_model()[0]
    handler.context, handler.initialized = None, True
    return handler


def reference(model_dir=None):
    """The finished handler for ``model_dir``: what a correct answer gives, built in memory (never unpickled)."""
    return _reference(tuple(_classes(model_dir)))


def _unexpected(step: str, observation: dict) -> CheckFailed:
    r = observation["raised"]
    if r["type"] == "NotImplementedError":
        return NotAnswered(f"{step} raised NotImplementedError: write that method in ModelHandler, then run its cell again.")
    return CheckFailed(f"{step} raised {r['type']}: {r['message']}")


def _close(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)
    return False


def check_initialize(handler_class, model_dir=None) -> None:
    """``initialize`` loads the model and the names in ``meta.json`` from the context's directory."""
    init, (obs,) = _run(handler_class, [("__dict__", None)], model_dir)
    if not init["initialized"]:
        raise CheckFailed("after initialize(context), handler.initialized should be True; it is not.")
    state = obs.get("value") or {}
    if not state.get("model_predicts"):
        raise CheckFailed("after initialize(context), handler.model should be the loaded model (with predict_proba); it is not.")
    from server_stub.model import FEATURES

    meta = {"features": list(FEATURES), "classes": _classes(model_dir)}
    for key in ("features", "classes"):
        if state.get(key) != meta[key]:
            raise CheckFailed(
                f"after initialize(context), handler.{key} should be {meta[key]!r}, read from meta.json "
                f"in the context's model_dir; it is {state.get(key)!r}."
            )
    if not state.get("context_kept"):
        raise CheckFailed("after initialize(context), handler.context should be the context it was given.")


def check_preprocess(handler_class, batch: list, model_dir=None) -> None:
    """``preprocess(batch)`` returns one row of features per request, in model order."""
    expected = reference(model_dir).preprocess(batch).tolist()
    _, (obs,) = _run(handler_class, [("preprocess", batch)], model_dir)
    if "raised" in obs:
        raise _unexpected(f"preprocess({batch!r})", obs)
    if not _close(obs["value"], expected):
        raise CheckFailed(f"preprocess({batch!r}) should return rows {expected}; it returned {obs['value']!r}.")


def check_rejects(handler_class, cases: list, model_dir=None) -> None:
    """Each bad batch makes ``preprocess`` raise ``HandlerError`` with status 400 naming the problem.

    ``cases`` is a list of ``(why, batch, mentions)``; ``mentions`` is a word the error
    message must contain (a field name, say), or ``None``.
    """
    _, observations = _run(handler_class, [("preprocess", batch) for _, batch, _ in cases], model_dir)
    for (why, batch, mentions), obs in zip(cases, observations):
        if "value" in obs:
            raise CheckFailed(f"preprocess should reject {why} ({batch!r}) with HandlerError, but it returned {obs['value']!r}.")
        r = obs["raised"]
        if not r["handler_error"]:
            raise CheckFailed(
                f"for {why} ({batch!r}), preprocess raised {r['type']}: {r['message']}; "
                "expected HandlerError (from server_stub.handler) so the server can answer 400."
            )
        if r["status"] != 400:
            raise CheckFailed(f"for {why}, HandlerError.status should be 400; it was {r['status']!r}.")
        if mentions and mentions.lower() not in r["message"].lower():
            raise CheckFailed(f"for {why}, the error message should name {mentions!r}; it was {r['message']!r}.")


def check_inference(handler_class, instances: list, model_dir=None) -> None:
    """``inference(x)`` returns the model's class probabilities, one row per input row."""
    x = [[float(v) for v in row] for row in instances]
    import numpy as np

    expected = reference(model_dir).inference(np.asarray(x)).tolist()
    _, (obs,) = _run(handler_class, [("inference", x)], model_dir)
    if "raised" in obs:
        raise _unexpected("inference(x)", obs)
    if not _close(obs["value"], expected):
        raise CheckFailed(
            f"inference(x) for {len(x)} rows should return the probabilities {expected} "
            f"(model.predict_proba); it returned {obs['value']!r}."
        )


def check_results(expected: list, got, call: str) -> None:
    """``got`` is one ``{"label", "confidence"}`` per request, matching ``expected`` in order."""
    if not isinstance(got, list):
        raise CheckFailed(f"{call} should return a list; it returned {type(got).__name__} {got!r}.")
    if len(got) != len(expected):
        raise CheckFailed(f"{call} should return {len(expected)} results, one per request; it returned {len(got)}.")
    for i, (want, item) in enumerate(zip(expected, got)):
        if not isinstance(item, dict) or set(item) < {"label", "confidence"}:
            raise CheckFailed(f"{call}: result {i} should be a dict with 'label' and 'confidence'; it was {item!r}.")
        if item["label"] != want["label"]:
            raise CheckFailed(
                f"{call}: result {i} should have label {want['label']!r}; it had {item['label']!r}. "
                "Are the results in the same order as the requests?"
            )
        confidence = item["confidence"]
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
            raise CheckFailed(f"{call}: result {i} confidence should be a probability in [0, 1]; it was {confidence!r}.")
        if not _close(confidence, want["confidence"]):
            raise CheckFailed(
                f"{call}: result {i} confidence should be {want['confidence']:.6f} (the top class's probability); "
                f"it was {confidence!r}."
            )


def check_postprocess(handler_class, instances: list, model_dir=None) -> None:
    """``postprocess(y)`` turns probabilities into one ``{"label", "confidence"}`` per row, in order."""
    import numpy as np

    ref = reference(model_dir)
    y = ref.inference(np.asarray(instances, dtype=float))
    _, (obs,) = _run(handler_class, [("postprocess", y.tolist())], model_dir)
    if "raised" in obs:
        raise _unexpected("postprocess(y)", obs)
    check_results(ref.postprocess(y), obs["value"], "postprocess(y)")


def check_handle(handler_class, batch: list, model_dir=None) -> None:
    """``handle(batch, context)`` returns exactly one result per request, in order."""
    expected = reference(model_dir).handle(batch, None)
    _, (obs,) = _run(handler_class, [("handle", batch)], model_dir)
    if "raised" in obs:
        raise _unexpected(f"handle() on {len(batch)} requests", obs)
    check_results(expected, obs["value"], f"handle() on {len(batch)} requests")


def relabeled_model(model_dir: str | Path, classes: list[str]) -> Path:
    """Write the course model to ``model_dir`` with other class names in ``meta.json``.

    A handler that really reads its model directory reports these names.
    """
    import json

    from server_stub.model import META_FILE, save_model

    model_dir = save_model(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    meta["classes"] = list(classes)
    (model_dir / META_FILE).write_text(json.dumps(meta))
    _WRITTEN[str(Path(model_dir).resolve())] = list(classes)
    return Path(model_dir).resolve()
