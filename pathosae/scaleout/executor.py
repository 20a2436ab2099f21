"""Run stage work in this process or as Slurm jobs through submitit.

``run_sharded`` runs a function over slide shards: one after another here, or as ONE Slurm array
job (one task per shard). ``run_single`` runs a later stage as one job. Both wait for the jobs;
order between stages comes from that wait. Shards must be idempotent (the stage functions skip
slides whose outputs exist), so a requeued, repeated or resumed shard only redoes missing work.

The function is pickled by submitit (cloudpickle) and must be importable on the compute nodes:
a top-level function, or ``functools.partial`` of one, taking the shard's slide ids.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pathosae.errors import StageError
from pathosae.scaleout.config import ExecutorConfig
from pathosae.scaleout.jobs import JobFailedError, JobOutcome, JobsLog

R = TypeVar("R")
log = logging.getLogger(__name__)

# A job that left the Slurm queue without a result file is declared failed after this long: the
# result may still be on its way through a shared file system.
LOST_JOB_GRACE_S = 15.0
# squeue states after which no result will come (RUNNING, PENDING, REQUEUED... are not here).
_ENDED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}


def run_sharded(
    fn: Callable[[list[str]], R],
    shards: Sequence[Sequence[str]],
    cfg: ExecutorConfig,
    run_root: str | Path,
    name: str,
    *,
    resume_command: str | None = None,
    cluster: str | None = None,
) -> list[R]:
    """Run ``fn(shard)`` for every shard and return the results in shard order.

    ``cfg.kind == "local"``: in this process, one shard after another; errors propagate as raised.
    ``cfg.kind == "slurm"``: one array job; raises :class:`JobFailedError` naming every failed
    shard, its slides, its logs and ``resume_command`` (default ``pathosae run --out RUN``).
    ``cluster`` forces a submitit cluster (``"local"`` runs the submitit path without Slurm).
    """
    shard_lists = [list(s) for s in shards]
    if not shard_lists:
        return []
    if cfg.kind == "local" and cluster is None:
        return [fn(s) for s in shard_lists]
    stage_cfg = cfg.for_stage(name)
    executor, folder = _make_executor(stage_cfg, run_root, name, cluster or "slurm")
    with _explained_submission(name):
        jobs = executor.map_array(fn, shard_lists)
    log.info("stage %s: submitted %d shard(s) as array job %s; logs in %s",
             name, len(jobs), jobs[0].job_id.split("_")[0], folder)
    return _finish(jobs, shard_lists, stage_cfg, run_root, name, folder, resume_command, cluster)


def run_single(
    fn: Callable[..., R],
    cfg: ExecutorConfig,
    run_root: str | Path,
    name: str,
    *args: Any,
    resume_command: str | None = None,
    cluster: str | None = None,
) -> R:
    """Run ``fn(*args)`` here (kind local) or as one Slurm job, wait for it, return its result."""
    if cfg.kind == "local" and cluster is None:
        return fn(*args)
    stage_cfg = cfg.for_stage(name)
    executor, folder = _make_executor(stage_cfg, run_root, name, cluster or "slurm")
    with _explained_submission(name):
        job = executor.submit(fn, *args)
    log.info("stage %s: submitted job %s; logs in %s", name, job.job_id, folder)
    return _finish([job], None, stage_cfg, run_root, name, folder, resume_command, cluster)[0]


# ---- submission ------------------------------------------------------------------------------
def _make_executor(cfg: ExecutorConfig, run_root: str | Path, name: str, cluster: str) -> tuple[Any, Path]:
    import submitit  # imported here so `pathosae --help` and local runs stay light

    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise StageError(
            f"stage '{name}' is set to run on Slurm (executor.kind: slurm) but `sbatch` is not on "
            "PATH. Fix: run `pathosae run` on a Slurm login node, or set executor.kind: local."
        )
    folder = cfg.log_folder(run_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**submitit_parameters(cfg, name))
    return executor, folder


def submitit_parameters(cfg: ExecutorConfig, name: str) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` keywords for ``cfg`` (slurm_* ignored off Slurm)."""
    params: dict[str, Any] = {
        "name": f"pathosae-{name}",
        "timeout_min": cfg.time_min,
        "mem_gb": cfg.mem_gb,
        "cpus_per_task": cfg.cpus_per_task,
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": cfg.array_parallelism,
    }
    if cfg.gpus_per_task:
        params["gpus_per_node"] = cfg.gpus_per_task
    optional = {
        "slurm_partition": cfg.partition,
        "slurm_account": cfg.account,
        "slurm_qos": cfg.qos,
        "slurm_setup": list(cfg.setup) or None,
        # sbatch has no "--flag=False": a false flag means leave it out.
        "slurm_additional_parameters": {k: v for k, v in cfg.sbatch_extra.items() if v is not False}
        or None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


@contextlib.contextmanager
def _explained_submission(name: str) -> Iterator[None]:
    """Turn a refused submission (sbatch's message) into an error that says what to check."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        yield
    except (FailedJobError, FailedSubmissionError, OSError) as exc:
        raise StageError(
            f"Slurm refused the jobs of stage '{name}': {str(exc).strip()}\n"
            "Fix: check the executor section (partition, account, qos, gpus_per_task, cpus_per_task, "
            "mem_gb, time_min, sbatch_extra) against `sinfo` and your site's limits."
        ) from exc


# ---- waiting and collecting ------------------------------------------------------------------
def _finish(
    jobs: list[Any],
    shards: list[list[str]] | None,
    cfg: ExecutorConfig,
    run_root: str | Path,
    name: str,
    folder: Path,
    resume_command: str | None,
    cluster: str | None,
) -> list[Any]:
    record = JobsLog(cfg.log_folder(run_root))
    job_ids = [str(j.job_id) for j in jobs]
    record.submitted(name, job_ids, shards, folder)
    try:
        lost = _wait(jobs, cfg.poll_s, watch_queue=(cluster or "slurm") == "slurm")
    except BaseException:
        # Interrupted (Ctrl-C, kill): cancel our jobs so a resumed run does not race with them.
        for job in jobs:
            job.cancel(check=False)
        record.finished(job_ids, "cancelled")
        raise
    outcomes = [
        _outcome(i, job, shards[i] if shards is not None else None, lost.get(str(job.job_id)))
        for i, job in enumerate(jobs)
    ]
    failed = [o for o in outcomes if not o.ok]
    record.finished(job_ids, "failed" if failed else "done", failed)
    if failed:
        command = resume_command or f"pathosae run --out {Path(run_root).resolve()}"
        raise JobFailedError(name, failed, len(jobs), command)
    return [o.result for o in outcomes]


def _wait(jobs: list[Any], poll_s: float, watch_queue: bool) -> dict[str, str]:
    """Wait until every job is done; return {job_id: state} for jobs that ended without a result.

    submitit learns a job's end from its result file or from ``sacct``; where ``sacct`` has no
    accounting storage, a job killed by Slurm (time limit, memory, scancel) writes no result and
    would be waited on forever, so the queue is watched with ``squeue`` as well.
    """
    pending = list(jobs)
    ended_since: dict[str, float] = {}
    lost: dict[str, str] = {}
    while pending:
        states = _queue_states({str(j.job_id).split("_")[0] for j in pending}) if watch_queue else None
        still = []
        for job in pending:
            if job.done():
                continue
            job_id = str(job.job_id)
            state = states.get(job_id, "LEFT_QUEUE") if states is not None else "RUNNING"
            if state in _ENDED_STATES or state == "LEFT_QUEUE":
                first = ended_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - first > LOST_JOB_GRACE_S and not job.done():
                    lost[job_id] = state
                    continue
            still.append(job)
        pending = still
        if pending:
            time.sleep(poll_s)
    return lost


def _queue_states(array_ids: set[str]) -> dict[str, str] | None:
    """{job_id: state} from ``squeue`` (array tasks as ``ID_INDEX``), or None when it cannot tell."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
               "--jobs", ",".join(sorted(array_ids))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue fails for ids it no longer knows; ask again without them next time round.
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.strip().upper()
    return states


def _outcome(index: int, job: Any, slides: list[str] | None, lost_state: str | None) -> JobOutcome:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    paths = {"stdout": job.paths.stdout, "stderr": job.paths.stderr}
    job_id = str(job.job_id)
    if lost_state is not None:
        error = (f"the job ended without a result (Slurm state {lost_state}): killed, out of memory "
                 "or out of time? See its logs")
        return JobOutcome(index, job_id, slides, ok=False, error=error, **paths)
    try:
        result = job.result()
    except (FailedJobError, UncompletedJobError) as exc:
        return JobOutcome(index, job_id, slides, ok=False, error=_error_summary(str(exc)), **paths)
    return JobOutcome(index, job_id, slides, ok=True, result=result, **paths)


def _error_summary(message: str) -> str:
    """The exception line of a submitit failure (the trace sits between two dashed lines)."""
    parts = [p for p in message.split("----------------------") if p.strip()]
    trace = parts[1] if len(parts) >= 3 else message
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    if len(parts) >= 3 and lines:
        return lines[-1]
    return " ".join(lines[:2])[:500]
