"""The foundation every stage stands on: the error hierarchy (``errors``), registries (``registry``) and
typed configs loaded from YAML with dotted overrides (``config``).

Torch-free; imports nothing of the project but ``store.errors``.
"""
