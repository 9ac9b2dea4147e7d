"""One model, one job at a time: a worker thread, a bounded queue, per-job progress and time limits.

The pipeline is not thread-safe and a CPU has no spare cores for two denoising loops, so every job
(refine or align) runs on a single worker thread in submission order. Waiting jobs are bounded
(``max_queue``); a full queue is refused at once (HTTP 503) instead of piling up requests.

A request first reserves its place (:meth:`JobRunner.reserve`), before its images are decoded,
so a full server refuses at once instead of decoding uploads it cannot run.

The time limit covers the whole job, from the moment the worker takes it up: preprocessing,
alignment, denoising and encoding the results. At the deadline a watchdog finishes the job as a 504
(the client gets its answer then, wherever the worker is) and asks the work to stop; a job
cancelled while it runs is answered at once the same way (499), and one cancelled while it waits
leaves the queue at once. The work stops at its next check: the pipeline's ``stage_callback``
(called before each of its stages: each reference's alignment, the warp, the redraw, the
denoising, the paste) and its ``progress_bar`` (each denoising step) are routed through the job
and raise :class:`JobAborted` once the job is past its deadline or was cancelled. A stage keeps the
worker until it ends (a second or two at 512 px; the fill of a 4096 px picture's mask took 3.8 s);
the worker's late result is dropped.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobAborted", "JobRunner", "QueueFull", "Slot"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for another job: the running one plus ``max_queue`` waiting ones."""


class JobAborted(Exception):
    """Raised inside the denoising loop when a job runs past its deadline or is cancelled."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Job:
    """One unit of work. ``work(pipe) -> dict[name, bytes]`` runs on the worker thread."""

    kind: str
    work: Callable[[Any], dict[str, Any]] | None
    timeout_s: float
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    state: str = "queued"  # queued | running | done | error
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    status_code: int = 200
    outputs: dict[str, Any] = field(default_factory=dict)
    cancelled: str | None = None
    cancel_status: int = 499
    done_event: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ lifecycle helpers
    def cancel(self, reason: str = "cancelled", status_code: int = 499) -> None:
        """Ask the job to stop: a queued job never starts, a running one stops at its next step."""
        if self.cancelled is None:
            self.cancel_status = status_code
            self.cancelled = reason

    def expire(self) -> None:
        """The deadline passed: answer 504 now and ask the work to stop (the watchdog calls this)."""
        message = self._timeout_message()
        self.cancel(message, 504)
        self._finish("error", 504, message)

    def _timeout_message(self) -> str:
        return f"job took longer than the limit of {self.timeout_s:g} s and was stopped"

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) once the job is finished; at once if it already is."""
        with self._lock:
            if not self.done_event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _finish(self, state: str, status_code: int = 200, error: str | None = None, outputs=None) -> None:
        """Record the job's end; the first call wins (a result arriving after the watchdog's 504 is dropped)."""
        with self._lock:
            if self.done_event.is_set():
                return
            self.state = state
            self.status_code = status_code
            self.error = error
            self.outputs = outputs or {}
            self.finished = time.monotonic()
            self.work = None  # drop the decoded inputs
            self.done_event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:  # a waiter that went away must not kill the worker
                logger.exception("job %s: done-callback failed", self.id)

    def check(self) -> None:
        """Raise :class:`JobAborted` if the job must stop now."""
        if self.cancelled is not None:
            raise JobAborted(self.cancelled if self.cancel_status == 504 else f"job {self.cancelled}", self.cancel_status)
        if self.started is not None and time.monotonic() - self.started > self.timeout_s:
            raise JobAborted(self._timeout_message(), 504)

    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - (self.started if self.started is not None else self.created)

    def status(self, queue_position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "elapsed": round(self.elapsed(), 3),
            "waited": round((self.started or time.monotonic()) - self.created, 3),
            "queue_position": queue_position,
            "error": self.error,
            "status_code": self.status_code,
            "outputs": sorted(k for k in self.outputs if k.endswith(".png")),
            "info": self.outputs.get("info", {}),
        }


class _JobBar:
    """Stands in for the pipeline's tqdm bar while a job runs: counts steps, enforces the limit."""

    def __init__(self, job: Job, iterable=None, total: int | None = None):
        self.job = job
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        job.total = int(total or 0)
        job.step = 0
        job.check()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.job.step += n
        self.job.check()

    def close(self) -> None:
        pass


class Slot:
    """A place in the queue held for a request while its images are decoded (:meth:`JobRunner.reserve`).
    ``submit(job, slot)`` uses it; ``release()`` gives it back (idempotent; also after a submit)."""

    def __init__(self, runner: "JobRunner"):
        self._runner = runner
        self.held = True

    def release(self) -> None:
        with self._runner._lock:
            if self.held:
                self.held = False
                self._runner._reserved -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class JobRunner:
    """Runs jobs one at a time on a daemon worker thread; keeps the last ``max_results`` finished."""

    def __init__(self, pipe, max_queue: int = 4, max_results: int = 16):
        self.pipe = None
        self.max_queue = int(max_queue)
        self.max_results = int(max_results)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[Job] = []
        self._running: Job | None = None
        self._reserved = 0  # places held by requests still decoding their images
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._local = threading.local()
        self._closed = False
        self._patched = None
        self.served = 0
        self._thread = threading.Thread(target=self._loop, name="refine-by-align-worker", daemon=True)
        self._thread.start()
        if pipe is not None:
            self.set_pipe(pipe)

    # ------------------------------------------------------------------ the model
    def set_pipe(self, pipe) -> None:
        """Attach the pipeline and route its progress bar and its stage callback through the
        running job (if any): each is a check where a cancelled or late job stops."""
        original = pipe.progress_bar
        original_stage = getattr(pipe, "stage_callback", None)
        local = self._local

        def progress_bar(iterable=None, total=None):
            job = getattr(local, "job", None)
            if job is None:  # called outside a job (another user of the same pipeline)
                return original(iterable=iterable, total=total)
            return _JobBar(job, iterable, total)

        def stage_callback(stage: str) -> None:
            job = getattr(local, "job", None)
            if job is not None:
                job.check()
            elif original_stage is not None:
                original_stage(stage)

        self._restore_pipe()
        self._patched = (pipe, progress_bar, "progress_bar" in vars(pipe), vars(pipe).get("progress_bar"), stage_callback, original_stage)
        pipe.progress_bar = progress_bar
        pipe.stage_callback = stage_callback
        self.pipe = pipe

    def _restore_pipe(self) -> None:
        """Undo :meth:`set_pipe`'s hook (only if nobody replaced it since)."""
        patched = getattr(self, "_patched", None)
        if patched is None:
            return
        pipe, hook, had_own, previous, stage_hook, previous_stage = patched
        self._patched = None
        if vars(pipe).get("progress_bar") is hook:
            if had_own:
                pipe.progress_bar = previous
            else:
                del pipe.progress_bar
        if getattr(pipe, "stage_callback", None) is stage_hook:
            pipe.stage_callback = previous_stage

    # ------------------------------------------------------------------ queue
    def _check_room(self) -> None:
        """Raise QueueFull unless one more job fits (the caller holds the lock)."""
        if self._closed:
            raise QueueFull("server is shutting down")
        busy = 1 if self._running is not None else 0
        if busy + len(self._waiting) + self._reserved >= 1 + self.max_queue:
            pending = f", {self._reserved} being decoded" if self._reserved else ""
            raise QueueFull(
                f"server busy: {busy} job running and {len(self._waiting)} waiting{pending} (queue limit {self.max_queue}); "
                "try again shortly"
            )

    def check_room(self) -> None:
        """Raise QueueFull now if a job could not be queued (cheap: before a request's body is read)."""
        with self._lock:
            self._check_room()

    def reserve(self) -> Slot:
        """Hold a place for a job whose inputs are about to be decoded; QueueFull if there is none."""
        with self._lock:
            self._check_room()
            self._reserved += 1
        return Slot(self)

    def submit(self, job: Job, slot: Slot | None = None) -> Job:
        """Queue ``job`` (in the place ``slot`` holds, if given); QueueFull if it does not fit."""
        with self._lock:
            if slot is not None and slot.held:
                slot.held = False
                self._reserved -= 1
                if self._closed:
                    raise QueueFull("server is shutting down")
            else:
                self._check_room()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._prune()
            self._wake.notify()
        return job

    def cancel(self, job: Job, reason: str = "cancelled by the user") -> None:
        """Cancel ``job``: a waiting one leaves the queue at once (its place is free for the next
        request), a running one is answered at once (499) and its work stops at its next check
        (the worker stays busy until then); a finished one is left as it is."""
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
        if job.done_event.is_set():
            return
        job.cancel(reason)
        job._finish("error", 499, f"job {reason}")

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job: Job) -> None:
        """Drop a finished job and its outputs (the synchronous API has already answered with them)."""
        with self._lock:
            if job.done_event.is_set():
                self._jobs.pop(job.id, None)

    def queue_position(self, job: Job) -> int | None:
        with self._lock:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": 1 if self._running is not None else 0,
                "waiting": len(self._waiting),
                "max_queue": self.max_queue,
                "served": self.served,
            }

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.done_event.is_set()]
        for j in finished[: max(0, len(finished) - self.max_results)]:
            del self._jobs[j.id]

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.cancel("cancelled: server shutting down")
            self._wake.notify_all()
            running = self._running
        if running is not None:
            running.cancel("cancelled: server shutting down")
        self._thread.join(timeout)
        self._restore_pipe()

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if not self._waiting and self._closed:
                    return
                job = self._waiting.pop(0)
                self._running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None
                    self.served += 1
                    self._prune()

    def _run(self, job: Job) -> None:
        from ..io import InputError
        from ..pipelines.pipeline import NonFiniteResultError

        if job.cancelled is not None:
            job._finish("error", 499, f"job {job.cancelled}")
            return
        if self.pipe is None:
            job._finish("error", 503, "model is not loaded yet")
            return
        job.started = time.monotonic()
        job.state = "running"
        self._local.job = job
        work = job.work
        watchdog = threading.Timer(job.timeout_s, job.expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            outputs = work(self.pipe)
        except JobAborted as e:
            job._finish("error", e.status_code, str(e))
        except NonFiniteResultError as e:
            job._finish("error", 422, str(e))
        except InputError as e:
            job._finish("error", 400, str(e))
        except MemoryError:
            job._finish("error", 507, "out of memory while processing this job (try a smaller image)")
        except Exception as e:  # one broken job must never take the worker down
            logger.exception("job %s failed", job.id)
            job._finish("error", 500, f"internal error: {type(e).__name__}: {e}")
        else:
            job._finish("done", 200, None, outputs)
        finally:
            watchdog.cancel()
            self._local.job = None
