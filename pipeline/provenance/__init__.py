"""Provenance of generated assets: the XMP packet (:mod:`~pipeline.provenance.xmp`), C2PA content
credentials (:mod:`~pipeline.provenance.c2pa`), the invisible watermark
(:mod:`~pipeline.provenance.watermark`) and what a run's actors are told (:mod:`~pipeline.provenance.options`).

This package sits with the rules (it imports only :mod:`pipeline.errors`, :mod:`pipeline.encode`
and :mod:`pipeline.checks`), so the image sampler and ``aigc verify`` can both use it. The ``c2pa``
and ``imwatermark`` libraries are imported inside the functions that use them, never on import.
How to read what it writes: ``docs/provenance.md``.
"""
