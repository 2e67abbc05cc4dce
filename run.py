"""Entry point: `python run.py [overrides] [sweep|scores|compare]`.

The bare word picks the command (`python run.py model=llama2-13b metric=ldi sweep`); Hydra
itself only understands `key=value`, so the word is turned into `command=<word>` first.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from lwq.errors import LwqError

COMMANDS = ("sweep", "scores", "compare")


def command_words_to_overrides(argv: list[str]) -> list[str]:
    return [f"command={arg}" if arg in COMMANDS else arg for arg in argv]


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lwq.compare import run_compare, run_scores
    from lwq.sweep import run_sweep

    runners = {"sweep": run_sweep, "scores": run_scores, "compare": run_compare}
    try:
        if cfg.command not in runners:
            raise LwqError(f"unknown command {cfg.command!r}; use one of {', '.join(runners)}")
        runners[cfg.command](cfg)
    except LwqError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *command_words_to_overrides(sys.argv[1:])]
    main()
