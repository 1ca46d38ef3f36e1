"""wfstate: durable, inspectable YAML workflows for Django.

Importable without Django settings: it holds the version only.
"""

__version__ = "0.1.0"
