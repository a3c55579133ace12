"""Run a serving app as its own process, on loopback, without request logs.

Two ways to say what to serve:

``python -m server_stub.runner --source app.py``
    ``app.py`` defines ``create_app(handler, config=None)`` and, optionally, a handler
    class ``ModelHandler``; without one the finished :class:`IrisHandler` is used. This is
    how the grader serves code taken out of a notebook, in a process that never ran the
    notebook's kernel.

``python -m server_stub.runner --pickled payload.pkl``
    a cloudpickle of ``{"create_app", "handler_class", ...}`` written by
    ``autograder.harness`` from inside a notebook.

The process binds the port (0 picks a free one), writes the port number to
``--ready-file`` once it accepts connections, and shuts down cleanly on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from server_stub.handler import Context
from server_stub.model import ensure_model


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request log line."""

    def log_request(self, *args, **kwargs):
        pass

    def log(self, type, message, *args):  # noqa: A002 - werkzeug's signature
        if type == "error":
            sys.stderr.write((message % args) + "\n")


def build_app(create_app, handler_class, model_dir, config=None, model_name="iris", model_version="1"):
    """Initialize a handler for the model in ``model_dir`` and pass it to ``create_app``."""
    handler = handler_class()
    handler.initialize(Context(ensure_model(model_dir), model_name, model_version))
    return create_app(handler, config) if config is not None else create_app(handler)


def serve(app, host: str = "127.0.0.1", port: int = 8000, ready_file: str | None = None) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; threaded, so one slow request blocks no other."""
    server = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_file:
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(str(server.server_port))
        os.replace(tmp, ready_file)
    print(f"serving on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()
    server.server_close()


def load_source(path: str | Path):
    """Import a Python file as a fresh module and return ``(create_app, handler_class)``."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"submitted_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    create_app = getattr(module, "create_app", None)
    if create_app is None:
        raise SystemExit(f"{path} defines no create_app(handler, config=None)")
    handler_class = getattr(module, "ModelHandler", None)
    if handler_class is None:
        from server_stub.iris_handler import IrisHandler as handler_class
    return create_app, handler_class


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server_stub.runner", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="a .py file defining create_app (and optionally ModelHandler)")
    what.add_argument("--pickled", help="a cloudpickle payload written by autograder.harness")
    parser.add_argument("--model-dir", default="build/model", help="where the model is (trained there if missing)")
    parser.add_argument("--config", default=None, help="JSON object passed to create_app as config")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--ready-file", default=None, help="file to write the bound port to once serving")
    args = parser.parse_args(argv)

    config = json.loads(args.config) if args.config else None
    if args.pickled:
        import cloudpickle

        with open(args.pickled, "rb") as f:
            payload = cloudpickle.load(f)
        create_app, handler_class = payload["create_app"], payload["handler_class"]
        model_dir = payload.get("model_dir", args.model_dir)
        config = payload.get("config", config)
    else:
        create_app, handler_class = load_source(args.source)
        model_dir = args.model_dir
    app = build_app(create_app, handler_class, model_dir, config)
    serve(app, args.host, args.port, args.ready_file)


if __name__ == "__main__":
    main()
