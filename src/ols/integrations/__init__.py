"""Adapters for the training frameworks: ``ols.integrations.lightning`` and ``ols.integrations.hf``.

Each imports its framework when it is imported itself, and says what to install when the
framework is missing. The losses carry their own state; an adapter only decides *when*
:meth:`step` runs and where the state is checkpointed.
"""
