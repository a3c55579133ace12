"""Serve a ``create_app`` handed over in a file, under any WSGI server (notebook 08).

Flask's development server and gunicorn both find an app by name, and both accept a call of
a factory with literal arguments. So the very same app can be put behind either one::

    flask --app 'server_stub.load_wsgi:app_from("/abs/path/app.pkl")' run --host 127.0.0.1 --port 8001
    gunicorn --workers 2 --bind 127.0.0.1:8002 'server_stub.load_wsgi:app_from("/abs/path/app.pkl")'

``app.pkl`` is a cloudpickle of ``{"create_app", "handler_class", "model_dir"[, "config"]}``,
written by :func:`autograder.checks.load.write_app_payload` from a notebook. gunicorn calls
``app_from`` in every worker after it forks, so each worker unpickles the app and loads its
own copy of the model, as ``serving.wsgi`` does in notebook 06.
"""
from __future__ import annotations


def app_from(payload_path: str):
    """The WSGI app described by the cloudpickle file ``payload_path``."""
    import cloudpickle

    from server_stub.runner import build_app

    with open(payload_path, "rb") as f:
        payload = cloudpickle.load(f)
    return build_app(payload["create_app"], payload["handler_class"], payload["model_dir"], payload.get("config"))
