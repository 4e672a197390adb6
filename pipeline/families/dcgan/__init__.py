"""The dcgan family's implementation.

Its declaration and configuration are :mod:`pipeline.catalog.dcgan`.
"""
