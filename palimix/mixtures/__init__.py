"""Mixtures of palimix tasks: rates by example count, explicit, language temperature
(p ~ n^(1/T)) or UniMax, mixtures of mixtures, and mixtures defined in gin files.

    from palimix import mixtures
    mixtures.add_mixture("my_mix", ["coco_captions", "vqav2"], temperature=3.0)
    mixtures.add_mixture("balanced", ["xm3600"], unimax={"budget": 1e6, "max_epochs": 4})

See `rates` (the arithmetic), `mixture` (registration) and `gin_config` (gin).
"""

from palimix.mixtures.gin_config import gin_mixture, load_gin_mixture
from palimix.mixtures.mixture import (
    PalimixMixture,
    add_mixture,
    check_new_name,
    effective_rates,
    get_provider,
    num_examples,
)
from palimix.mixtures.rates import UniMax, temperature_rates

__all__ = [
    "PalimixMixture",
    "UniMax",
    "add_mixture",
    "check_new_name",
    "effective_rates",
    "get_provider",
    "gin_mixture",
    "load_gin_mixture",
    "num_examples",
    "temperature_rates",
]
