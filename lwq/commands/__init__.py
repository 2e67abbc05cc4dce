"""The commands of `python run.py`: each plans its points as plain data, then evaluates them."""

from lwq.commands.compare import run_compare
from lwq.commands.scores import run_scores
from lwq.commands.sweep import run_sweep

COMMANDS = {"sweep": run_sweep, "scores": run_scores, "compare": run_compare}


def run(config) -> object:
    """Run the command `config.command` names (a checked lwq.config.RunConfig)."""
    return COMMANDS[config.command](config)
