"""Logging for the command line: the main process logs, the others only warn.

Under `accelerate launch` / `torchrun` every process runs the same command; without this, each of 8
processes would print every line. The rank comes from the launcher's environment (`RANK`, else
`LOCAL_RANK`), so nothing here needs torch.distributed to be initialised yet.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_ENV = "DISTILLKIT_SCD_QUIET"
_NOISY = ("httpx", "urllib3", "filelock", "DeepSpeed", "torch.distributed", "matplotlib")


def process_rank() -> int:
    """Global rank of this process as set by the launcher (0 when not launched)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    return process_rank() == 0


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the root logger: INFO (DEBUG with `verbose`, WARNING with `quiet`) on rank 0, WARNING
    elsewhere. Without a terminal, or with `quiet`, progress bars are switched off (through the
    environment, which the libraries read at import and stage processes inherit)."""
    quiet = quiet or os.environ.get(QUIET_ENV) == "1"
    if quiet:
        os.environ[QUIET_ENV] = "1"  # stage processes started by the pipeline are quiet too
    if quiet or not sys.stderr.isatty():
        from distillkit_scd.utils.progress import switch_off_bars

        switch_off_bars()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,  # a library may have configured logging on import; the command line decides
    )
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
