"""Ways to make storage fail for real in tests: a full filesystem, a damaged page."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PAGE = 4096  # SQLite's default page size, which chatd keeps


def need_root_mount() -> None:
    """Skip (saying why) unless this process may mount a tmpfs; CI runs as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")


@contextlib.contextmanager
def tmpfs(size: str, options: str = "") -> Iterator[Path]:
    """A fresh tmpfs of `size` (e.g. "2m"), unmounted on the way out."""
    need_root_mount()
    where = Path(tempfile.mkdtemp(prefix="chatd-tmpfs-"))
    opts = f"size={size}" + (f",{options}" if options else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def fill(path: Path) -> None:
    """Write `path` until its filesystem has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    assert os.statvfs(path.parent).f_bavail == 0


def damage_page_holding(db: Path, marker: bytes) -> int:
    """Overwrite the database page that holds `marker` with garbage; its page number."""
    data = db.read_bytes()
    page = data.index(marker) // PAGE
    with open(db, "r+b") as fh:
        fh.seek(page * PAGE)
        fh.write(os.urandom(PAGE))
    return page + 1


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from a read-only connection (the server may be running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count(db: Path, sql: str) -> int:
    return int(query(db, sql)[0][0])
