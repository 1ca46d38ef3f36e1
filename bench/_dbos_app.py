"""The DBOS Transact side of bench/steps.py: one workflow calling a no-op step N times.

Imported only once DBOS is installed (``pip install -e ".[bench]"``); the decorators
register the functions with DBOS's global registry before ``DBOS(config=...)`` and
``DBOS.launch()`` are called by the benchmark.
"""

from __future__ import annotations

from dbos import DBOS


@DBOS.step()
def noop_step() -> None:
    return None


@DBOS.workflow()
def noop_workflow(steps: int) -> int:
    for _ in range(steps):
        noop_step()
    return steps


def launch(sqlite_path: str) -> None:
    DBOS(
        config={
            "name": "wfstate-bench",
            "system_database_url": f"sqlite:///{sqlite_path}",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


def destroy() -> None:
    DBOS.destroy()
