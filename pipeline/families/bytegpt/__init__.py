"""The bytegpt family's implementation.

Its declaration and configuration are :mod:`pipeline.catalog.bytegpt`.
"""
