"""A real tmpfs for tests that need a real filesystem condition (full, read-only)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str, refused: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``mount_point`` for the block.

    Where mounting is not permitted the test is skipped, saying ``refused`` and why.
    """
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"{refused}: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
