"""Domains: galaxies and Earth over one run skeleton; a new domain is a module, a reader and a config section."""

from typing import Any

from geocnn.config import AnyExperiment
from geocnn.data.store import ChipStore
from geocnn.domains import base
from geocnn.domains.base import Domain
from geocnn.domains.earth import EarthDomain
from geocnn.domains.galaxy import GalaxyDomain

DOMAINS: dict[str, Domain] = {d.name: d for d in (GalaxyDomain(), EarthDomain())}
"""Every domain by its config name (the experiment config's ``domain``)."""


def domain_for(cfg: AnyExperiment) -> Domain:
    """The domain an experiment config belongs to."""
    return DOMAINS[cfg.domain]


def run_experiment(cfg: AnyExperiment, progress: bool = True) -> dict[str, Any]:
    """Run an experiment of any domain without Prefect (see :func:`geocnn.domains.base.run_experiment`)."""
    return base.run_experiment(cfg, domain_for(cfg), progress)


def ingest(cfg: AnyExperiment, progress: bool = True) -> ChipStore:
    """Read an experiment's inputs and build (or reuse) its chip store."""
    domain = domain_for(cfg)
    return domain.ingest(domain.prepare(cfg), progress=progress)
