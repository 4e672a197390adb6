"""The family registry: ``train.model.arch`` → :class:`~pipeline.catalog.base.Family`.

Built-in families are listed here; every other family comes from the ``aigc.families`` entry point
group of an installed distribution (each entry point names a ``Family`` object). Loading the
registry imports only declarations and configuration classes: no torch, no Ray.

    >>> from pipeline.catalog.registry import family
    >>> family("dcgan").config.__name__
    'DCGANConfig'
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pipeline.catalog.base import Family, ModelConfig
from pipeline.catalog.bytegpt import FAMILY as BYTEGPT
from pipeline.catalog.dcgan import FAMILY as DCGAN
from pipeline.catalog.mlpgan import FAMILY as MLPGAN
from pipeline.catalog.specgan import FAMILY as SPECGAN
from pipeline.catalog.vae import FAMILY as VAE

ENTRY_POINT_GROUP = "aigc.families"
DEFAULT_ARCH = "dcgan"  # what a train.model section without `arch` is (every spec before families)

_FAMILIES: dict[str, Family] = {}
_BROKEN: dict[str, str] = {}  # entry point name → why it could not be loaded


def register(fam: Family) -> Family:
    """Add a family (built-ins and entry points call this; a spec validated afterwards may use it)."""
    if not isinstance(fam, Family):
        raise TypeError(f"{fam!r} is not a pipeline.catalog.base.Family")
    arch_field = fam.config.model_fields.get("arch")
    if arch_field is None:
        raise TypeError(f"{fam.config.__name__} has no `arch` field")
    if fam.arch in _FAMILIES and _FAMILIES[fam.arch] is not fam:
        raise ValueError(f"architecture '{fam.arch}' is registered twice")
    _FAMILIES[fam.arch] = fam
    return fam


def _load_entry_points() -> None:
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # noqa: BLE001 - a broken distribution's metadata must not break every spec
        _BROKEN["<entry points>"] = f"{type(exc).__name__}: {exc}"
        return
    for ep in eps:
        if ep.name in _FAMILIES:
            continue
        try:
            register(ep.load())
        except Exception as exc:  # noqa: BLE001 - one broken plugin: its arch is unknown, the rest work
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            _BROKEN[ep.name] = f"{ep.value}: {type(exc).__name__}: {first}"


for _builtin in (DCGAN, MLPGAN, VAE, BYTEGPT, SPECGAN):
    register(_builtin)
_load_entry_points()


def families() -> dict[str, Family]:
    """Every registered family by arch, built-ins first."""
    return dict(_FAMILIES)


def family(arch: str) -> Family:
    """The family of ``arch``; ValueError naming the known ones (and a plugin that failed to load)."""
    try:
        return _FAMILIES[arch]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        broken = f"; entry point {arch} failed to load: {_BROKEN[arch]}" if arch in _BROKEN else ""
        raise ValueError(f"unknown architecture '{arch}' (registered: {known}){broken}") from None


def family_of(config: ModelConfig) -> Family:
    """The family a model configuration belongs to."""
    return family(str(getattr(config, "arch", DEFAULT_ARCH)))


def implementation(config: ModelConfig) -> Any:
    """The implementation of a configuration's family (imports it, and so maybe torch)."""
    return family_of(config).implementation()


def arch_of(value: Any) -> str:
    """The arch a ``train.model`` section names (``dcgan`` when it names none, as older specs do)."""
    arch = value.get("arch", DEFAULT_ARCH) if isinstance(value, dict) else getattr(value, "arch", DEFAULT_ARCH)
    return arch if isinstance(arch, str) else repr(arch)


def parse_config(data: Any) -> ModelConfig:
    """A ``train.model`` section (e.g. from a package's model.json) as its family's configuration."""
    return family(arch_of(data)).config.model_validate(data)
