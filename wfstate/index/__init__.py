"""The index: projecting state files into ``WorkflowRun`` rows (docs/admin.md).

A row is a projection of its file and nothing more: any row can be deleted and rebuilt
by :func:`sync`, and when a row and its file disagree the file wins. Nothing here ever
raises into a run: the engine calls the listener of :func:`make_listener` after every
checkpoint, and an index failure is logged (logger ``wfstate.index``) and repaired later
by ``sync_workflow_index``.

Three ways in:

* :func:`index_state` upserts one run's row, unless the row already holds a newer
  revision (two writers racing must not move a row backwards);
* :func:`make_listener` returns the engine's per-checkpoint hook: a status change is
  written at once, other checkpoints are coalesced, and a row is never more than about
  half a second behind its file (a small flusher thread owns the database writes);
* :func:`sync` rebuilds rows from the files in bulk, flags corrupt files, and can prune
  rows whose file is gone. :func:`inspect` is the same walk without writing, for
  ``doctor``.

The modules, one concern each: ``projection`` (the columns of a row, from a document),
``rows`` (single-row writes), ``listener`` (the engine's coalescing hook), ``bulk``
(``sync`` and ``inspect``) with ``_table`` (its per-database SQL) and ``reader`` (its
fast file reader and forked worker) and ``search`` (prefix search). Moving a corrupt
file aside is the store's (``StateStore.quarantine``). No module is named as a function
here, so importing one never hides the function of that name.

``sync``, ``inspect`` and ``SyncReport`` are imported on first use:
importing the projection (as the API's serializers do) never imports
``multiprocessing`` nor the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wfstate.index.listener import IndexListener, make_listener
from wfstate.index.projection import (
    ERROR_SUMMARY_CHARS,
    ROW_FIELDS,
    StepCounter,
    corrupt_fields,
    definition_step_count,
    error_summary,
    project,
    row_fields,
)
from wfstate.index.rows import index_corrupt, index_state, reindex, remove
from wfstate.index.search import SEARCH_KEYS_LIMIT, prefix_range, search_q, search_runs
from wfstate.state import REVISION_MAX

if TYPE_CHECKING:
    from wfstate.index.bulk import Progress, SyncReport, inspect, sync

__all__ = [
    "ERROR_SUMMARY_CHARS",
    "REVISION_MAX",
    "ROW_FIELDS",
    "SEARCH_KEYS_LIMIT",
    "IndexListener",
    "Progress",
    "StepCounter",
    "SyncReport",
    "corrupt_fields",
    "definition_step_count",
    "error_summary",
    "index_corrupt",
    "index_state",
    "inspect",
    "make_listener",
    "prefix_range",
    "project",
    "reindex",
    "remove",
    "row_fields",
    "search_q",
    "search_runs",
    "sync",
]

# Names whose module is imported when first asked for (see the module's docstring).
_LAZY = {
    "Progress": "wfstate.index.bulk",
    "SyncReport": "wfstate.index.bulk",
    "inspect": "wfstate.index.bulk",
    "sync": "wfstate.index.bulk",
}


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
