"""Domains: galaxies and Earth over one run skeleton; a new domain is a module, a reader and a config section."""

from geocnn.config import AnyExperiment
from geocnn.domains.base import Domain
from geocnn.domains.earth import EarthDomain
from geocnn.domains.galaxy import GalaxyDomain

DOMAINS: dict[str, Domain] = {d.name: d for d in (GalaxyDomain(), EarthDomain())}
"""Every domain by its config name (the experiment config's ``domain``)."""


def domain_for(cfg: AnyExperiment) -> Domain:
    """The domain an experiment config belongs to."""
    return DOMAINS[cfg.domain]
