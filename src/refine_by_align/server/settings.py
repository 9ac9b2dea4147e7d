"""Server limits and the ``serve`` command-line options (no FastAPI import: the CLI parser uses this)."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import InputError

__all__ = ["ServerSettings", "add_serve_arguments", "settings_from_args"]


@dataclass
class ServerSettings:
    """Limits of the server. Every refusal names the limit and its value."""

    max_upload_bytes: int = 32 * 1024 * 1024  # whole request body (all files together)
    max_image_side: int = 4096  # longest side of any uploaded image, in pixels
    max_queue: int = 4  # jobs waiting behind the running one; more are refused with 503
    job_timeout_s: float = 300.0  # a running job is stopped after this many seconds (504)
    max_results: int = 16  # finished jobs whose results stay available for download
    check_origin: bool = True  # refuse POSTs whose Origin header names another site
    model_name: str = "default"  # shown in /api/health and the page

    def __post_init__(self):
        checks = [
            (self.max_upload_bytes >= 1024, f"max upload must be at least 1 KiB, got {self.max_upload_bytes} bytes"),
            (self.max_image_side >= 8, f"max image side must be at least 8 px, got {self.max_image_side}"),
            (self.max_queue >= 0, f"queue length must be >= 0, got {self.max_queue}"),
            (self.job_timeout_s > 0, f"job timeout must be > 0 s, got {self.job_timeout_s}"),
            (self.max_results >= 1, f"max results must be >= 1, got {self.max_results}"),
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
    p.add_argument("--timeout", type=float, default=d.job_timeout_s, help="seconds a job may run (default: %(default)g)")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
        help="how much the server logs to the terminal: info shows every request, warning only problems "
        "(default: %(default)s)",
    )


def settings_from_args(args) -> ServerSettings:
    """ServerSettings from parsed :func:`add_serve_arguments` options; InputError on bad values."""
    try:
        return ServerSettings(
            max_upload_bytes=int(args.max_upload_mb * 2**20), max_image_side=args.max_side, max_queue=args.queue,
            job_timeout_s=args.timeout, model_name=str(args.model),
        )
    except (ValueError, OverflowError) as e:
        raise InputError(str(e)) from None
