"""Where stage work runs: in this process, or as Slurm jobs through submitit.

``ExecutorConfig`` is the ``executor`` section of the run config. Resources can be overridden per
stage (tiling wants CPUs, embedding a GPU) under ``stages``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# sbatch options set from the typed fields below; giving them again in ``sbatch_extra`` would be
# ambiguous, so it is an error.
_TYPED_SBATCH_OPTIONS = {
    "partition", "gpus-per-node", "gpus-per-task", "cpus-per-task", "mem", "time", "array",
    "account", "qos", "job-name", "output", "error",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageResources(_Strict):
    """Per-stage overrides of the executor's resources; unset fields keep the executor's values."""

    partition: str | None = None
    gpus_per_task: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int | None = Field(None, ge=1)


class ExecutorConfig(_Strict):
    """How tiling/embedding shards and the later stages are run."""

    kind: Literal["local", "slurm"] = Field(
        "local", description="local: in this process, one shard after another; slurm: Slurm jobs."
    )
    partition: str | None = Field(None, description="Slurm partition; null for the cluster default.")
    account: str | None = Field(None, description="Slurm account (--account), when the site needs one.")
    qos: str | None = Field(None, description="Slurm quality of service (--qos).")
    gpus_per_task: int = Field(0, ge=0, description="GPUs per job (one task per job).")
    cpus_per_task: int = Field(4, ge=1, description="CPU cores per job.")
    mem_gb: float = Field(16.0, gt=0, description="Memory per job in GB.")
    time_min: int = Field(120, ge=1, description="Wall-time limit per job in minutes.")
    array_parallelism: int = Field(
        32, ge=1, description="Array tasks running at once (the %N of --array)."
    )
    slides_per_shard: int = Field(8, ge=1, description="Slides per array task.")
    max_array_size: int = Field(
        1000, ge=1, description="Most tasks in one array (Slurm's MaxArraySize - 1); shards grow to fit."
    )
    log_dir: Path = Field(
        Path("logs/slurm"), description="Job logs and submitit files, relative to the run folder."
    )
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run in each job before the work (module load, source a venv, ...).",
    )
    sbatch_extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Further sbatch options by long name without dashes, e.g. {constraint: a100}.",
    )
    poll_s: float = Field(5.0, gt=0, description="Seconds between checks on running jobs.")
    stages: dict[str, StageResources] = Field(
        default_factory=dict,
        description="Per-stage resource overrides, e.g. {embed: {gpus_per_task: 1}}.",
    )

    @field_validator("sbatch_extra")
    @classmethod
    def _no_typed_options(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        clashes = sorted(k for k in value if k.lstrip("-").replace("_", "-") in _TYPED_SBATCH_OPTIONS)
        if clashes:
            raise ValueError(
                f"sbatch_extra sets {', '.join(clashes)}, which have their own executor keys "
                "(partition, gpus_per_task, cpus_per_task, mem_gb, time_min, account, qos); use those"
            )
        return value

    def for_stage(self, stage: str) -> ExecutorConfig:
        """This config with the overrides of ``stage`` applied."""
        override = self.stages.get(stage)
        if override is None:
            return self
        changes = override.model_dump(exclude_none=True)
        return self.model_copy(update=changes)

    def log_folder(self, run_root: str | Path) -> Path:
        """The absolute folder for job logs (``log_dir`` is relative to the run folder)."""
        return self.log_dir if self.log_dir.is_absolute() else Path(run_root).resolve() / self.log_dir
