"""Scale-out: run tiling and embedding as Slurm array jobs over slide shards, later stages as
single jobs, all through submitit; or everything in this process (``kind: local``)."""

from pathosae.scaleout.config import ExecutorConfig, StageResources
from pathosae.scaleout.executor import run_sharded, run_single, submitit_parameters
from pathosae.scaleout.jobs import JobFailedError, JobOutcome, JobsLog
from pathosae.scaleout.sharding import shard, shard_for_array
from pathosae.scaleout.stages import run_stage_on_executor

__all__ = [
    "ExecutorConfig",
    "JobFailedError",
    "JobOutcome",
    "JobsLog",
    "StageResources",
    "run_sharded",
    "run_single",
    "run_stage_on_executor",
    "shard",
    "shard_for_array",
    "submitit_parameters",
]
