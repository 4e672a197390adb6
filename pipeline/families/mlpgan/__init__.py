"""The mlpgan family's implementation.

Its declaration and configuration are :mod:`pipeline.catalog.mlpgan`.
"""
