"""The SpecGAN family (``arch: specgan``): see :mod:`pipeline.catalog.specgan`."""
