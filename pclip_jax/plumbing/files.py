"""Atomic writes: a file or directory appears complete under its name or not at all (and a lock for work that
two processes must not do at once).

Everything a later run reads back (caches, results, probe, model info, config) is written to a temporary name in
the same directory and renamed, so a kill mid-write leaves the previous version or nothing, never half a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import socket
import sys
import tempfile
from typing import Any, Iterator

import numpy as np

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; on success it is renamed to `path` (file or directory)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + "-", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, waiting: str = "") -> Iterator[None]:
    """Holds an exclusive advisory lock on `path` (created if missing) for the block. Another process asking for
    the same lock waits until this one leaves the block or dies (the OS drops the lock of a killed process, so no
    stale lock is left); `waiting` is printed to stderr when it has to wait. The file names the holder
    (pid@host). Where `fcntl` is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if waiting:
                print(f"{waiting} (held by {holder}; lock {path})", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}@{socket.gethostname()}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(data, indent=indent))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; a damaged one is a ValueError naming the file and line."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def savez(path: str | os.PathLike, compressed: bool = False, **arrays: np.ndarray) -> None:
    """`np.savez` (no pickle), atomically; `compressed`: `np.savez_compressed` (files kept in git: repeated
    strings such as capture names shrink ~10x). The temporary name keeps the `.npz` suffix numpy expects."""
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an npz file; a damaged one is a ValueError naming the file."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError: all mean "damaged"
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of one file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(directory: str | os.PathLike) -> str:
    """SHA-256 over every file of a directory tree (relative names and contents), for checkpoint integrity."""
    root = pathlib.Path(directory)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()
