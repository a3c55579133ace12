"""The WSGI entry point: the module-level ``app`` that gunicorn imports (notebook 06).

``gunicorn -c serving/gunicorn.conf.py serving.wsgi:app`` means "import the module
``serving.wsgi`` and serve its attribute ``app``". gunicorn imports this module once in each
worker process, so each worker builds its own app and loads its own model. Nothing else
belongs here: no ``app.run()``, which would start Flask's development server instead.
"""
from .app import create_app

app = create_app()
