"""Batch refinement from a JSONL manifest: resumable, crash-safe, one bad job never stops the rest.

Manifest: one JSON object per line (blank lines and lines starting with ``#`` are skipped)::

    {"image": "a.png", "mask": "a_mask.png", "reference": "ref.jpg", "reference_mask": "ref_mask.png",
     "steps": 20, "guidance": 2.0, "seed": 0, "output": "a_refined.png"}

``image``, ``mask`` and ``reference`` are required; relative paths resolve against the manifest's
folder. Several references: ``"references": ["a.png", "b.png"]`` instead of ``reference`` (giving both
is an error on that line), with optional ``"reference_masks": ["a_mask.png", null]`` of the same
length (null where a reference has none; ``reference_mask`` goes with ``reference`` only); each part
of the mask is taken from the reference that fits it best, as ``refine --reference A --reference B``. ``output`` (a name inside the output folder; sub-folders allowed, ``..`` and absolute names
refused; ``.png`` added when it has no extension) defaults to ``<line number>-<image stem>.png``.

Output folder:

``DIR/<output>``     each refined image, written to a temporary file in the same folder and renamed
                     (``os.replace``), so a crash never leaves a half-written output under its name
``DIR/done.jsonl``   ledger of finished jobs, appended (and fsynced) after each output is in place,
                     each line with the job's seed, steps, guidance, the model's fingerprint and
                     what the refine gave (alignment, warp fraction, notes)
``DIR/runs.jsonl``   what each run was made with, a line per run: the manifest (its SHA-256), the
                     model, the matcher's weights, the processes, the library versions, the CPU, the commit
``DIR/errors.jsonl`` the latest failure of each job that has not succeeded since: line number, output
                     name, error (a rerun replaces a job's old line, or drops it once the job
                     succeeds; rewritten atomically); the batch goes on

Resume: running the same manifest again skips every job whose output exists and whose ledger entry
matches the job's settings (inputs, steps, guidance, seed); changed jobs and failed jobs run again.
A ``kill -9`` loses at most the job in flight. One batch at a time per output folder (a lock file).

Several processes: launched by ``torchrun --nproc_per_node N`` or ``accelerate launch
--num_processes N`` (on a machine without GPUs add ``--multi_gpu``, accelerate's name for its
torchrun launcher), each process reads the ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``: its GPU)
that the launcher sets and runs the manifest lines whose index modulo N is its rank. Each writes
its own outputs, its own ledger ``done.r<rank>.jsonl`` (a resume reads every ledger, so it works
with another N, or with one process) and its own ``errors.r<rank>.jsonl``, merged into
``errors.jsonl`` when it ends (under a lock: the last process to end leaves the complete file).

No job overwrites an input: a job whose output resolves (symlinks, hard links) to an input file of any
job of the manifest, or to another job's output, fails with that reason and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from .io import InputError, check_output_folder, check_output_holds, check_seed, load_inputs, output_format, read_file, save_image, write_atomic
from .locks import hold_lock
from .provenance import file_digest

__all__ = [
    "DONE_FILE", "ERRORS_FILE", "BatchJob", "Shard", "check_not_busy", "failure_lines", "finish_together", "format_summary",
    "model_fingerprint", "read_manifest", "run_batch",
]

DONE_FILE = "done.jsonl"
RUN_FILE = "runs.jsonl"  # what each run was made with, a line per run (_write_run_record)
ERRORS_FILE = "errors.jsonl"
LOCK_FILE = ".batch.lock"
PART_PREFIX, PART_SUFFIX = ".rba-", ".part"
NAME_MAX = 255  # bytes in one file name (Linux, macOS); the partial file's name adds its prefix and a random part
REQUIRED = ("image", "mask", "reference")  # "references" (a list) may stand for "reference"
OPTIONAL = ("reference_mask", "references", "reference_masks", "steps", "guidance", "seed", "output")
FILE_ROLES = ("image", "mask", "reference", "reference_mask")


@dataclass
class BatchJob:
    """One manifest line: either a runnable job or the reason it cannot run."""

    line: int  # 1-based line number in the manifest
    output: str | None = None  # output name relative to the output folder
    image: Path | None = None
    mask: Path | None = None
    reference: Path | None = None
    reference_mask: Path | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    error: str | None = None  # set when the line itself is unusable
    references: list[Path] | None = None  # several references ("references"; then ``reference`` is None)
    reference_masks: list[Path | None] | None = None  # one per reference, None where it has none

    @property
    def key(self) -> str:
        """Fingerprint of what the job computes, from its inputs' paths and contents (SHA-256 of
        each file's bytes: a file changed in place is a changed job) and its settings; with the
        model's fingerprint (:func:`model_fingerprint`) it is what makes a job 'already done'."""
        spec = {k: str(getattr(self, k)) for k in ("image", "mask", "reference", "reference_mask", "steps", "guidance", "seed")}
        if self.references is not None:
            spec["references"] = [str(r) for r in self.references]
            spec["reference_masks"] = [str(m) for m in self.reference_masks or [None] * len(self.references)]
        spec["contents"] = [file_digest(path) for _, path in self.input_paths()]  # (None: unreadable, the job then fails as it runs)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def files(self) -> dict[str, Any]:
        """The job's inputs as :func:`io.load_inputs` takes them (lists for several references)."""
        if self.references is None:
            return {role: getattr(self, role) for role in FILE_ROLES}
        masks = self.reference_masks or [None] * len(self.references)
        return {"image": self.image, "mask": self.mask, "reference": list(self.references), "reference_mask": list(masks)}

    def input_paths(self) -> list[tuple[str, Path]]:
        """(role, path) of every input file the job names: ``reference #2``, ``reference #2 mask`` ..."""
        out = [(role, getattr(self, role)) for role in FILE_ROLES]
        for i, ref in enumerate(self.references or []):
            tag = "reference" if i == 0 else f"reference #{i + 1}"
            out.append((tag, ref))
            masks = self.reference_masks or []
            out.append((f"{tag} mask" if i else "reference_mask", masks[i] if i < len(masks) else None))
        return [(role, path) for role, path in out if path is not None]


def _check_output_name(name: Any) -> str:
    """A safe relative output name (POSIX separators), or InputError."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"output must be a non-empty file name, got {name!r}")
    if "\\" in name or "\0" in name:
        raise InputError(f"output '{name}': use '/' to separate folders (no backslashes or NUL)")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("~"):
        raise InputError(f"output '{name}': must be a name inside the output folder, not an absolute path")
    if any(part in ("..", ".") for part in p.parts) or not p.parts:
        raise InputError(f"output '{name}': '..' and '.' are not allowed (outputs stay inside the output folder)")
    if p.name.startswith("."):
        raise InputError(f"output '{name}': hidden names (starting with '.') are not allowed")
    if not p.suffix:
        p = p.with_suffix(".png")
    output_format(p, "output")  # (an unknown extension or a refused format: one InputError)
    if p.name in (DONE_FILE, ERRORS_FILE):
        raise InputError(f"output '{name}': reserved name")
    longest = max(p.parts, key=lambda part: len(part.encode("utf-8", "surrogateescape")))
    if len(longest.encode("utf-8", "surrogateescape")) > NAME_MAX - len(PART_PREFIX) - 16:
        raise InputError(f"output '{name}': the name '{longest[:40]}...' is too long ({len(longest)} characters; a file name may have at most {NAME_MAX - len(PART_PREFIX) - 16} here)")
    return p.as_posix()


def _parse_line(text: str, line: int, base: Path) -> BatchJob:
    job = BatchJob(line=line)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        job.error = f"not valid JSON ({e.msg} at column {e.colno})"
        return job
    try:
        if not isinstance(spec, dict):
            raise InputError(f"each line must be a JSON object, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(REQUIRED + OPTIONAL)})")
        several = "references" in spec
        missing = [k for k in REQUIRED if not spec.get(k) and not (k == "reference" and several)]
        if missing:
            raise InputError(f"missing field(s): {', '.join(missing)}")
        for k in FILE_ROLES:
            v = spec.get(k)
            if v is None:
                continue
            if not isinstance(v, str) or not v:
                hint = f" (several: \"{k}s\": [...])" if isinstance(v, list) and k.startswith("reference") else ""
                raise InputError(f"{k} must be a file path (string), got {v!r}{hint}")
            setattr(job, k, _path(v, base))
        if several or "reference_masks" in spec:
            job.references, job.reference_masks = _reference_lists(spec, base)
        steps, guidance, seed = spec.get("steps"), spec.get("guidance"), spec.get("seed", 0)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise InputError(f"steps must be an integer, got {steps!r}")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))):
            raise InputError(f"guidance must be a number, got {guidance!r}")
        seed = 0 if seed is None else check_seed(seed)
        from .io import check_settings

        check_settings(steps, guidance)
        job.steps, job.guidance, job.seed = steps, (float(guidance) if guidance is not None else None), seed
        name = spec.get("output")
        job.output = _check_output_name(name if name is not None else f"{line:05d}-{job.image.stem}.png")
    except InputError as e:
        job.error = str(e)
        if job.output is None and isinstance(spec, dict) and spec.get("output") is not None:
            # (a line refused for another field still names its output in the report and errors.jsonl)
            try:
                job.output = _check_output_name(spec["output"])
            except InputError:
                pass
    return job


def _path(v: str, base: Path) -> Path:
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p


def _reference_lists(spec: dict, base: Path) -> tuple[list[Path], list[Path | None] | None]:
    """A line's ``references`` and ``reference_masks`` (checked: lists of paths of the same length,
    null allowed among the masks; never with ``reference`` / ``reference_mask``)."""
    if "references" not in spec:
        raise InputError("reference_masks goes with references (a list); with reference give reference_mask")
    if "reference" in spec:
        raise InputError("give either reference (one file) or references (a list), not both")
    if "reference_mask" in spec:
        raise InputError("reference_mask goes with reference; with references give reference_masks (a list, null where a reference has none)")
    refs, masks = spec["references"], spec.get("reference_masks")
    if not isinstance(refs, list) or not refs:
        raise InputError(f"references must be a non-empty list of file paths, got {refs!r}")
    for i, v in enumerate(refs, start=1):
        if not isinstance(v, str) or not v:
            raise InputError(f"references: entry {i} must be a file path (string), got {v!r}")
    if masks is None:
        return [_path(v, base) for v in refs], None
    if not isinstance(masks, list) or len(masks) != len(refs):
        got = f"{len(masks)} entries" if isinstance(masks, list) else repr(masks)
        raise InputError(f"reference_masks must be a list with one entry per reference ({len(refs)}, null where there is none), got {got}")
    for i, v in enumerate(masks, start=1):
        if v is not None and (not isinstance(v, str) or not v):
            raise InputError(f"reference_masks: entry {i} must be a file path (string) or null, got {v!r}")
    return [_path(v, base) for v in refs], [None if v is None else _path(v, base) for v in masks]


def read_manifest(manifest: str | os.PathLike) -> list[BatchJob]:
    """Parse the manifest. A missing or unreadable manifest, or one with no jobs, is an InputError;
    a bad line becomes a job with ``error`` set (reported, the other lines still run)."""
    path = Path(manifest)
    try:
        text = read_file(path, "manifest", "a JSONL file").decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"manifest '{path}': not UTF-8 text (expected JSON Lines)") from None
    base = path.resolve().parent
    jobs: list[BatchJob] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        job = _parse_line(stripped, n, base)
        if job.error is None:
            if job.output in seen:
                job.error = f"output '{job.output}' is already written by line {seen[job.output]}"
            else:
                seen[job.output] = n
        jobs.append(job)
    if not jobs:
        raise InputError(f"manifest '{path}': no jobs (one JSON object per line)")
    return jobs


# ---------------------------------------------------------------------------------------------------- files
def _append_jsonl(path: Path, record: dict) -> None:
    """Append one line and fsync it; starts on a fresh line if a crash cut the last one short."""
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _read_ledger(path: Path) -> dict[str, str]:
    """output name -> job key of finished jobs; lines cut short by a crash are ignored. Reads the
    per-process ledgers (``done.r<rank>.jsonl``) beside ``path`` too."""
    done: dict[str, str] = {}
    for ledger in [path, *sorted(path.parent.glob(f"{Path(DONE_FILE).stem}.r*.jsonl"))]:
        if not ledger.exists():
            continue
        for raw in ledger.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(raw)
                done[str(rec["output"])] = str(rec["key"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


@dataclass(frozen=True)
class Shard:
    """This process's part of a batch run by several processes (``rank`` of ``world``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Shard":
        """From the variables torchrun / accelerate launch set (one process when they are absent)."""
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise InputError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun or accelerate launch)") from None
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"RANK {rank} is not in 0..WORLD_SIZE-1 = 0..{world - 1}")
        return cls(rank, world, local)

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def suffix(self) -> str:
        """``""`` for one process, else ``.r<rank>`` (the per-process file names)."""
        return "" if self.world == 1 else f".r{self.rank}"


#: How long a process of a launched batch waits for the others at the end (its share may finish
#: long before theirs).
FINISH_TIMEOUT_S = 7 * 24 * 3600


def finish_together(shard: Shard, env: dict | None = None, timeout_s: float = FINISH_TIMEOUT_S) -> bool:
    """Under a launcher (torchrun, accelerate launch: ``MASTER_ADDR`` / ``MASTER_PORT`` set, more
    than one process), wait until every process of the batch has finished its share (a gloo
    rendezvous and barrier on the launcher's address). The launcher stops every process as soon as
    one exits with an error, so a process whose share had a failed job (exit status 1) would
    otherwise cut the others' work short. Returns whether it waited (False: one process, no
    launcher, or no torch.distributed)."""
    env = os.environ if env is None else env
    if shard.world <= 1 or not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        return False
    import datetime

    import torch.distributed as dist

    if not dist.is_available():
        return False
    here = not dist.is_initialized()
    if here:
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        dist.barrier()
    finally:
        if here:
            dist.destroy_process_group()
    return True


def _merge_errors(out_dir: Path, jobs: list[BatchJob], shard: Shard) -> None:
    """Fold the per-process error files into ``errors.jsonl``: a job's line comes from its owner's
    file where that exists (the owner is running or has just ended), else from ``errors.jsonl``;
    this process's own file is then removed (its lines are in ``errors.jsonl``)."""
    merged_path = out_dir / ERRORS_FILE
    with hold_lock(out_dir / (LOCK_FILE + ".merge"), wait=True):
        old = _read_errors(merged_path)
        owners: dict[int, dict] = {}
        for r in range(shard.world):
            f = out_dir / f"{Path(ERRORS_FILE).stem}.r{r}.jsonl"
            if f.exists():
                owners[r] = _read_errors(f)
        records = {}
        for i, job in enumerate(jobs):
            key = (job.line, str(job.output))
            source = owners.get(i % shard.world, old)
            if key in source:
                records[key] = source[key]
        if records:
            lines = [json.dumps(records[k], sort_keys=True) + "\n" for k in sorted(records)]
            write_atomic(merged_path, "".join(lines), fsync=True, prefix=PART_PREFIX, suffix=PART_SUFFIX)
        else:
            with suppress(FileNotFoundError):
                merged_path.unlink()
        with suppress(FileNotFoundError):
            (out_dir / f"{Path(ERRORS_FILE).stem}{shard.suffix()}.jsonl").unlink()


def _read_errors(path: Path) -> dict[tuple[int, str], dict]:
    records: dict[tuple[int, str], dict] = {}
    if path.exists():
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(raw)
                records[(int(rec["line"]), str(rec["output"]))] = rec
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return records


class _ErrorLog:
    """``errors.jsonl``: one line per job (by manifest line and output name) that failed in its latest
    run, rewritten atomically whenever that changes, so reruns never pile up duplicates. Lines of a
    previous run stay until their job runs again (a run cut short keeps what it did not reach)."""

    def __init__(self, path: Path, jobs: list[BatchJob], seed_from: Path | None = None):
        self.path = path
        self.records: dict[tuple[int, str], dict] = {}
        current = {(job.line, str(job.output)) for job in jobs}
        changed = False
        if seed_from is not None and seed_from.exists() and not path.exists():  # a process's file starts from the merged one
            changed = True
            self.records = {k: v for k, v in _read_errors(seed_from).items() if k in current}
        if path.exists():
            for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(raw)
                    key = (int(rec["line"]), str(rec["output"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    changed = True  # a line cut short by a crash, or not ours: dropped
                    continue
                if key in current:
                    changed |= key in self.records
                    self.records[key] = rec
                else:  # the manifest no longer has this job
                    changed = True
        if changed:
            self._write()

    def failed(self, job: BatchJob, record: dict) -> None:
        self.records[(job.line, str(job.output))] = record
        self._write()

    def succeeded(self, job: BatchJob) -> None:
        if self.records.pop((job.line, str(job.output)), None) is not None:
            self._write()

    def _write(self) -> None:
        if not self.records:
            with suppress(FileNotFoundError):
                self.path.unlink()
            return
        lines = [json.dumps(self.records[k], sort_keys=True) + "\n" for k in sorted(self.records)]
        write_atomic(self.path, "".join(lines), fsync=True, prefix=PART_PREFIX, suffix=PART_SUFFIX)


def _write_atomic(img: Image.Image, path: Path, prefix: str = PART_PREFIX) -> None:
    """Write next to ``path`` under a temporary name, fsync, rename: the final name only ever holds
    a complete file."""
    fmt = output_format(path)
    write_atomic(path, lambda f: save_image(img, f, fmt), fsync=True, prefix=prefix, suffix=PART_SUFFIX)


def _remove_partials(out_dir: Path, prefix: str = PART_PREFIX) -> int:
    """Temporary files left by a killed run (only ours: ``.rba-*.part``; one process of several
    removes only its own, ``.rba-r<rank>-*.part``)."""
    n = 0
    for p in out_dir.rglob(f"{prefix}*{PART_SUFFIX}"):
        with suppress(OSError):
            p.unlink()
            n += 1
    return n


@contextmanager
def _lock(out_dir: Path, shard: Shard = Shard()):
    """One batch per output folder: a single process holds the folder's lock exclusively; the
    processes of a sharded run share it and each holds its rank's lock exclusively."""
    files = [hold_lock(out_dir / LOCK_FILE, shared=shard.world > 1)]
    try:
        if files[0] is not None and shard.world > 1:
            files.append(hold_lock(out_dir / f"{LOCK_FILE}{shard.suffix()}"))
        if None in files:
            raise InputError(f"output folder '{out_dir}': another batch is writing to it right now")
        yield
    finally:
        for f in files:
            if f is not None:
                f.close()  # closing releases the lock (a killed process releases it too)


def model_fingerprint(pipe) -> str:
    """What identifies the model a batch runs with: its configuration and a sample of every weight
    (each parameter's name, shape, dtype and first 64 values), so that outputs made by another
    model (another preset, a retrained folder, another --dtype) are not taken as done. "" for a
    stand-in without a ``model`` (a test's)."""
    import torch

    model = getattr(pipe, "model", None)
    if model is None:
        return ""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps(dict(cfg) if cfg is not None else {}, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            h.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
            h.update(param.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- run
def _run_one(job: BatchJob, pipe, target: Path, prefix: str = PART_PREFIX):
    """Refine one job into ``target``; returns the pipeline's result."""
    image, mask, reference, ref_mask, names = load_inputs(job.files(), labels={"reference_mask": "reference mask"})
    check_output_holds(target, image)  # (before the work: a transparent picture needs a format with alpha)
    result = pipe(
        image, mask, reference, ref_mask, num_inference_steps=job.steps, guidance_scale=job.guidance, seed=job.seed,
        names=names,
    )
    _write_atomic(result.image, target, prefix)
    return result


def _file_id(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) where the file exists): what makes two paths the same file."""
    try:
        st = os.stat(path)
        ino = (st.st_dev, st.st_ino)
    except OSError:
        ino = None
    return os.path.realpath(path), ino


def _input_files(jobs: list[BatchJob]) -> tuple[dict[str, tuple[int, str, Path]], dict[tuple[int, int], tuple[int, str, Path]]]:
    """Every input file named by the manifest, by resolved path and by inode -> (line, role, path)."""
    by_path: dict[str, tuple[int, str, Path]] = {}
    by_inode: dict[tuple[int, int], tuple[int, str, Path]] = {}
    for job in jobs:
        for role, path in job.input_paths():
            real, ino = _file_id(path)
            by_path.setdefault(real, (job.line, role, path))
            if ino is not None:
                by_inode.setdefault(ino, (job.line, role, path))
    return by_path, by_inode


class _OutputGuard:
    """Which outputs a job may write: inside the output folder, never an input file of any job of
    the manifest (by resolved path or inode), never the output of an earlier line (of this process,
    or of another process of a sharded run: two lines writing one file clash wherever they run)."""

    def __init__(self, out_dir: Path, all_jobs: list[BatchJob], shard: Shard):
        self.root = out_dir.resolve()
        self.inputs_by_path, self.inputs_by_inode = _input_files(all_jobs)
        self.targets: dict[str, int] = {}  # resolved output path -> line of this process's job that writes it
        self.elsewhere: dict[str, int] = {}  # the same for the other processes' jobs (first line each)
        for i, job in enumerate(all_jobs):
            if not shard.owns(i) and job.error is None:
                self.elsewhere.setdefault(_file_id(out_dir / job.output)[0], job.line)

    def claim(self, job: BatchJob, target: Path) -> str | None:
        """None when ``job`` may write ``target`` (now claimed), else the reason it may not."""
        if not target.resolve().is_relative_to(self.root):  # a symlinked sub-folder pointing elsewhere
            return f"output '{job.output}' resolves outside the output folder"
        real, ino = _file_id(target)
        clash = self.inputs_by_path.get(real) or (self.inputs_by_inode.get(ino) if ino is not None else None)
        if clash is not None:
            line, role, path = clash
            whose = "this job's" if line == job.line else f"line {line}'s"
            return (f"output '{job.output}' is {whose} {role} file '{path}': refusing to overwrite an input "
                    "(choose another output name or folder)")
        other = self.targets.get(real)
        if other is None and self.elsewhere.get(real, job.line) < job.line:
            other = self.elsewhere[real]
        if other is not None:
            return f"output '{job.output}' is the same file as the output of line {other}"
        for parent in Path(job.output).parents[:-1]:  # a folder of the name that is a file (another job's output)
            folder = self.root / parent
            resolved = _file_id(folder)[0]
            line = self.targets.get(resolved) or self.elsewhere.get(resolved)
            if line is not None or folder.is_file():
                whose = f"the output of line {line}" if line is not None else "a file"
                return f"output '{job.output}': its folder '{parent.as_posix()}' is {whose}, not a folder"
        self.targets[real] = job.line
        return None


def run_batch(
    manifest: str | os.PathLike, output_dir: str | os.PathLike, pipe, progress: bool = True, shard: Shard | None = None
) -> dict[str, Any]:
    """Run every job of ``manifest`` with ``pipe`` (with ``shard``, default from the launcher's
    environment: only this process's share); returns a summary dict:
    ``{"total", "done", "skipped", "failed", "output_dir", "errors_file", "seconds", "rank", "world"}``
    (``done`` = refined in this run, ``skipped`` = finished by an earlier run; counts are this
    process's)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    shard = Shard.from_env() if shard is None else shard
    all_jobs = read_manifest(manifest)
    jobs = [job for i, job in enumerate(all_jobs) if shard.owns(i)]
    if shard.world > 1 and getattr(pipe, "device", None) is not None and pipe.device.type == "cuda":
        pipe.to(f"cuda:{shard.local_rank}")  # one GPU per process
    out_dir = _output_folder(manifest, output_dir)
    guard = _OutputGuard(out_dir, all_jobs, shard)
    with _lock(out_dir, shard):
        run = _Run(out_dir, jobs, shard, pipe, guard)
        if shard.rank == 0:
            _write_run_record(out_dir, manifest, pipe, run.model, shard)
        desc = "batch" if shard.world == 1 else f"batch {shard.rank + 1}/{shard.world}"
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress, dynamic_ncols=True, position=shard.rank)
        try:
            for job in jobs:
                run.one(job)
                bar.set_postfix(failed=run.counts["failed"], refresh=False)  # after the job: its own failure counts
                bar.update()
        finally:
            bar.close()
            if shard.world > 1:
                _merge_errors(out_dir, all_jobs, shard)
    return {
        "total": len(jobs),
        **run.counts,
        "output_dir": str(out_dir),
        "errors_file": str(out_dir / ERRORS_FILE) if run.counts["failed"] else None,
        "seconds": round(time.perf_counter() - t0, 3),
        "rank": shard.rank,
        "world": shard.world,
    }


def _write_run_record(out_dir: Path, manifest: str | os.PathLike, pipe, fingerprint: str, shard: Shard) -> None:
    """``RUN_FILE``: a line appended for each run (earlier runs' lines kept: the outputs they made
    were made with them) with the manifest, the model and its fingerprint, the matcher, the
    processes and :func:`~refine_by_align.provenance.environment` (rank 0's); each job's own
    settings are its ``done.jsonl`` line, whose ``time`` falls after its run's."""
    from .provenance import environment, plain

    _append_jsonl(out_dir / RUN_FILE, plain({
        "command": "batch", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "manifest": {"path": str(Path(manifest).resolve()), "sha256": file_digest(manifest)},
        "model": getattr(pipe, "model_name", None),
        "model_fingerprint": fingerprint, "random_weights": bool(getattr(pipe, "random_weights", False)),
        "matcher_weights": getattr(pipe, "matcher_weights", None), "processes": shard.world, **environment(),
    }))


def _output_folder(manifest: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """The output folder, checked and created; the manifest must not be one of the batch's own files there."""
    out_dir = Path(output_dir)
    check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for own in (out_dir / ERRORS_FILE, out_dir / DONE_FILE, out_dir / RUN_FILE):
        if os.path.realpath(own) == os.path.realpath(manifest):
            raise InputError(f"manifest '{manifest}': is the batch's own {own.name} in the output folder; use another output folder")
    return out_dir


class _Run:
    """One process's pass over its jobs (inside the folder's lock): the partial files of a killed run
    removed, the ledgers read, this process's error file and ledger, the counts."""

    def __init__(self, out_dir: Path, jobs: list[BatchJob], shard: Shard, pipe, guard: _OutputGuard):
        self.out_dir, self.pipe, self.guard = out_dir, pipe, guard
        self.prefix = PART_PREFIX if shard.world == 1 else f"{PART_PREFIX}r{shard.rank}-"
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.model = model_fingerprint(pipe)
        _remove_partials(out_dir, self.prefix)
        self.finished = _read_ledger(out_dir / DONE_FILE)
        own_errors = out_dir / f"{Path(ERRORS_FILE).stem}{shard.suffix()}.jsonl"
        self.errors = _ErrorLog(own_errors, jobs, seed_from=out_dir / ERRORS_FILE if shard.world > 1 else None)
        self.ledger = out_dir / f"{Path(DONE_FILE).stem}{shard.suffix()}.jsonl"

    def fail(self, job: BatchJob, message: str, kind: str = "InputError") -> None:
        self.counts["failed"] += 1
        self.errors.failed(job, {
            "line": job.line, "output": job.output, "error": message, "type": kind,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })

    def one(self, job: BatchJob) -> None:
        """Run, skip (already done) or fail one job; whatever happens, the batch goes on."""
        if job.error is not None:
            return self.fail(job, job.error)
        target = self.out_dir / job.output
        refused = self.guard.claim(job, target)
        if refused is not None:
            return self.fail(job, refused)
        key = hashlib.sha256(f"{job.key}:{self.model}".encode()).hexdigest()[:16]  # the job with this model
        if self.finished.get(job.output) == key and target.is_file():
            self.counts["skipped"] += 1
            return self.errors.succeeded(job)
        t1 = time.perf_counter()
        try:
            result = _run_one(job, self.pipe, target, self.prefix)
        except InputError as e:
            return self.fail(job, str(e))
        except Exception as e:  # anything else is reported too: the batch goes on
            return self.fail(job, f"{type(e).__name__}: {e}", type(e).__name__)
        _append_jsonl(self.ledger, {
            "line": job.line, "output": job.output, "key": key,
            "seconds": round(time.perf_counter() - t1, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            # (what it was made with and what it gave; the model and the environment are in RUN_FILE)
            "seed": job.seed, "steps": job.steps, "guidance": job.guidance, "model": self.model,
            "alignment": getattr(result, "alignment", None), "warp_fraction": round(float(getattr(result, "warp_fraction", 0.0)), 4),
            "notes": list(getattr(result, "notes", None) or []),
        })
        self.finished[job.output] = key
        self.counts["done"] += 1
        self.errors.succeeded(job)


def check_not_busy(output_dir: str | os.PathLike, shard: Shard | None = None) -> None:
    """InputError now if another batch holds ``output_dir``'s lock (the command line asks before
    loading the model; :func:`run_batch` takes the lock for the run itself)."""
    out_dir = Path(output_dir)
    if (out_dir / LOCK_FILE).is_file():
        with _lock(out_dir, Shard.from_env() if shard is None else shard):
            pass


#: :func:`failure_lines` names at most this many failed jobs (the errors file has them all)
SHOWN_FAILURES = 20


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """One line per failed job of a :func:`run_batch` summary, "line N (output): why", read from its
    errors file (at most :data:`SHOWN_FAILURES`, then how many more)."""
    if not summary.get("failed") or not summary.get("errors_file"):
        return []
    try:
        records = [json.loads(x) for x in Path(summary["errors_file"]).read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []
    lines = [f"line {r.get('line')}" + (f" ({r['output']})" if r.get("output") else "") + f": {r.get('error')}" for r in records[:SHOWN_FAILURES]]
    if len(records) > SHOWN_FAILURES:
        lines.append(f"... and {len(records) - SHOWN_FAILURES} more in {summary['errors_file']}")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """One line for the CLI."""
    text = (
        f"{summary['done']} refined, {summary['skipped']} already done, {summary['failed']} failed "
        f"of {summary['total']} jobs -> {summary['output_dir']}"
    )
    if summary.get("world", 1) > 1:
        text = f"process {summary['rank'] + 1}/{summary['world']}: " + text
    if summary["failed"]:
        text += f" (errors: {summary['errors_file']})"
    return text
