"""Scale-out: shards, the in-process and submitit-local executors, and a real one-node Slurm.

The Slurm tests start munged, slurmctld and slurmd (tests/slurm_cluster.py) and submit real array
jobs with sbatch through submitit; they skip, saying why, where that cannot be done.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pandas as pd
import pytest
from pydantic import ValidationError

from pathosae.errors import PathosaeError, StageError
from pathosae.io import atomic_path, read_json
from pathosae.run import RunDir
from pathosae.scaleout import (
    ExecutorConfig,
    JobFailedError,
    run_sharded,
    run_single,
    run_stage_on_executor,
    shard,
    shard_for_array,
    submitit_parameters,
)
from pathosae.scaleout import executor as executor_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)

# Jobs unpickle these functions in another process, where this test module is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLIDES = [f"slide-{i:02d}" for i in range(7)]


# ---- the shard work used by every executor test ----------------------------------------------
def write_slide_outputs(out_dir: str, slide_ids: list[str]) -> dict[str, object]:
    """One file per slide, written atomically; finished slides are skipped (idempotent shards).

    A slide named in ``<out_dir>/../broken/<slide>`` raises (a fixable error); one named in
    ``<out_dir>/../killed/<slide>`` kills the process (no result, as after an out-of-memory kill).
    """
    out = Path(out_dir)
    written, skipped = [], []
    for slide_id in slide_ids:
        target = out / f"{slide_id}.txt"
        if target.exists():
            skipped.append(slide_id)
            continue
        if (out.parent / "broken" / slide_id).exists():
            raise ValueError(f"slide {slide_id!r} cannot be read")
        if (out.parent / "killed" / slide_id).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        digest = hashlib.sha256(slide_id.encode()).hexdigest()
        with atomic_path(target) as tmp:
            tmp.write_text(f"{slide_id} {digest}\n", encoding="utf-8")
        written.append(slide_id)
    return {
        "written": written,
        "skipped": skipped,
        "pid": os.getpid(),
        "array_job": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "setup": os.environ.get("PATHOSAE_SETUP_RAN"),
    }


def add(a: int, b: int) -> int:
    return a + b


def toy_stage(run: RunDir, cfg: object, on_error: str, slide_ids: list[str] | None = None) -> dict:
    """A per-slide stage in the pipeline's shape: all cohort slides, or only ``slide_ids``."""
    if slide_ids is None:
        slide_ids = list(pd.read_parquet(run.cohort_path)["slide_id"])
    result = write_slide_outputs(str(run.root / "out"), slide_ids)
    return {"n_written": len(result["written"]), "on_error": on_error}


def make_run(root: Path) -> RunDir:
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"slide_id": SLIDES, "path": [f"/slides/{s}.svs" for s in SLIDES]}).to_parquet(
        run.cohort_path, index=False
    )
    return run


def mark(root: Path, kind: str, slide_id: str) -> Path:
    path = root / kind / slide_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def outputs(out_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out_dir.glob("*.txt"))}


def local_reference(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "reference" / "out"
    run_sharded(functools.partial(write_slide_outputs, str(out)), shard(SLIDES, 3),
                ExecutorConfig(), tmp_path / "reference", "ref")
    return outputs(out)


# ---- shards and config -----------------------------------------------------------------------
def test_shard_keeps_order_and_covers_every_slide_once():
    shards = shard(SLIDES, 3)
    assert shards == [SLIDES[0:3], SLIDES[3:6], SLIDES[6:7]]
    assert shard(SLIDES, 3) == shards  # deterministic
    assert shard(SLIDES, 100) == [SLIDES]
    assert shard([], 4) == []
    assert [s for part in shard(SLIDES, 2) for s in part] == SLIDES


def test_shard_rejects_bad_input():
    with pytest.raises(PathosaeError, match="slides_per_shard"):
        shard(SLIDES, 0)
    with pytest.raises(PathosaeError, match="slide-01"):
        shard([*SLIDES, "slide-01"], 2)


def test_shard_for_array_grows_shards_to_fit_the_array_limit():
    ids = [f"s{i}" for i in range(25)]
    assert len(shard_for_array(ids, 2, max_array_size=100)) == 13
    grown = shard_for_array(ids, 2, max_array_size=5)
    assert len(grown) == 5 and [s for part in grown for s in part] == ids


def test_executor_config_is_strict_and_applies_stage_overrides(tmp_path):
    with pytest.raises(ValidationError, match="partiton"):
        ExecutorConfig(partiton="gpu")
    with pytest.raises(ValidationError, match="partition"):
        ExecutorConfig(sbatch_extra={"partition": "gpu"})
    cfg = ExecutorConfig(kind="slurm", partition="cpu", stages={"embed": {"gpus_per_task": 1,
                                                                           "partition": "gpu"}})
    embed = cfg.for_stage("embed")
    assert (embed.partition, embed.gpus_per_task, embed.cpus_per_task) == ("gpu", 1, cfg.cpus_per_task)
    assert cfg.for_stage("tile") is cfg
    assert cfg.log_folder(tmp_path) == tmp_path.resolve() / "logs" / "slurm"
    assert ExecutorConfig(log_dir=tmp_path / "x").log_folder("/elsewhere") == tmp_path / "x"


def test_submitit_parameters_map_every_resource():
    cfg = ExecutorConfig(kind="slurm", partition="gpu", account="lab", qos="high", gpus_per_task=2,
                         cpus_per_task=8, mem_gb=64, time_min=90, array_parallelism=5,
                         setup=["module load cuda"], sbatch_extra={"constraint": "a100", "exclusive": False})
    params = submitit_parameters(cfg, "embed")
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "lab"
    assert params["slurm_qos"] == "high" and params["gpus_per_node"] == 2
    assert (params["cpus_per_task"], params["mem_gb"], params["timeout_min"]) == (8, 64, 90)
    assert params["slurm_array_parallelism"] == 5 and params["slurm_setup"] == ["module load cuda"]
    assert params["slurm_additional_parameters"] == {"constraint": "a100"}
    assert "gpus_per_node" not in submitit_parameters(ExecutorConfig(), "tile")


# ---- in-process and submitit-local executors -------------------------------------------------
def test_local_kind_runs_shards_in_process_in_order(tmp_path):
    out = tmp_path / "out"
    results = run_sharded(functools.partial(write_slide_outputs, str(out)), shard(SLIDES, 3),
                          ExecutorConfig(), tmp_path, "tile")
    assert [r["written"] for r in results] == shard(SLIDES, 3)
    assert {r["pid"] for r in results} == {os.getpid()}
    assert len(outputs(out)) == len(SLIDES)
    assert not (tmp_path / "logs").exists()  # nothing submitted, nothing logged
    assert run_single(add, ExecutorConfig(), tmp_path, "sae", 2, 3) == 5


def test_local_kind_lets_errors_propagate(tmp_path):
    mark(tmp_path, "broken", "slide-04")
    with pytest.raises(ValueError, match="slide-04"):
        run_sharded(functools.partial(write_slide_outputs, str(tmp_path / "out")), shard(SLIDES, 3),
                    ExecutorConfig(), tmp_path, "tile")


@pytest.mark.slow
def test_submitit_local_executor_pickles_and_matches_in_process(tmp_path):
    cfg = ExecutorConfig(poll_s=0.2, cpus_per_task=1, mem_gb=1)
    out = tmp_path / "run" / "out"
    results = run_sharded(functools.partial(write_slide_outputs, str(out)), shard(SLIDES, 3),
                          cfg, tmp_path / "run", "tile", cluster="local")
    assert [r["written"] for r in results] == shard(SLIDES, 3)
    assert os.getpid() not in {r["pid"] for r in results}  # ran in job processes
    assert outputs(out) == local_reference(tmp_path)
    jobs = read_json(tmp_path / "run" / "logs" / "slurm" / "jobs.json")["submissions"]
    assert [(j["stage"], j["status"], len(j["job_ids"])) for j in jobs] == [("tile", "done", 3)]
    assert run_single(add, cfg, tmp_path / "run", "sae", 2, 3, cluster="local") == 5


@pytest.mark.slow
def test_submitit_local_failure_names_shard_slides_logs_and_resume(tmp_path):
    cfg = ExecutorConfig(poll_s=0.2, cpus_per_task=1, mem_gb=1)
    run_root = tmp_path / "run"
    mark(run_root, "broken", "slide-04")
    with pytest.raises(JobFailedError) as info:
        run_sharded(functools.partial(write_slide_outputs, str(run_root / "out")), shard(SLIDES, 3),
                    cfg, run_root, "tile", cluster="local")
    err = info.value
    assert isinstance(err, StageError)
    assert [(f.index, f.slides) for f in err.failures] == [(1, ["slide-03", "slide-04", "slide-05"])]
    text = str(err)
    assert "shard 1" in text and "slide-03, slide-04, slide-05" in text
    assert "ValueError: slide 'slide-04' cannot be read" in text
    assert f"pathosae run --out {run_root.resolve()}" in text
    assert err.failures[0].stderr.is_file() and str(err.failures[0].stderr) in text
    assert "slide-04" in err.failures[0].stderr.read_text()
    jobs = read_json(run_root / "logs" / "slurm" / "jobs.json")["submissions"]
    assert jobs[-1]["status"] == "failed" and jobs[-1]["failed"][0]["slides"] == err.failures[0].slides


@pytest.mark.slow
def test_stage_adapter_runs_a_per_slide_stage_in_shards(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    local = run_stage_on_executor(toy_stage, "tile", run, SimpleNamespace(executor=ExecutorConfig()),
                                  "skip", per_slide=True)
    assert local == {"n_written": len(SLIDES), "on_error": "skip"}
    (run.root / "out" / "slide-05.txt").unlink()
    cfg = SimpleNamespace(executor=ExecutorConfig(kind="slurm", slides_per_shard=3, poll_s=0.2))
    # kind slurm with submitit's local cluster in place of sbatch.
    original = executor_module._make_executor
    monkeypatch.setattr(executor_module, "_make_executor",
                        lambda c, r, n, _cluster: original(c, r, n, "local"))
    sharded = run_stage_on_executor(toy_stage, "tile", run, cfg, "stop", per_slide=True)
    single = run_stage_on_executor(toy_stage, "sae", run, cfg, "stop", per_slide=False)
    assert (sharded["slides"], sharded["shards"]) == (len(SLIDES), 3)
    assert [s["n_written"] for s in sharded["per_shard"]] == [0, 1, 0]
    assert single == {"n_written": 0, "on_error": "stop"}
    assert len(outputs(run.root / "out")) == len(SLIDES)


# ---- a real one-node Slurm cluster -----------------------------------------------------------
def slurm_config(**changes: object) -> ExecutorConfig:
    base = {"kind": "slurm", "partition": "debug", "cpus_per_task": 1, "mem_gb": 1, "time_min": 5,
            "array_parallelism": 2, "poll_s": 0.5}
    return ExecutorConfig(**{**base, **changes})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_array_outputs_equal_a_local_run(slurm_cluster, tmp_path):  # noqa: F811
    run_root = tmp_path / "run"
    out = run_root / "out"
    cfg = slurm_config(setup=["export PATHOSAE_SETUP_RAN=yes"])
    results = run_sharded(functools.partial(write_slide_outputs, str(out)), shard(SLIDES, 3),
                          cfg, run_root, "tile")
    assert outputs(out) == local_reference(tmp_path)
    assert {r["setup"] for r in results} == {"yes"}  # the setup lines ran in every job
    # One array job, one task per shard, in shard order.
    assert len({r["array_job"] for r in results}) == 1 and None not in {r["array_job"] for r in results}
    assert [r["array_task"] for r in results] == ["0", "1", "2"]
    assert [r["written"] for r in results] == shard(SLIDES, 3)
    jobs = read_json(run_root / "logs" / "slurm" / "jobs.json")["submissions"]
    assert jobs[0]["array_job_id"] == results[0]["array_job"] and jobs[0]["status"] == "done"
    script = (run_root / "logs" / "slurm" / "tile" / f"{results[0]['array_job']}_submission.sh").read_text()
    assert "--array=0-2%2" in script and "--partition=debug" in script
    # A later stage as a single job.
    assert run_single(add, slurm_config(), run_root, "sae", 2, 3) == 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_failed_shard_is_reported_and_a_resume_redoes_only_missing_work(
    slurm_cluster, tmp_path  # noqa: F811
):
    run_root = tmp_path / "run"
    out = run_root / "out"
    fn = functools.partial(write_slide_outputs, str(out))
    broken = mark(run_root, "broken", "slide-04")
    with pytest.raises(JobFailedError) as info:
        run_sharded(fn, shard(SLIDES, 3), slurm_config(), run_root, "tile")
    (failure,) = info.value.failures
    assert (failure.index, failure.slides) == (1, ["slide-03", "slide-04", "slide-05"])
    text = str(info.value)
    assert "slide-03, slide-04, slide-05" in text and "cannot be read" in text
    assert f"{failure.job_id.split('_')[0]}_1_0_log.err" in text and failure.stderr.is_file()
    assert "pathosae run --out" in text
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.txt")}
    assert set(before) == {f"{s}.txt" for s in SLIDES} - {"slide-04.txt", "slide-05.txt"}

    broken.unlink()  # the fix
    results = run_sharded(fn, shard(SLIDES, 3), slurm_config(), run_root, "tile")
    assert sorted(s for r in results for s in r["written"]) == ["slide-04", "slide-05"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.txt") if p.name in before} == before
    assert outputs(out) == local_reference(tmp_path)
    statuses = [j["status"] for j in read_json(run_root / "logs" / "slurm" / "jobs.json")["submissions"]]
    assert statuses == ["failed", "done"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_runs_a_pipeline_stage_as_array_and_single_job(slurm_cluster, tmp_path):  # noqa: F811
    run = make_run(tmp_path / "run")
    cfg = SimpleNamespace(executor=slurm_config(slides_per_shard=4))
    sharded = run_stage_on_executor(toy_stage, "tile", run, cfg, "stop", per_slide=True)
    assert [s["n_written"] for s in sharded["per_shard"]] == [4, 3]
    assert run_stage_on_executor(toy_stage, "sae", run, cfg, "stop", per_slide=False)["n_written"] == 0
    assert outputs(run.root / "out") == local_reference(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_refused_submission_says_what_to_check(slurm_cluster, tmp_path):  # noqa: F811
    with pytest.raises(StageError, match=r"(?s)invalid partition.*Fix: check the executor section"):
        run_sharded(functools.partial(write_slide_outputs, str(tmp_path / "out")), shard(SLIDES, 3),
                    slurm_config(partition="no-such-partition"), tmp_path, "tile")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_job_killed_without_result_is_reported_not_waited_on(
    slurm_cluster, tmp_path, monkeypatch  # noqa: F811
):
    monkeypatch.setattr(executor_module, "LOST_JOB_GRACE_S", 2.0)
    run_root = tmp_path / "run"
    mark(run_root, "killed", "slide-00")
    with pytest.raises(JobFailedError) as info:
        run_sharded(functools.partial(write_slide_outputs, str(run_root / "out")), shard(SLIDES[:4], 2),
                    slurm_config(), run_root, "embed")
    (failure,) = info.value.failures
    assert failure.slides == ["slide-00", "slide-01"]
    assert "without a result" in failure.error
    assert (run_root / "out" / "slide-02.txt").exists() and (run_root / "out" / "slide-03.txt").exists()
