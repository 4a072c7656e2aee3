"""File I/O at the edge of the stages: atomic writes, so a failed stage leaves nothing half-written.

Stage functions are pure; their CLIs collect every output in memory (or in a
temporary directory) and publish them together with :func:`atomic_outputs`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from pipelines.errors import DataError, PipelineError

SPLIT_COLUMNS = ("text", "label")  # what every consumer of a model-ready split reads


def _require_file(path: Path) -> None:
    if not Path(path).exists():
        raise DataError(f"{path} does not exist: run the stage that writes it first (dvc repro)")


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a stage input; a missing file is a clear error that says which stage makes it."""
    import pyarrow as pa

    _require_file(path)
    df = pd.read_parquet(path, columns=columns)
    pa.default_memory_pool().release_unused()  # the Arrow buffers are freed once converted: return them (~0.2 GB @500k)
    return df


def read_split(where: str | Path, name: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """A model-ready split (train / val / test): ``read_split(data_dir, "test")`` or ``read_split(path)``.

    The one loader of splits, so every stage, the gate and the flows refuse the same bad inputs the
    same way, each with a :class:`~pipelines.errors.DataError` naming the file: missing (run the stage
    that writes it), unreadable, without the ``text`` / ``label`` columns (or the ``columns`` asked
    for), or empty. ``columns`` reads only those columns.
    """
    import pyarrow.parquet as pq

    path = Path(where) / f"{name}.parquet" if name is not None else Path(where)
    _require_file(path)
    what = f"the {path.stem} split {path}"
    try:
        present = pq.read_schema(path).names
    except Exception as err:  # noqa: BLE001 - any failure to read the footer means the file is unusable
        raise DataError(f"{what} is not a readable Parquet file ({type(err).__name__}: {err})") from None
    required = list(columns) if columns is not None else list(SPLIT_COLUMNS)
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(
            f"{what} has no column(s) {missing} (it has {present}); re-run the stage that writes it (dvc repro)"
        )
    df = pd.read_parquet(path, columns=columns)
    if df.empty:
        raise DataError(f"{what} is empty (0 rows): nothing to train, evaluate or gate on")
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, engine="pyarrow", index=False)


class ParquetParts:
    """Frames written one by one as Parquet parts under ``directory``, then combined into one file (columns in
    order of appearance, those named in ``first`` first).

    A column's type is that of the whole data, as if the frames had been concatenated: taken from the parts where
    it has values (a part whose column is all null does not decide it), widened where parts disagree (int64 and
    float64: float64), and a part without the column gets nulls there. One part is in memory at a time."""

    def __init__(self, directory: Path, first: Iterable[str] = ()) -> None:
        self.directory = directory
        self.first = list(first)
        self.paths: list[Path] = []
        self.names: list[str] = []
        self.dtypes: dict[str, list] = {}
        self.empty: pd.DataFrame | None = None

    def add(self, df: pd.DataFrame | None) -> None:
        if df is None:
            return
        if df.empty:
            self.empty = df if self.empty is None else self.empty
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"part-{len(self.paths):06d}.parquet"
        df.to_parquet(path, engine="pyarrow", index=False)
        self.paths.append(path)
        for col in df.columns:
            if col not in self.dtypes:
                self.names.append(col)
                self.dtypes[col] = []
            self.dtypes[col].append((df[col].dtype, bool(df[col].notna().any())))

    def combine(self, out: Path) -> dict[str, str]:
        """Write the parts to ``out`` (one row group each); return the columns' dtypes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        if not self.paths:  # nothing written: the columns of an empty batch
            empty = self.empty if self.empty is not None else pd.DataFrame()
            empty.to_parquet(out, engine="pyarrow", index=False)
            return {c: str(t) for c, t in empty.dtypes.items()}
        names = [c for c in self.first if c in self.dtypes] + [c for c in self.names if c not in self.first]
        dtypes = {}
        for col in names:
            typed = [t for t, has_values in self.dtypes[col] if has_values] or [self.dtypes[col][0][0]]
            # the dtype concatenating the parts gives (empty Series of each: public pandas, no data touched)
            dtypes[col] = pd.concat([pd.Series(dtype=t) for t in typed], ignore_index=True).dtype
        template = pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
        schema = pa.Schema.from_pandas(template, preserve_index=False)
        with pq.ParquetWriter(out, schema) as writer:
            for path in self.paths:
                part = pq.read_table(path)
                arrays = [
                    part[c].cast(schema.field(c).type)
                    if c in part.column_names
                    else pa.nulls(len(part), schema.field(c).type)
                    for c in names
                ]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                path.unlink()
        return {c: str(t) for c, t in dtypes.items()}


def write_rows(table, positions, path: Path, schema, chunk_rows: int = 50_000) -> None:
    """Write the rows of an Arrow ``table`` at ``positions`` (in that order) to one Parquet file of ``schema``,
    copying at most ``chunk_rows`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(positions), chunk_rows):
            writer.write_table(table.take(pa.array(positions[start : start + chunk_rows])).cast(schema))


def with_pandas_metadata(schema):
    """``schema`` (an Arrow schema) with the pandas metadata pandas writes for a frame of these columns (their
    dtypes, no index), so a file written batch by batch reads back as :func:`write_parquet`'s would."""
    import pyarrow as pa

    empty = pa.Table.from_batches([], schema=schema).to_pandas()
    return schema.with_metadata(pa.Schema.from_pandas(empty, preserve_index=False).metadata)


def parquet_columns(path: Path) -> list[str]:
    """A Parquet file's column names, from its footer (a missing file: the clear error of :func:`read_parquet`)."""
    import pyarrow.parquet as pq

    _require_file(path)
    return pq.read_schema(path).names


def parquet_num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    _require_file(path)
    return pq.ParquetFile(path).metadata.num_rows


def _projected_schema(pf, columns: list[str] | None):
    """The file's Arrow schema, only ``columns`` (its pandas metadata kept: the frames get the file's dtypes)."""
    import pyarrow as pa

    schema = pf.schema_arrow
    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)


def read_compact(path: Path, columns: list[str]) -> pd.DataFrame:
    """``columns`` of a Parquet file, every row, its string columns kept in Arrow buffers (``string[pyarrow]``: about
    the text's bytes plus 4 a value, against about 50 more for the Python strings :func:`read_parquet` makes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(path)
    arrow_strings = pd.StringDtype("pyarrow")
    table = pq.read_table(path, columns=columns)
    df = table.to_pandas(types_mapper={pa.string(): arrow_strings, pa.large_string(): arrow_strings}.get)
    del table
    pa.default_memory_pool().release_unused()
    return df


def read_batches(path: Path, columns: list[str] | None = None, batch_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """A Parquet file's rows (only ``columns``), in order, as frames of at most ``batch_rows`` rows with the dtypes
    :func:`read_parquet` gives: one batch is in memory at a time, never the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(path)
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch]).to_pandas()
    pa.default_memory_pool().release_unused()  # the decoded row groups: return them, as read_parquet does


def read_rows(
    path: Path, positions: np.ndarray, columns: list[str] | None = None, batch_rows: int = 50_000
) -> pd.DataFrame:
    """The rows of a Parquet file at ``positions`` (ascending; only ``columns``) as one frame, read batch by batch:
    only those rows are kept (as Arrow buffers until the frame is made)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(path)
    positions = np.asarray(positions, dtype=np.int64)
    picked, start = [], 0
    with pq.ParquetFile(path) as pf:
        schema = _projected_schema(pf, columns)
        if len(positions):
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                lo, hi = np.searchsorted(positions, [start, start + batch.num_rows])
                if hi > lo:
                    picked.append(batch.take(pa.array(positions[lo:hi] - start)))
                start += batch.num_rows
                if start > positions[-1]:
                    break
    df = pa.Table.from_batches(picked, schema=picked[0].schema if picked else schema).to_pandas()
    del picked
    pa.default_memory_pool().release_unused()
    return df


def copy_rows(
    source: Path, keep: np.ndarray, out: Path, columns: list[str] | None = None, batch_rows: int = 50_000
) -> None:
    """Write the rows of Parquet ``source`` where ``keep`` (a boolean mask over its rows) is true, only ``columns``,
    to ``out``, batch by batch: the frame ``read_parquet(source, columns)[keep]`` that :func:`write_parquet` would
    write (same rows, columns and pandas dtypes), without holding it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(source)
    keep = np.asarray(keep, dtype=bool)
    with pq.ParquetFile(source) as pf:
        if len(keep) != pf.metadata.num_rows:
            raise ValueError(f"keep has {len(keep):,} entries, {source} has {pf.metadata.num_rows:,} rows")
        schema = with_pandas_metadata(_projected_schema(pf, columns))
        out.parent.mkdir(parents=True, exist_ok=True)
        start = 0
        with pq.ParquetWriter(out, schema) as writer:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                mask = keep[start : start + batch.num_rows]
                start += batch.num_rows
                if mask.any():
                    writer.write_table(pa.Table.from_batches([batch.filter(pa.array(mask))]).cast(schema))


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_outputs(*targets: str | Path, keep_on_error: bool = False) -> Iterator[dict[Path, Path]]:
    """Yield a mapping ``target -> staging path``; on success move every staged path into place.

    The caller writes to the staging paths. If the block raises, the staging
    area is removed and the targets are left exactly as they were (or absent,
    as DVC leaves them before a stage runs) — no partial outputs.
    """
    targets_p = [Path(t) for t in targets]
    root = Path(tempfile.mkdtemp(prefix=".staging-", dir="."))
    staged = {t: root / f"{i}-{t.name}" for i, t in enumerate(targets_p)}
    try:
        yield staged
        for target, tmp in staged.items():
            if not tmp.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(tmp, target)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def remove_outputs(*targets: str | Path) -> None:
    """Delete stale outputs of a stage that is about to fail (so downstream cannot read them)."""
    for t in map(Path, targets):
        if t.is_dir() and not t.is_symlink():
            shutil.rmtree(t, ignore_errors=True)
        elif t.exists():
            t.unlink()


def tool(name: str) -> str:
    """A command-line tool of this environment: the one beside this interpreter (the virtualenv's ``dvc``,
    ``ray``, ``deepspeed``) first, else the one on PATH, so subprocesses work when the venv is not on PATH."""
    import sys

    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name) or name


def tools_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this environment's scripts folder (beside this interpreter: the virtualenv's ``python``,
    ``dvc``, ``ninja``) first on ``PATH``, once: a subprocess that runs a tool by name runs this environment's."""
    import sys

    scripts = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != scripts]
    return {**env, "PATH": os.pathsep.join([scripts, *rest])}


class CommandFailed(PipelineError):
    """A tool run by :func:`run_command` exited non-zero; carries its exit code and output."""

    def __init__(self, cmd: list[str], result: subprocess.CompletedProcess) -> None:
        self.cmd, self.returncode = cmd, result.returncode
        self.output = f"{result.stdout or ''}{result.stderr or ''}"
        super().__init__(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{self.output[-3000:]}")


def run_command(
    cmd: list[str], cwd: str | Path = ".", *, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The one place the project runs a tool as a subprocess (``dvc``, ``git``, ...), output captured as text.

    ``check=True`` raises :class:`CommandFailed` (a :class:`~pipelines.errors.PipelineError` with the tail of the
    output) on a non-zero exit. Tests replace this function to fake a tool.
    """
    result = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise CommandFailed(cmd, result)
    return result


def stream_command(
    cmd: list[str], *, env: dict[str, str] | None = None, keep: Callable[[Iterable[str]], Iterable[str]] | None = None
) -> int:
    """Run a long tool (the DeepSpeed launcher) with its stdout passed through line by line as it comes,
    through ``keep`` (a filter such as :func:`pipelines.logs.drop_launcher_noise`); stderr is the caller's.
    Returns the exit code.

    A carriage return ends a line as well and is passed on as it is: a rank's progress bar (tqdm redraws
    with ``\r``) stays one line redrawn in place. Read as plain text, each redraw became a line of its own
    (250 lines for one epoch of the default finetune stage).

    The tool never outlives the caller: on Linux it gets SIGTERM when the calling process dies, even by
    ``kill -9`` or a timeout (the DeepSpeed launcher passes it on to its ranks); an exception here (Ctrl-C)
    terminates it before it propagates."""
    import sys

    with subprocess.Popen(_dies_with_caller(cmd), env=env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        out = _lines_as_they_come(proc.stdout)
        try:
            for line in keep(out) if keep else out:
                sys.stdout.write(line)
                sys.stdout.flush()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return proc.returncode


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")


def _lines_as_they_come(stream: BinaryIO) -> Iterator[str]:
    """The text of ``stream`` (UTF-8; a bad byte replaced) in lines ending at ``\n``, ``\r`` or ``\r\n``, each
    with its own ending, each yielded as soon as it ends (a text wrapper holds a line ending in ``\r`` back
    until the next byte shows whether ``\n`` follows: a bar would show each redraw one step late)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := stream.read1(65536):
        pending += decoder.decode(chunk)
        end = 0
        for match in _LINE.finditer(pending):
            yield match.group()
            end = match.end()
        pending = pending[end:]
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


# In the child, before it becomes ``cmd``: ask Linux for SIGTERM when the caller dies (kept across exec), and
# stop if the caller died before that was asked. A fresh interpreter does it, not a preexec_fn in a caller that
# may have threads (torch's), where forking and running Python before exec can deadlock.
_PDEATHSIG = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "  # 1: PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(143); os.execvp(sys.argv[2], sys.argv[2:])"
)


def _dies_with_caller(cmd: list[str]) -> list[str]:
    """``cmd`` started so that it gets SIGTERM when this process dies (Linux; elsewhere ``cmd`` as it is)."""
    import sys

    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _PDEATHSIG, str(os.getpid()), *cmd]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for local servers started by tools and tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks (an adapter the scores belong to, a snapshot a
    person reviewed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
