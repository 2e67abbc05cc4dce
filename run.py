"""Entry point: `python run.py [overrides] [sweep|scores|compare|export]`.

The bare word picks the command (`python run.py model=llama2-13b metric=ldi sweep`); Hydra
itself only understands `key=value`, so the word is turned into `command=<word>` first.
The composed config becomes a checked, typed `RunConfig` (lwq.config) once, here; bad
input stops with one line on stderr and exit code 2 before anything is loaded or written.

Exit codes: 0 done; 2 bad input; 3 stopped by SIGTERM/SIGINT (what was recorded is kept:
run the same command again to resume); 4 some points failed (recorded as failed with the
reason; run the same command again to retry them).
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lwq.config import COMMANDS, compose_run, from_hydra
from lwq.errors import LwqError, PointsFailed

BAD_INPUT = 2
STOPPED = 3
POINTS_FAILED = 4


def command_words_to_overrides(argv: list[str]) -> list[str]:
    return [f"command={arg}" if arg in COMMANDS else arg for arg in argv]


class JobFailed(Exception):
    """One job of a multirun ended with bad input, a stop or failed points."""


def fail(err: Exception, code: int = BAD_INPUT) -> None:
    print(f"error: {err}" if code == BAD_INPUT else str(err), file=sys.stderr)
    sys.exit(code)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lwq.commands import run
    from lwq.commands.stopping import Stopped

    try:
        run(from_hydra(cfg))
    except (LwqError, Stopped, PointsFailed) as err:
        code = {Stopped: STOPPED, PointsFailed: POINTS_FAILED}.get(type(err), BAD_INPUT)
        if code == STOPPED and os.environ.get("SLURM_JOB_ID"):
            # under SLURM a stop is a requeue or a pre-emption: exit without a result, so
            # submitit waits for the requeued job (which resumes) instead of failing this one
            fail(err, code)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one job of several: say why in one line and let Hydra record this job as
            # failed; the other jobs go on, and the multirun reports the failure at its end
            overrides = " ".join(HydraConfig.get().overrides.task)
            print(f"job failed ({overrides}): {err}", file=sys.stderr)
            raise JobFailed(f"{overrides}: {err}") from None
        fail(err, code)


def check_before_hydra(overrides: list[str]) -> None:
    """Compose and check a single run's config, its checkpoint's config.json and its data
    files before Hydra makes its output directory, so bad input is one line (Hydra's own
    errors span several) and writes nothing."""
    if any(arg.startswith("-") for arg in overrides):
        return  # Hydra's own flags (--multirun, --cfg, --help, ...): Hydra handles them
    from lwq.commands.preflight import check_inputs

    try:
        run = compose_run(*overrides)
        if not run.dry_run:  # a dry run reads no data and no checkpoint but its config
            check_inputs(run, evaluate=run.command == "sweep")
        if run.command == "export":
            from lwq.commands.export import check_export

            check_export(run)
    except LwqError as err:
        fail(err)


def dry_run_off_the_cluster(overrides: list[str]) -> list[str]:
    """`-m dry_run=true hydra/launcher=slurm`: print the sbatch settings the jobs would get,
    then run the dry runs here (Hydra's basic launcher), not as cluster jobs."""
    if not {"-m", "--multirun"} & set(overrides) or "hydra/launcher=slurm" not in overrides:
        return overrides
    if not {"dry_run=true", "dry_run=True"} & set(overrides):
        return overrides
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from lwq.commands.dry_run import print_sbatch
    from lwq.config.specs import CONF_DIR

    launcher = [o for o in overrides if o.startswith(("hydra/launcher=", "hydra.launcher."))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=launcher, return_hydra_config=True)
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    node["name"] = os.path.splitext(os.path.basename(sys.argv[0]))[0]  # ${hydra.job.name}
    jobs = 1
    for override in OverridesParser.create().parse_overrides(
        [o for o in overrides if not o.startswith("-") and o not in launcher]
    ):
        if override.is_sweep_override():
            jobs *= len(list(override.sweep_string_iterator()))
    print_sbatch(node, jobs)
    return [o for o in overrides if o not in launcher]


if __name__ == "__main__":
    overrides = command_words_to_overrides(sys.argv[1:])
    check_before_hydra(overrides)
    overrides = dry_run_off_the_cluster(overrides)
    sys.argv = [sys.argv[0], *overrides]
    main()
