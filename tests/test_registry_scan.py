"""The registry lists its directories with ``os.scandir`` (every run's start looks a
workflow up): the files it finds, and their order, are exactly those of the
``Path.iterdir``/``is_file`` listing it replaced, whatever lies in the directory."""

from __future__ import annotations

import os
from pathlib import Path

from wfstate.definitions.registry import Registry


def pathlib_listing(dirs: list[Path]) -> list[Path]:
    """The former listing, kept here as the reference."""
    files: list[Path] = []
    for directory in dirs:
        if not directory.is_dir():
            continue
        found = [
            p
            for p in directory.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        ]
        files.extend(sorted(found))
    return files


def test_the_listing_is_the_pathlib_one(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    for name in ("b.yaml", "a.yml", "C.yaml", "x.YAML", "notes.txt", ".hidden.yaml", "a.b.yaml"):
        (first / name).write_text("name: x\n")
    (first / "dir.yaml").mkdir()  # a directory is no file
    (first / "linked.yaml").symlink_to(first / "b.yaml")  # a link to a file is one
    (first / "dangling.yaml").symlink_to(first / "missing.yaml")  # a dangling link is not
    (first / "loop.yaml").symlink_to(first / "loop.yaml")  # nor a looping one
    (first / "todir.yml").symlink_to(first / "dir.yaml")  # nor a link to a directory
    (second / "z.yaml").write_text("name: z\n")
    dirs = [first, tmp_path / "absent", second, first / "b.yaml"]  # a file, not a dir

    listed = Registry(dirs)._files()

    assert listed == pathlib_listing(Registry(dirs).dirs)
    assert [p.name for p in listed] == [
        "C.yaml",
        "a.b.yaml",
        "a.yml",
        "b.yaml",
        "linked.yaml",
        "z.yaml",
    ]
    assert all(isinstance(p, Path) for p in listed)
    os.unlink(first / "b.yaml")  # the link now dangles: both drop both
    assert Registry(dirs)._files() == pathlib_listing(Registry(dirs).dirs)
