"""Server limits and the ``serve`` command-line options (no FastAPI import: the CLI parser uses this)."""

from __future__ import annotations

import ipaddress
import math
import socket
from dataclasses import dataclass

from ..io import InputError

__all__ = ["ServerSettings", "add_serve_arguments", "allowed_hosts_for", "host_allowed", "settings_from_args"]


@dataclass
class ServerSettings:
    """Limits of the server. Every refusal names the limit and its value."""

    max_upload_bytes: int = 32 * 1024 * 1024  # whole request body (all files together)
    max_image_side: int = 4096  # longest side of any uploaded image, in pixels
    max_queue: int = 4  # jobs waiting behind the running one; more are refused with 503
    job_timeout_s: float = 300.0  # a job is answered 504 this many seconds after it starts, preprocessing included
    max_results: int = 16  # finished jobs whose results stay available for download
    check_origin: bool = True  # refuse POSTs whose Origin header names another site
    # Host header names the server answers to (others: 400, against DNS rebinding); IP literals are
    # always accepted, "*" accepts any; None (an app made directly, e.g. in tests) checks nothing.
    # ``serve`` sets it from the bound address (allowed_hosts_for)
    allowed_hosts: tuple[str, ...] | None = None
    header_timeout_s: float = 10.0  # a request line and headers must arrive within this (else the connection closes)
    body_timeout_s: float = 120.0  # a request body must arrive within this many seconds of its first byte (408)
    model_name: str = "default"  # shown in /api/health and the page

    def __post_init__(self):
        checks = [
            (self.max_upload_bytes >= 1024, f"max upload must be at least 1 KiB, got {self.max_upload_bytes} bytes"),
            (self.max_image_side >= 8, f"max image side must be at least 8 px, got {self.max_image_side}"),
            (self.max_queue >= 0, f"queue length must be >= 0, got {self.max_queue}"),
            (self.job_timeout_s > 0, f"job timeout must be > 0 s, got {self.job_timeout_s}"),
            (self.max_results >= 1, f"max results must be >= 1, got {self.max_results}"),
            (math.isfinite(self.job_timeout_s), f"job timeout must be finite, got {self.job_timeout_s}"),
            (0 < self.header_timeout_s < math.inf, f"header timeout must be > 0 s and finite, got {self.header_timeout_s}"),
            (0 < self.body_timeout_s < math.inf, f"body timeout must be > 0 s and finite, got {self.body_timeout_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def add_serve_arguments(p) -> None:
    """The ``serve`` options (shared by ``refine-by-align serve`` and ``python -m refine_by_align.server``)."""
    d = ServerSettings()
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--model", default="default", help="model folder or preset: default | tiny | paper (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20, help="largest request body in MiB (default: %(default)g)")
    p.add_argument("--max-side", type=int, default=d.max_image_side, help="largest image side in pixels (default: %(default)s)")
    p.add_argument("--queue", type=int, default=d.max_queue, help="jobs allowed to wait behind the running one (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=d.job_timeout_s, help="seconds a job may take once started, preprocessing included; then 504 (default: %(default)g)")
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; '*' = any). By default only the bound "
        "address, localhost names and IP addresses are answered (a guard against DNS rebinding)",
    )
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s, help="seconds a client may take to send a request's headers (default: %(default)g)")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, help="seconds a client may take to send a request's body (default: %(default)g)")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
        help="how much the server logs to the terminal: info shows every request, warning only problems "
        "(default: %(default)s)",
    )


def settings_from_args(args) -> ServerSettings:
    """ServerSettings from parsed :func:`add_serve_arguments` options; InputError on bad values."""
    mb = float(args.max_upload_mb)
    if not math.isfinite(mb) or mb <= 0:
        raise InputError(f"--max-upload-mb must be a positive number of MiB, got {args.max_upload_mb}")
    try:
        return ServerSettings(
            max_upload_bytes=int(mb * 2**20), max_image_side=args.max_side, max_queue=args.queue,
            job_timeout_s=args.timeout, model_name=str(args.model),
            allowed_hosts=allowed_hosts_for(args.host, getattr(args, "allow_host", None) or ()),
            header_timeout_s=getattr(args, "header_timeout", ServerSettings.header_timeout_s),
            body_timeout_s=getattr(args, "body_timeout", ServerSettings.body_timeout_s),
        )
    except (ValueError, OverflowError) as e:
        raise InputError(str(e)) from None


LOCAL_NAMES = ("localhost", "localhost.localdomain")


def allowed_hosts_for(host: str, extra=()) -> tuple[str, ...]:
    """The Host header names a server bound to ``host`` answers to: the bound name, the localhost
    names, for a wildcard address (0.0.0.0, ::) this machine's names too, and ``extra``.
    (IP addresses are always accepted: see :func:`host_allowed`.)"""
    names = {host.lower().strip("[]"), *LOCAL_NAMES}
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names.update(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)
    names.update(str(x).lower() for x in extra)
    return tuple(sorted(names))


def host_allowed(host_header: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Whether a request's Host header (``name``, ``name:port``, ``[v6]:port``) is one to answer.
    IP literals always are (DNS rebinding needs a name); ``None`` allows everything."""
    if allowed is None or "*" in allowed:
        return True
    if not host_header:
        return False
    value = host_header.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        name = value[1 : value.find("]")] if "]" in value else value[1:]
    else:
        name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in allowed
