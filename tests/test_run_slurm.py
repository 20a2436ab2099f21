"""`pathosae run --executor slurm` end to end on a real one-node Slurm cluster (tests/slurm_cluster.py):
tiling and embedding as array jobs over shards of two slides, outputs equal to a local run's, logs
under RUN/logs/slurm, and a slide that fails on a compute node skipped under ``--on-error skip``.

Where no cluster can be started (not root, Slurm packages missing) the tests skip and say why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pathosae.io import read_json
from pathosae.run import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import (
    ENCODER,
    assert_same_arrays,
    assert_same_run_outputs,
    h5_files,
    make_cohort,
    run_cli,
    stage_entry,
    write_config,
)
from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)

N_SLIDES = 5
SHARD = 2
SLURM_EXECUTOR = {"slides_per_shard": SHARD, "cpus_per_task": 1, "mem_gb": 1, "poll_s": 1,
                  "time_min": 10, "array_parallelism": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_slides=N_SLIDES, px=(900, 1100))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, cohort: Path) -> RunDir:
    """The same cohort and settings through the local executor, with the real CLI."""
    folder = tmp_path_factory.mktemp("local")
    config = write_config(folder / "local.yaml", executor=SLURM_EXECUTOR)
    done = run_cli("run", "--manifest", cohort, "--out", folder / "run", "--config", config,
                   "--until", "embed", "--executor", "local")
    assert done.returncode == 0, done.stderr[-3000:]
    return RunDir(folder / "run")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurm_run_equals_a_local_run_and_logs_under_the_run(
    slurm_cluster, tmp_path, cohort, local_run  # noqa: F811
):
    config = write_config(tmp_path / "slurm.yaml", executor={**SLURM_EXECUTOR, "kind": "slurm"})
    root = tmp_path / "run"
    done = run_cli("run", "--manifest", cohort, "--out", root, "--config", config, "--until", "embed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = RunDir(root)

    # Tile and embed ran as one array job each, one task per shard of two slides.
    n_shards = -(-N_SLIDES // SHARD)
    for stage in ("tile", "embed"):
        summary = stage_entry(run, stage)["summary"]
        assert (summary["executor"], summary["slides"], summary["shards"]) == ("slurm", N_SLIDES, n_shards)
    assert [s["embedded"] for s in stage_entry(run, "embed")["summary"]["per_shard"]] == [2, 2, 1]
    jobs = read_json(root / "logs" / "slurm" / "jobs.json")["submissions"]
    assert [(j["stage"], j["status"], len(j["job_ids"])) for j in jobs] == [
        ("tile", "done", n_shards), ("embed", "done", n_shards)]
    for job in jobs:
        array_id = job["array_job_id"]
        folder = root / "logs" / "slurm" / job["stage"]
        assert Path(job["folder"]) == folder
        assert {p.name for p in folder.glob(f"{array_id}_*_log.out")} == {
            f"{array_id}_{i}_0_log.out" for i in range(n_shards)}
        script = (folder / f"{array_id}_submission.sh").read_text()
        # The jobs run this venv's python, so they import the same pathosae.
        # (python or python3 of the venv, whichever the console script's shebang names)
        assert f"{Path(sys.executable).parent}/python" in script
        assert "-u -m submitit.core._submit" in script
        assert "--cpus-per-task=1" in script and "--mem=1GB" in script
        assert f"--array=0-{n_shards - 1}%2" in script

    # Same slides, same numbers: coordinates exactly, features bit for bit (same machine, same code).
    assert_same_run_outputs(run, local_run)


def private_cohort(tmp_path: Path, cohort: Path) -> Path:
    """A copy of the manifest with hard links to the slides, so one can break without harm."""
    folder = tmp_path / "cohort"
    (folder / "slides").mkdir(parents=True)
    for slide in (cohort.parent / "slides").glob("*.tiff"):
        os.link(slide, folder / "slides" / slide.name)
    manifest = folder / "cohort.csv"
    manifest.write_text(cohort.read_text())
    return manifest


def break_slide(manifest: Path, index: int) -> Path:
    """Replace one slide by garbage (after the cohort stage has checked it)."""
    slide = sorted((manifest.parent / "slides").glob("*.tiff"))[index]
    slide.unlink()  # the link only: the shared cohort keeps its file
    slide.write_bytes(b"not a slide" * 1000)
    return slide


def start_slurm_run(tmp_path: Path, manifest: Path) -> Path:
    """A run whose cohort stage is done (locally: it never goes to the cluster)."""
    config = write_config(tmp_path / "slurm.yaml", executor={**SLURM_EXECUTOR, "kind": "slurm"})
    root = tmp_path / "run"
    done = run_cli("run", "--manifest", manifest, "--out", root, "--config", config, "--until", "cohort")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def assert_slides_equal(run: RunDir, reference: RunDir, slide_ids: list[str]) -> None:
    for slide_id in slide_ids:
        assert_same_arrays(run.tiles_path(slide_id), reference.tiles_path(slide_id))
        assert_same_arrays(run.features_path(ENCODER, slide_id), reference.features_path(ENCODER, slide_id))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurm_run_skips_a_slide_that_fails_on_a_compute_node(
    slurm_cluster, tmp_path, cohort, local_run  # noqa: F811
):
    manifest = private_cohort(tmp_path, cohort)
    root = start_slurm_run(tmp_path, manifest)
    bad = break_slide(manifest, 2).stem
    # From tile on: a rerun of the cohort stage would drop the slide before any job starts.
    done = run_cli("run", "--out", root, "--from", "tile", "--until", "embed", "--on-error", "skip")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run = RunDir(root)
    tile_failures = [f["slide_id"] for s in stage_entry(run, "tile")["summary"]["per_shard"]
                     for f in s["failed"]]
    assert tile_failures == [bad]
    embed_failures = [sid for s in stage_entry(run, "embed")["summary"]["per_shard"] for sid in s["failed"]]
    assert embed_failures == [bad]
    # Every other slide finished, with the numbers of the local run.
    others = [p.stem for p in h5_files(local_run.features_dir(ENCODER)) if p.stem != bad]
    assert [p.stem for p in h5_files(run.features_dir(ENCODER))] == others
    assert_slides_equal(run, local_run, others)
    failed_tables = list((root / "tiles").glob("_failed*.csv"))
    assert len(failed_tables) == 1 and bad in failed_tables[0].read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurm_failed_shard_names_slides_and_logs_and_a_resume_redoes_only_missing_work(
    slurm_cluster, tmp_path, cohort, local_run  # noqa: F811
):
    manifest = private_cohort(tmp_path, cohort)
    root = start_slurm_run(tmp_path, manifest)
    broken = break_slide(manifest, 2)
    done = run_cli("run", "--out", root, "--from", "tile", "--until", "embed")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    message = done.stderr
    assert "1 of 3 job(s) of stage 'tile' failed" in message
    assert "slides: synth_0002, synth_0003" in message and broken.name in message
    stderr_log = next(line.split("stderr: ")[1] for line in message.splitlines() if "stderr: " in line)
    assert Path(stderr_log).is_file() and Path(stderr_log).parent == root / "logs" / "slurm" / "tile"
    assert f"pathosae run --out {root}" in message
    run = RunDir(root)
    assert stage_entry(run, "tile")["status"] == "failed"
    finished = {p.stem: p.stat().st_mtime_ns for p in h5_files(run.tiles_dir)}
    assert {"synth_0000", "synth_0001", "synth_0004"} <= set(finished) and broken.stem not in finished

    broken.unlink()  # the fix: the slide is back
    os.link(cohort.parent / "slides" / broken.name, broken)
    done = run_cli("run", "--out", root, "--until", "embed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert {p.stem: p.stat().st_mtime_ns for p in h5_files(run.tiles_dir) if p.stem in finished} == finished
    skipped = sum(s["n_skipped_existing"] for s in stage_entry(run, "tile")["summary"]["per_shard"])
    assert skipped == len(finished)
    assert_same_run_outputs(run, local_run)
