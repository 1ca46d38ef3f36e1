"""Finding workflow definitions by name in ``WORKFLOW_DIRS`` and apps' ``workflows/``.

Parsed files are cached in a module-level dict keyed by path and validated by
``(mtime_ns, size)``: a repeated ``get()`` costs one ``stat`` per file, and an edited
file is parsed again. Settings are read on every :func:`get_registry` call (never at
import), so ``override_settings`` works while the parse cache is shared.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from wfstate.definitions.loader import load_definition
from wfstate.definitions.model import WorkflowDefinition
from wfstate.exceptions import InvalidDefinition, WorkflowNotFound

__all__ = ["Registry", "clear_cache", "get_registry", "resolve_definition"]

_Result = WorkflowDefinition | InvalidDefinition
_cache: dict[Path, tuple[int, int, _Result]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _load_cached(path: Path) -> _Result | None:
    """The definition or the error of ``path``; None if the file vanished."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
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
        _cache[path] = (*key, result)
    return result


class Registry:
    """The workflow definitions found in some directories (``*.yaml`` and ``*.yml``)."""

    def __init__(self, dirs: list[Path]) -> None:
        unique: dict[str, Path] = {}
        for directory in dirs:
            path = Path(directory)
            unique.setdefault(os.path.realpath(path), path)
        self.dirs = list(unique.values())

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            found = [
                p
                for p in directory.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
            ]
            files.extend(sorted(found))
        return files

    def _scan(
        self,
    ) -> tuple[
        dict[str, WorkflowDefinition], list[InvalidDefinition], dict[str, InvalidDefinition]
    ]:
        """Valid definitions by name, all errors, and errors by the name they concern."""
        by_name: dict[str, list[WorkflowDefinition]] = {}
        errors: list[InvalidDefinition] = []
        errors_by_name: dict[str, InvalidDefinition] = {}
        for path in self._files():
            result = _load_cached(path)
            if result is None:
                continue
            if isinstance(result, InvalidDefinition):
                errors.append(result)
                for name in (getattr(result, "workflow_name", None), path.stem):
                    if name:
                        errors_by_name.setdefault(name, result)
                continue
            by_name.setdefault(result.name, []).append(result)
        valid: dict[str, WorkflowDefinition] = {}
        for name, found in by_name.items():
            if len(found) == 1:
                valid[name] = found[0]
                continue
            files = [str(d.path) for d in found]
            entries = [
                {
                    "file": file,
                    "line": 0,
                    "state": None,
                    "message": f"workflow name '{name}' is also defined in "
                    + ", ".join(f for f in files if f != file),
                }
                for file in files
            ]
            error = InvalidDefinition(
                f"workflow name '{name}' is defined more than once: " + ", ".join(files),
                errors=entries,
                warnings=[],
                path=files[0],
                workflow_name=name,
            )
            errors.append(error)
            errors_by_name[name] = error
        return valid, errors, errors_by_name

    def get(self, name: str) -> WorkflowDefinition:
        """The definition called ``name``.

        Raises:
            WorkflowNotFound: no file defines it (the message names the dirs searched).
            InvalidDefinition: the file that defines it is invalid, or two files do.
        """
        valid, _errors, errors_by_name = self._scan()
        if name in errors_by_name:
            raise errors_by_name[name]
        if name in valid:
            return valid[name]
        searched = ", ".join(str(d) for d in self.dirs) or "(no directories)"
        raise WorkflowNotFound(
            f"no workflow named '{name}' (searched: {searched})", name=name, searched=searched
        )

    def all(self) -> list[WorkflowDefinition]:
        """Every valid definition, sorted by name."""
        valid, _errors, _ = self._scan()
        return [valid[name] for name in sorted(valid)]

    def errors(self) -> list[InvalidDefinition]:
        """One error per invalid file, and one per name defined by several files."""
        return self._scan()[1]


def workflow_dirs() -> list[Path]:
    """``WORKFLOW_DIRS`` then each installed app's ``workflows/`` folder (if it exists)."""
    from django.apps import apps

    from wfstate.conf import conf

    dirs = list(conf.WORKFLOW_DIRS)
    for app_config in apps.get_app_configs():
        candidate = Path(app_config.path) / "workflows"
        if candidate.is_dir():
            dirs.append(candidate)
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
