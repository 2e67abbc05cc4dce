"""Entry point: `python run.py [overrides] [sweep|scores|compare]`.

The bare word picks the command (`python run.py model=llama2-13b metric=ldi sweep`); Hydra
itself only understands `key=value`, so the word is turned into `command=<word>` first.
The composed config becomes a checked, typed `RunConfig` (lwq.config) once, here; bad
input stops with one line on stderr and exit code 2 before anything is loaded or written.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from lwq.config import COMMANDS, compose_run, from_hydra
from lwq.errors import LwqError

BAD_INPUT = 2


def command_words_to_overrides(argv: list[str]) -> list[str]:
    return [f"command={arg}" if arg in COMMANDS else arg for arg in argv]


def fail(err: LwqError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(BAD_INPUT)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lwq.commands import run

    try:
        run(from_hydra(cfg))
    except LwqError as err:
        fail(err)


def check_before_hydra(overrides: list[str]) -> None:
    """Compose and check a single run's config, its checkpoint's config.json and its data
    files before Hydra makes its output directory, so bad input is one line (Hydra's own
    errors span several) and writes nothing."""
    if any(arg.startswith("-") for arg in overrides):
        return  # Hydra's own flags (--multirun, --cfg, --help, ...): Hydra handles them
    from lwq.commands.context import check_inputs

    try:
        run = compose_run(*overrides)
        check_inputs(run, evaluate=run.command == "sweep")
    except LwqError as err:
        fail(err)


if __name__ == "__main__":
    overrides = command_words_to_overrides(sys.argv[1:])
    check_before_hydra(overrides)
    sys.argv = [sys.argv[0], *overrides]
    main()
