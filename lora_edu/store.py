"""The results file of a sweep: one JSON line per finished run, safe against crashes and
concurrent writers.

Every finished run appends one line, written in one piece, on a line of its own and flushed,
under a file lock, so an interrupted sweep loses at most the run in progress and two writers
never mix their lines. A record cut off mid-write is reported, moved to ``<file>.corrupt`` and
ignored; any other broken line is an error, so results are never dropped silently. Imports only
``grid`` (for the adapter folder's name).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_edu.grid import adapter_slug


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``) for the block, so
    that appends and repairs by several processes never interleave. Where ``fcntl`` does not
    exist (Windows) the block runs unlocked: there, run one writer per file."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: A token a writer may stop inside: a number (``16.``, ``-``, ``1e``) or a literal (``fal``).
_PARTIAL_TOKEN = re.compile(r"(?:[-+.0-9eE]+|[a-z]+)$")


def _cut_off(line: str, err: json.JSONDecodeError) -> bool:
    """Whether a line that does not parse is the start of a record that a writer stopped
    writing: it opens an object, and the parser ran out of text, inside a string or (once a
    half-written number or literal at its end is set aside) at the end of the line."""
    if not line.lstrip().startswith("{"):
        return False
    if err.msg.startswith("Unterminated string") or err.pos >= len(line.rstrip()):
        return True
    head = _PARTIAL_TOKEN.sub("", line.rstrip())
    try:
        json.loads(head)
    except json.JSONDecodeError as inner:
        return inner.pos >= len(head.rstrip())
    return False


def _parse(path: Path, text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a results file's ``text`` and the indices of cut-off records. A record is
    cut off when a writer crashed mid-line: the last line of the file without its newline that
    does not parse (``append_record`` ends every record with one), or a line before it that
    stops where a record could go on (since ``append_record`` starts every record on a new line,
    later records follow intact). Any other broken line, or valid JSON that is not an object,
    raises a ValueError naming it."""
    lines = text.splitlines()
    unfinished = len(lines) - 1 if text and not text.endswith("\n") else None
    records: list[dict[str, Any]] = []
    cut: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == unfinished or _cut_off(line, err):
                cut.append(i)  # a truncated record
                continue
            raise ValueError(
                f"{path}:{i + 1}: not a JSON record ({err.msg}); it is not a record cut off "
                "by an interruption either, so this file was edited or damaged: fix or remove "
                "that line by hand (the other records are intact)"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{i + 1}: a JSON {type(record).__name__}, not a record (a JSON object "
                "with the run's fields); fix or remove that line by hand"
            )
        records.append(record)
    return records, cut


def read_results(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a results file (an empty list when it does not exist).

    A record cut off mid-write (a run interrupted while writing) is reported with a warning and
    ignored; with ``repair=True`` it is also moved to ``<path>.corrupt``, under the file's lock
    and re-reading the file first, so records another process appended meanwhile are kept. Any
    other broken line raises a ValueError naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, cut = _parse(path, path.read_text(encoding="utf-8"))
    if not cut:
        return records
    where = ", ".join(f"{path}:{i + 1}" for i in cut)
    warnings.warn(
        f"{where}: not a complete JSON record (a run interrupted while writing?); ignoring it"
        f"{' and moving it to ' + path.name + '.corrupt' if repair else ''}",
        stacklevel=2,
    )
    if repair:
        with _locked(path):
            text = path.read_text(encoding="utf-8")
            records, cut = _parse(path, text)
            lines = text.splitlines()
            if cut:
                with open(f"{path}.corrupt", "a", encoding="utf-8") as f:
                    f.writelines(lines[i] + "\n" for i in cut)
                kept = "".join(line + "\n" for i, line in enumerate(lines) if i not in cut)
                partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                partial.write_text(kept, encoding="utf-8")
                os.replace(partial, path)  # readers see the old file or the new one, never half
    return records


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one JSON line, flushed to disk before returning. The line always
    starts on a line of its own (a newline is added first if a crashed writer left the last line
    unfinished), and the append holds the file's lock (see ``read_results``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with _locked(path), path.open("ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_record(out: str | os.PathLike, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """Append ``record`` to the results file ``out``; with adapter ``files`` (from
    ``train_one``), first write them to ``adapters/<file stem>/<run>/`` beside it and note that
    folder in the record as ``adapter_path``."""
    out = Path(out)
    if files:
        adapter_dir = out.parent / "adapters" / out.stem / adapter_slug(record)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (adapter_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (adapter_dir / name).write_bytes(data)
        record["adapter_path"] = os.path.relpath(adapter_dir, out.parent)
    append_record(out, record)
