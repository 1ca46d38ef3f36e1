"""Finding workflow definitions by name in ``WORKFLOW_DIRS`` and apps' ``workflows/``.

Parsed files are cached in a module-level dict keyed by path and validated by
``(mtime_ns, size)``: a repeated ``get()`` costs one ``stat`` per file, and an edited
file is parsed again. Settings are read on every :func:`get_registry` call (never at
import), so ``override_settings`` works while the parse cache is shared.

An invalid file makes only the workflow it claims unusable (:class:`WorkflowEntry`
carries its errors); every other workflow keeps working. A file claims the ``name`` it
declares, or its stem when it has none (its YAML may not even parse). A name claimed by
several files is unusable until one of them is renamed.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wfstate.definitions.loader import load_definition
from wfstate.definitions.model import WorkflowDefinition
from wfstate.exceptions import InvalidDefinition, WorkflowNotFound
from wfstate.records import DefinitionProblem

__all__ = [
    "Registry",
    "WorkflowEntry",
    "clear_cache",
    "get_registry",
    "resolve_definition",
]

_Result = WorkflowDefinition | InvalidDefinition
_cache: dict[str, tuple[int, int, _Result]] = {}  # by path
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _load_cached(path: Path) -> _Result | None:
    """The definition or the error of ``path``; None if the file vanished."""
    name = os.fspath(path)  # a str hashes in a fraction of a Path's time
    try:
        st = os.stat(name)
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(name)
    if hit is not None and hit[:2] == key:
        return hit[2]
    result: _Result
    try:
        result = load_definition(path)
    except InvalidDefinition as exc:
        result = exc
    except WorkflowNotFound:
        return None
    with _cache_lock:
        _cache[name] = (*key, result)
    return result


def _is_file(entry: os.DirEntry[str]) -> bool:
    """``Path.is_file()`` of a directory entry (symlinks followed; a dangling or looping
    link is no file), without a stat for a plain file."""
    try:
        return entry.is_file()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise


def _claimed_name(result: _Result, path: Path) -> str:
    """The name a file claims: its ``name``, else the file's stem (an invalid file whose
    YAML does not even parse still has to be called something). An invalid file's name
    with a slash or a space could not appear in a URL or on a command line: stem too."""
    if isinstance(result, WorkflowDefinition):
        return result.name
    name = getattr(result, "workflow_name", None)
    if isinstance(name, str) and re.fullmatch(r"[^/\s]+", name):
        return name
    return path.stem


@dataclass(frozen=True)
class WorkflowEntry:
    """One workflow name found in the directories: its definition, or why it is unusable.

    An invalid entry makes only that workflow unusable: every other entry works. The
    ``version``/``description``/``sha256``/``inputs``/``warnings`` properties give
    empty values for an invalid entry, so lists can show both kinds alike.
    """

    name: str
    paths: tuple[Path, ...]
    definition: WorkflowDefinition | None = None
    error: InvalidDefinition | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def path(self) -> Path:
        """The file that defines the workflow (the first one, when several claim it)."""
        return self.paths[0]

    @property
    def duplicate(self) -> bool:
        """Several files claim this name, so none of them can be used by it."""
        return len(self.paths) > 1

    @property
    def errors(self) -> list[DefinitionProblem]:
        """Every problem, as ``{"file", "line", "state", "message"}`` dicts."""
        return list(self.error.errors) if self.error else []

    def problems(self) -> list[str]:
        """Each error as one line: ``file:line: state 'x': message``."""
        lines = []
        for error in self.errors:
            where = f"{error['file']}:{error['line']}" if error["line"] else error["file"]
            state = f"state '{error['state']}': " if error["state"] else ""
            lines.append(f"{where}: {state}{error['message']}")
        return lines

    @property
    def warnings(self) -> list[str]:
        if self.definition is not None:
            return list(self.definition.warnings)
        return list(self.error.warnings) if self.error else []

    @property
    def version(self) -> str:
        return self.definition.version if self.definition is not None else ""

    @property
    def description(self) -> str:
        return self.definition.description if self.definition is not None else ""

    @property
    def sha256(self) -> str:
        return self.definition.sha256 if self.definition is not None else ""

    @property
    def inputs(self) -> list[Any]:
        return list(self.definition.inputs) if self.definition is not None else []


def _duplicate_error(name: str, claims: list[tuple[Path, _Result]]) -> InvalidDefinition:
    files = [str(path) for path, _ in claims]
    entries: list[DefinitionProblem] = [
        {
            "file": file,
            "line": 0,
            "state": None,
            "message": f"workflow name '{name}' is also defined in "
            + ", ".join(f for f in files if f != file),
        }
        for file in files
    ]
    # A claimant that is itself invalid keeps its own errors visible too.
    for _path, result in claims:
        if isinstance(result, InvalidDefinition):
            entries.extend(result.errors)
    return InvalidDefinition(
        f"workflow name '{name}' is defined more than once: " + ", ".join(files),
        errors=entries,
        warnings=[],
        path=files[0],
        workflow_name=name,
        files=files,
    )


class Registry:
    """The workflow definitions found in some directories (``*.yaml`` and ``*.yml``)."""

    def __init__(self, dirs: list[Path]) -> None:
        unique: dict[str, Path] = {}
        for directory in dirs:
            path = Path(directory)
            unique.setdefault(os.path.realpath(path), path)
        self.dirs = list(unique.values())

    def _files(self) -> list[Path]:
        # Every lookup lists the directories (a run's start does it): os.scandir, whose
        # entries know their type without a stat each, and plain names until the end.
        files: list[Path] = []
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            with os.scandir(directory) as entries:
                found = [
                    entry.name
                    for entry in entries
                    if entry.name.endswith((".yaml", ".yml"))
                    and not entry.name.startswith(".")
                    and _is_file(entry)
                ]
            files.extend(directory / name for name in sorted(found))
        return files

    def _scan(self) -> dict[str, WorkflowEntry]:
        """Every name claimed by a file, valid or not."""
        claims: dict[str, list[tuple[Path, _Result]]] = {}
        for path in self._files():
            result = _load_cached(path)
            if result is None:
                continue
            claims.setdefault(_claimed_name(result, path), []).append((path, result))
        entries: dict[str, WorkflowEntry] = {}
        for name, found in claims.items():
            paths = tuple(path for path, _ in found)
            if len(found) > 1:
                entries[name] = WorkflowEntry(name, paths, error=_duplicate_error(name, found))
                continue
            result = found[0][1]
            if isinstance(result, InvalidDefinition):
                entries[name] = WorkflowEntry(name, paths, error=result)
            else:
                entries[name] = WorkflowEntry(name, paths, definition=result)
        return entries

    def entries(self) -> list[WorkflowEntry]:
        """Every workflow, valid or invalid, sorted by name."""
        found = self._scan()
        return [found[name] for name in sorted(found)]

    def entry(self, name: str) -> WorkflowEntry:
        """The workflow called ``name``, valid or invalid.

        Raises:
            WorkflowNotFound: no file claims it (the message names the dirs searched).
        """
        found = self._scan().get(name)
        if found is None:
            searched = ", ".join(str(d) for d in self.dirs) or "(no directories)"
            raise WorkflowNotFound(
                f"no workflow named '{name}' (searched: {searched})", name=name, searched=searched
            )
        return found

    def get(self, name: str) -> WorkflowDefinition:
        """The definition called ``name``.

        Raises:
            WorkflowNotFound: no file defines it (the message names the dirs searched).
            InvalidDefinition: the file that defines it is invalid, or two files do.
        """
        found = self.entry(name)
        if found.definition is None:
            raise found.error or InvalidDefinition(f"workflow '{name}' is invalid", errors=[])
        if any(s.workflow for s in found.definition.states.values()):
            from wfstate.definitions.calls import check_call_graph

            entries = self._scan()
            check_call_graph(
                found.definition, lambda n: entries[n].definition if n in entries else None
            )
        return found.definition

    def all(self) -> list[WorkflowDefinition]:
        """Every valid definition, sorted by name."""
        return [e.definition for e in self.entries() if e.definition is not None]

    def errors(self) -> list[InvalidDefinition]:
        """One error per invalid file, and one per name claimed by several files."""
        return [e.error for e in self.entries() if e.error is not None]


def workflow_dirs() -> list[Path]:
    """``WORKFLOW_DIRS`` then each installed app's ``workflows/`` folder (if it exists)."""
    from django.apps import apps

    from wfstate.conf import conf

    dirs = list(conf.WORKFLOW_DIRS)
    for app_config in apps.get_app_configs():
        candidate = os.path.join(app_config.path, "workflows")
        if os.path.isdir(candidate):
            dirs.append(Path(candidate))
    return dirs


def get_registry() -> Registry:
    """A registry over the configured directories (read now; the parse cache is shared)."""
    return Registry(workflow_dirs())


def resolve_definition(name_or_path: str) -> WorkflowDefinition:
    """A path to a ``.yaml``/``.yml`` file, or the name of a registered workflow.

    Raises:
        WorkflowNotFound: no such file or name.
        InvalidDefinition: the definition is invalid.
    """
    candidate = Path(name_or_path)
    looks_like_path = (
        candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path or "/" in name_or_path
    )
    if looks_like_path or candidate.is_file():
        if not candidate.is_file():
            raise WorkflowNotFound(f"no such workflow file: {name_or_path}", name=name_or_path)
        return load_definition(candidate)
    return get_registry().get(name_or_path)
