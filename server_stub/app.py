"""The serving app as a module of its own, so that a server process can import it (notebook 06).

Copy this file to ``serving/app.py`` next to your notebook and write the routes. Then run it
as its own process with Flask's development server::

    SERVELAB_MODEL_DIR=model flask --app serving/app.py run --host 127.0.0.1 --port 8000

or with gunicorn through ``wsgi.py`` (see ``gunicorn.conf.py``). ``flask run`` finds
``create_app`` here and calls it with no arguments, so the handler wiring is given: with no
``handler``, the app serves the finished :class:`IrisHandler`, loaded from the directory named
by the ``SERVELAB_MODEL_DIR`` environment variable (default ``model``, relative to the folder
the server is started in). Every server process, and every gunicorn worker, builds its own app
and loads its own copy of the model.
"""
from __future__ import annotations

import os

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from server_stub.handler import Context, HandlerError
from server_stub.iris_handler import IrisHandler
from server_stub.model import ensure_model

MODEL_DIR_ENV = "SERVELAB_MODEL_DIR"
DEFAULTS = {"MAX_CONTENT_LENGTH": 1024 * 1024, "MAX_BATCH": 64}


def load_handler(model_dir: str | None = None) -> IrisHandler:
    """The finished handler, initialized for the model in ``model_dir``.

    ``model_dir`` defaults to ``$SERVELAB_MODEL_DIR``, else ``model``; the model is trained and
    saved there first if it is missing.
    """
    model_dir = model_dir or os.environ.get(MODEL_DIR_ENV) or "model"
    handler = IrisHandler()
    handler.initialize(Context(ensure_model(model_dir)))
    return handler


def create_app(handler=None, config=None) -> Flask:
    """Build the serving app: the API of notebook 05.

    ``handler`` is an initialized handler (``load_handler()`` when omitted); ``config`` is
    ``None`` or a dict overriding :data:`DEFAULTS` (``MAX_CONTENT_LENGTH``, ``MAX_BATCH``).

    Routes:

    - ``GET /health`` → ``200 {"status": "ok"}``
    - ``GET /v1/models/<name>`` → ``200 {"name", "version", "ready"}``; another name → ``404``
    - ``POST /v1/models/<name>:predict`` and ``POST /predict``: body ``{"instances": [...]}`` →
      ``200 {"predictions": [...]}``, one per instance, in order

    Every error is JSON ``{"error": "<message>"}`` with its 4xx status (400 bad body or instance,
    404 unknown route or model, 405 wrong method, 413 too large, 415 not JSON); no input a
    client can send gives a 500. The ``create_app`` you wrote in notebook 05 does all of this.
    """
    if handler is None:
        handler = load_handler()
    raise NotImplementedError("write the routes of notebook 05 here")
