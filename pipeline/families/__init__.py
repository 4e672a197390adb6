"""The model families' implementations, one package each (network, loop, sampler, evaluation).

Their torch-free declarations and configurations are in :mod:`pipeline.catalog`.
"""
