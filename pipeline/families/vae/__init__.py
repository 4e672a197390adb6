"""The vae family's implementation.

Its declaration and configuration are :mod:`pipeline.catalog.vae`.
"""
