"""Model families: the registry (:mod:`pipeline.families.registry`), the interface
(:mod:`pipeline.families.base`) and the built-in families, one package each."""
