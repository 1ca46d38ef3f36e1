"""Prometheus metrics of wfstate, computed from the index at scrape time.

Executors are separate processes from the web server that answers ``/metrics``, so a
counter incremented in an executor would never be seen there (and prometheus-client's
multiprocess mode needs a shared directory, cleanup at every deploy and no ``Gauge``
semantics across hosts). wfstate's index already holds every run's status, timestamps
and duration, kept by every executor on every host: :class:`WFStateCollector` turns it
into metrics when Prometheus scrapes, so the numbers are right across processes and
hosts by construction. See docs/metrics.md for the metric names and the trade-offs.

Import ``wfstate.metrics.collector`` only where ``prometheus-client`` is installed
(``pip install wfstate[metrics]``).
"""
