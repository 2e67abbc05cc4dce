"""The run's configuration: Hydra's composed config turned, once, into typed frozen specs.

- `specs`: the dataclasses every command receives (RunConfig and its parts).
- `checks`: every check that needs no model, data or library; bad input is one line.
- `hydra`: composition (the only module importing omegaconf or hydra).
"""

from lwq.config.checks import build_run
from lwq.config.hydra import add_option, compose_config, compose_run, from_hydra, from_plain
from lwq.config.specs import COMMANDS, CONF_DIR, MetricSpec, QuantSpec, RunConfig

__all__ = [
    "COMMANDS",
    "CONF_DIR",
    "MetricSpec",
    "QuantSpec",
    "RunConfig",
    "add_option",
    "build_run",
    "compose_config",
    "compose_run",
    "from_hydra",
    "from_plain",
]
