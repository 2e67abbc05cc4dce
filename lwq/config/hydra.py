"""Hydra at the boundary: compose `python run.py <overrides>`, turn the composed config into
plain data, and hand it to lwq.config.checks. The only lwq module that imports omegaconf
or hydra (ruff's banned-api rule enforces it)."""

from __future__ import annotations

import difflib
import re

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lwq.config.checks import build_run
from lwq.config.specs import CONF_DIR, RunConfig
from lwq.errors import LwqError


def compose_run(*overrides: str) -> RunConfig:
    """The checked RunConfig of `python run.py <overrides>` (tests, bench, run.py's check)."""
    return from_hydra(compose_config(*overrides))


def add_option(group: str, name: str, node: dict) -> None:
    """Make `group=name` composable without a file under conf/: a backend or metric defined
    outside lwq (a plugin, a test) registers its config node this way."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name=name, node=node)


def compose_config(*overrides: str) -> DictConfig:
    """The composed Hydra config; composition errors become one-line LwqErrors."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise LwqError(hydra_message(err)) from err


def hydra_message(err: Exception) -> str:
    """Hydra's several-line composition error as one line naming the fix."""
    text = str(err).strip()
    missing = re.search(r"Could not find '([\w-]+)/([^']*)'", text)
    if missing:
        group, option = missing.groups()
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        close = difflib.get_close_matches(option, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {group} {option!r}{hint}; known: {', '.join(known)} (conf/{group}/)"
    struct = re.search(r"Could not override '([^']+)'", text)
    if struct:
        return (
            f"unknown config key {struct.group(1)!r}; the keys are in conf/config.yaml and conf/*/"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def from_hydra(cfg: DictConfig) -> RunConfig:
    """Check and type the composed config. Raises LwqError (one line) on bad input."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise LwqError(f"config does not resolve: {str(err).splitlines()[0]}") from err
    return from_plain(plain)


def from_plain(plain: dict) -> RunConfig:
    """Check and type a resolved config given as plain data (a record's `config`)."""

    def metric_defaults(name: str) -> dict:
        root = dict(plain)
        root["metric"] = OmegaConf.to_container(
            OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml")
        )
        return OmegaConf.to_container(OmegaConf.create(root).metric, resolve=True)

    return build_run(plain, metric_defaults)
