"""Process ranks of a data-parallel run, read from the launcher's environment before any Trainer exists.

torchrun sets RANK/WORLD_SIZE; a SLURM job step (srun) sets SLURM_PROCID/SLURM_NTASKS; Lightning's own launcher
re-runs the command with LOCAL_RANK/NODE_RANK/WORLD_SIZE. Only global rank 0 writes outputs, state files and
tracking; the other ranks run the same fits (their collectives need them) and return quietly.
"""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import SLURMEnvironment


def world_size() -> int:
    """Processes in the run (1 when no distributed launcher set the environment)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def global_rank() -> int:
    """This process's global rank (0 outside a distributed launch, and in the process that launches the others)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ:  # Lightning's launcher (processes per node unknown here: 0 exactly on rank 0)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        return int(os.environ.get("NODE_RANK", "0")) * per_node + int(os.environ["LOCAL_RANK"])
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def is_global_zero() -> bool:
    """Whether this process writes outputs, state files, the MLflow run and the registry version."""
    return global_rank() == 0


def distributed_launch() -> bool:
    """Whether this process was started by a launcher as one of several (torchrun, srun, Lightning's children)."""
    return world_size() > 1
