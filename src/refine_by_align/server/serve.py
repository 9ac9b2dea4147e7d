"""``refine-by-align serve``: load the model once, then run the web app with uvicorn.

Why FastAPI + uvicorn and a hand-written page rather than Gradio: this runs on machines with no
network (nothing may be fetched from a CDN at runtime, and Gradio's frontend and its share/analytics
features assume network access), Gradio is a heavy dependency with its own frontend build and
release cadence, and the HTTP API here is small and exact (multipart in, PNG out, JSON errors) so it
is easy to script with curl and to test. The page is one self-contained HTML file (``page.py``).

The server binds 127.0.0.1 unless told otherwise: there is no authentication.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from ..io import InputError
from .settings import ServerSettings, add_serve_arguments, allowed_hosts_for, settings_from_args

__all__ = ["bind_socket", "head_timeout_protocol", "load_pipeline", "main", "make_server", "run_from_args", "serve"]


def load_pipeline(model: str = "default", quiet: bool = True):
    """Load a pipeline for serving; a bad model (missing folder, pickled weights ...) is one InputError."""
    from ..loading import load_pipeline as _load

    pipe = _load(model)
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a busy port is a clear one-line error before any model loads."""
    if not 0 <= int(port) <= 65535:
        raise InputError(f"port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def head_timeout_protocol(header_timeout_s: float):
    """uvicorn's h11 HTTP protocol with a time limit on each request's head: a connection that has
    not sent a complete request line and headers within ``header_timeout_s`` of connecting (or of
    its previous response) is closed. uvicorn has no such option (its keep-alive timeout stops at
    the first byte), so a client trickling header bytes would hold a connection forever. Bodies are
    timed by the app (``ServerSettings.body_timeout_s``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11Protocol(H11Protocol):
        _head_timer = None
        _head_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._head_cycle:  # a request's head has arrived
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            finished = self.cycle
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is finished:  # (no pipelined request started)
                self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.logger.info("closing a connection that sent no complete request head within %g s", header_timeout_s)
                self.transport.close()

    return HeadTimeoutH11Protocol


def make_server(app, settings: ServerSettings, log_level: str = "info"):
    """The uvicorn server for ``app``: request heads timed (:func:`head_timeout_protocol`), head size
    bounded, idle keep-alive connections closed after 5 s. Run it with ``.run(sockets=[sock])``."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=5, timeout_keep_alive=5,
        http=head_timeout_protocol(settings.header_timeout_s), h11_max_incomplete_event_size=64 * 1024,
    )
    return uvicorn.Server(config)


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    model: str = "default",
    *,
    pipe=None,
    settings: ServerSettings | None = None,
    log_level: str = "info",
) -> None:
    """Run the web app until Ctrl+C. ``pipe`` (already loaded) wins over ``model``."""
    from .app import create_app

    sock = bind_socket(host, port)
    try:
        if pipe is None:
            pipe = load_pipeline(model)
            if pipe.random_weights:
                print(
                    f"WARNING: model '{model}' has no trained weights: running with RANDOM weights, outputs are "
                    "stand-ins, not refinements.",
                    file=sys.stderr,
                )
        settings = settings or ServerSettings()
        if settings.allowed_hosts is None:
            settings.allowed_hosts = allowed_hosts_for(host)
        if settings.model_name == "default" and model != "default":
            settings.model_name = str(model)
        app = create_app(pipe, settings)
        if not _is_loopback(host):
            print(
                f"WARNING: listening on {host}: anyone who can reach this machine can use the model "
                "(no authentication). Use --host 127.0.0.1 to keep it local.",
                file=sys.stderr,
            )
        bound_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"refine-by-align: serving model '{settings.model_name}' on http://{shown}:{bound_port}/  (Ctrl+C to stop)", flush=True)
        make_server(app, settings, log_level).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m refine_by_align.server``: the same options as ``refine-by-align serve``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m refine_by_align.server", description="refine-by-align web app")
    add_serve_arguments(p)
    args = p.parse_args(argv)
    try:
        run_from_args(args)
    except InputError as e:
        print(f"refine-by-align serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_from_args(args, pipe=None) -> None:
    """Start the server from parsed ``add_serve_arguments`` options (raises InputError on bad values)."""
    settings = settings_from_args(args)
    serve(args.host, args.port, args.model, pipe=pipe, settings=settings, log_level=args.log_level)
