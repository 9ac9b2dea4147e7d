"""Local web app and HTTP API for refine-by-align (FastAPI + uvicorn; see ``serve.py`` for why).

``create_app(pipe, settings)`` builds the app, ``serve(host, port, model)`` runs it; the load test
that measures a running server is ``refine_by_align.perf.loadtest``. FastAPI is imported only when the app is built (``create_app``,
``serve``), so the CLI can add the ``serve`` options without it.
"""

from .serve import bind_socket, load_pipeline, run_from_args, serve
from .settings import ServerSettings, add_serve_arguments, settings_from_args

__all__ = [
    "ServerSettings",
    "add_serve_arguments",
    "bind_socket",
    "create_app",
    "decode_upload",
    "load_pipeline",
    "run_from_args",
    "serve",
    "settings_from_args",
]


def __getattr__(name):
    if name in ("create_app", "decode_upload"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
