"""The catalog of model families, torch-free.

The family interface (:mod:`~pipeline.catalog.base`), the registry (:mod:`~pipeline.catalog.registry`,
with the ``aigc.families`` entry points) and each built-in family's declaration and configuration.
Their implementations live in :mod:`pipeline.families`.
"""
