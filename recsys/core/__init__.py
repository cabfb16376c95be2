"""The bottom layer: settings, the canonical schema and feature names, the run folder, the
stores (vector store, Feast access, online row reader) and small array primitives.

It imports only third-party code; ``models``, ``pipelines``, ``serving`` and the CLI build on it
(the import-linter contract in ``pyproject.toml`` keeps it so).
"""
