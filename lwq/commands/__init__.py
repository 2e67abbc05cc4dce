"""The commands of `python run.py`: each plans its points as plain data, then evaluates them."""

from lwq.commands.compare import run_compare
from lwq.commands.dry_run import run_dry
from lwq.commands.export import run_export
from lwq.commands.scores import run_scores
from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError

COMMANDS = {"sweep": run_sweep, "scores": run_scores, "compare": run_compare, "export": run_export}


def run(config) -> object:
    """Run the command `config.command` names (a checked lwq.config.RunConfig); with
    `dry_run`, print what a sweep would do instead."""
    if config.dry_run:
        if config.command != "sweep":
            raise LwqError(f"dry_run=true plans a sweep; {config.command} has nothing to plan")
        return run_dry(config)
    return COMMANDS[config.command](config)
