"""`pathosae run` under failure: a real SIGKILL during embedding, files damaged by a crash, bad
configs and stage names, two runs on one directory, and stage-level skipping of finished work.

Every run is real: a small synthetic cohort of pyramidal TIFFs read by OpenSlide, the packaged
EfficientNet-Lite0 weights, a small SAE.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pathosae.pipeline import select_stages
from pathosae.run import RunDir
from pathosae.workflow import prepare_run, run_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import (
    ENCODER,
    assert_same_arrays,
    assert_same_run_outputs,
    file_ids,
    h5_files,
    make_cohort,
    output_ids,
    run_cli,
    stage_entry,
    start_cli,
    write_config,
)

N_SLIDES = 5
KILL_DEADLINE_S = 180.0


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_slides=N_SLIDES)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "fast.yaml")


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory, cohort: Path, config: Path) -> RunDir:
    """A finished cohort -> tile -> embed run (in this process), copied by the tests that damage it."""
    run, cfg = prepare_run(cohort, tmp_path_factory.mktemp("embedded") / "run", config)
    run_pipeline(run, cfg, until="embed", echo=quiet)
    return run


def copy_run(source: RunDir, target: Path) -> RunDir:
    shutil.copytree(source.root, target)
    return RunDir(target)


def resume(root: Path, **selection: str) -> dict[str, dict]:
    """Resume a run in this process from what its run.json records."""
    run, cfg = prepare_run(None, root, None)
    return run_pipeline(run, cfg, echo=quiet, **selection)


# ---- a real kill during embedding ------------------------------------------------------------
def kill_during_embedding(proc: subprocess.Popen[bytes], features: Path, log: Path) -> None:
    """SIGKILL the run once some but not all slides have their feature file."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed "
                        f"mid-embedding:\n{log.read_text(errors='replace')[-3000:]}")
        if 1 <= len(h5_files(features)) < N_SLIDES:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own session: the CLI and any children
            proc.wait(timeout=30)
            return
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    pytest.fail(f"no feature file within {KILL_DEADLINE_S:.0f}s:\n{log.read_text(errors='replace')}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_run_resumes_without_recomputing_and_equals_an_uninterrupted_run(
    tmp_path, cohort, config
):
    root = tmp_path / "killed"
    features = root / "features" / ENCODER
    proc = start_cli("run", "--manifest", cohort, "--out", root, "--config", config,
                     "--until", "embed", log=tmp_path / "killed.log")
    kill_during_embedding(proc, features, tmp_path / "killed.log")
    assert proc.returncode == -signal.SIGKILL

    run = RunDir(root)
    finished = file_ids(h5_files(features))
    assert 1 <= len(finished) < N_SLIDES
    assert stage_entry(run, "embed")["status"] == "running"  # the kill left no chance to record more
    lock = root / ".run.lock"
    assert lock.read_text().strip() == f"{socket.gethostname()}:{proc.pid}"  # stale: its pid is dead

    # Resume with --out alone: manifest and config come from run.json; the stale lock is taken over.
    done = run_cli("run", "--out", root, "--until", "embed")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not lock.exists()
    after = file_ids(h5_files(features))
    assert len(after) == N_SLIDES
    assert {name: after[name] for name in finished} == finished  # no finished slide was rewritten
    embed = stage_entry(run, "embed")
    assert embed["status"] == "done"
    assert (embed["summary"]["skipped_done"], embed["summary"]["embedded"]) == (
        len(finished), N_SLIDES - len(finished))
    assert stage_entry(run, "tile")["summary"]["n_skipped_existing"] == N_SLIDES

    reference = tmp_path / "reference"
    done = run_cli("run", "--manifest", cohort, "--out", reference, "--config", config,
                   "--until", "embed")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run_outputs(run, RunDir(reference))  # coords and features, bit for bit


# ---- files damaged by a crash ----------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "garbage":
        path.write_bytes(os.urandom(size))
    elif how == "half the rows":  # a readable file that holds only part of the slide
        import h5py

        with h5py.File(path, "r+") as h5:
            for name in ("features", "coords"):
                data = h5[name][: len(h5[name]) // 2]
                del h5[name]
                h5.create_dataset(name, data=data)
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    ("folder", "how"),
    [("tiles", "truncated"), ("tiles", "garbage"), ("features", "truncated"),
     ("features", "garbage"), ("features", "half the rows")],
)
def test_damaged_file_is_detected_and_recomputed_never_trusted(tmp_path, embedded_run, folder, how):
    run = copy_run(embedded_run, tmp_path / "run")
    files = h5_files(run.tiles_dir if folder == "tiles" else run.features_dir(ENCODER))
    victim = files[1]
    original = (embedded_run.tiles_dir if folder == "tiles" else embedded_run.features_dir(ENCODER))
    others = file_ids([p for p in files if p != victim])
    features_before = file_ids(h5_files(run.features_dir(ENCODER)))
    damage(victim, how)

    resume(run.root, until="embed")

    assert_same_arrays(victim, original / victim.name)  # recomputed, equal to the undamaged file
    assert {k: v for k, v in file_ids(files).items() if k in others} == others
    tile = stage_entry(run, "tile")["summary"]
    embed = stage_entry(run, "embed")["summary"]
    if folder == "tiles":
        assert tile["n_skipped_existing"] == N_SLIDES - 1
        # Same tile settings and coordinates: the slide's features are still valid and kept.
        assert embed["embedded"] == 0
        assert file_ids(h5_files(run.features_dir(ENCODER))) == features_before
    else:
        assert tile["n_skipped_existing"] == N_SLIDES
        assert (embed["embedded"], embed["skipped_done"]) == (1, N_SLIDES - 1)


# ---- clear errors before any work ------------------------------------------------------------
def assert_no_work(root: Path) -> None:
    for output in ("cohort.parquet", "tiles", "qc", "features", "sae"):
        assert not (root / output).exists(), f"{output} was written before the error"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown config key", ["tiling.tile_pxx", "bad.yaml", "unknown key"]),
        ("unknown stage", ["unknown stage 'tiel'", "Fix: use one of cohort, tile, embed"]),
        ("--from after --until", ["--from sae comes after --until tile", "Fix:"]),
        ("missing weights file", ["embedding.weights", "/no/such/dir/uni.safetensors",
                                  "does not exist", "Fix:"]),
    ],
)
def test_bad_config_or_selection_fails_before_any_work(tmp_path, cohort, config, case, expected):
    root = tmp_path / "run"
    args: list[str | Path] = ["run", "--manifest", cohort, "--out", root]
    if case == "unknown config key":
        args += ["--config", write_config(tmp_path / "bad.yaml", tiling={"tile_pxx": 300})]
    elif case == "unknown stage":
        args += ["--config", config, "--stages", "tiel"]
    elif case == "--from after --until":
        args += ["--config", config, "--from", "sae", "--until", "tile"]
    else:
        weights = write_config(tmp_path / "uni.yaml", embedding={
            "encoder": "uni", "weights": "/no/such/dir/uni.safetensors"})
        args += ["--config", weights]
    done = run_cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, f"{text!r} not in:\n{done.stderr}"
    assert_no_work(root)


def test_missing_weights_do_not_block_stages_that_do_not_embed(tmp_path, cohort):
    config = write_config(tmp_path / "uni.yaml", embedding={
        "encoder": "uni", "weights": "/no/such/dir/uni.safetensors"})
    run, cfg = prepare_run(cohort, tmp_path / "run", config)
    run_pipeline(run, cfg, until="tile", echo=quiet)
    assert len(h5_files(run.tiles_dir)) == N_SLIDES


def test_stage_ranges_follow_pipeline_order():
    def names(*args: object) -> list[str]:
        return [s.name for s in select_stages(*args)]  # type: ignore[arg-type]

    assert names(["sae", "edit"], "embed", None) == ["sae", "edit"]
    assert names(["tile", "embed", "sae"], None, "embed") == ["tile", "embed"]
    assert names(None, "embed", "embed") == ["embed"]
    from pathosae.errors import PathosaeError

    with pytest.raises(PathosaeError, match="selects no stage"):
        select_stages(["sae", "edit"], None, "embed")


# ---- two runs on one directory ---------------------------------------------------------------
def test_second_run_on_a_locked_directory_fails_naming_the_owner(tmp_path, cohort, config):
    run, _ = prepare_run(cohort, tmp_path / "run", config)
    recorded = run.run_json.read_bytes()
    other = write_config(tmp_path / "other.yaml", seed=7)
    with run.lock():
        done = run_cli("run", "--manifest", cohort, "--out", run.root, "--config", other,
                       "--until", "cohort")
    assert done.returncode == 2, done.stderr
    assert f"in use by {socket.gethostname()}:{os.getpid()}" in done.stderr
    assert str(run.root / ".run.lock") in done.stderr
    assert run.run_json.read_bytes() == recorded  # the refused run changed nothing
    assert_no_work(run.root)


def test_stale_lock_is_taken_over_and_a_foreign_host_lock_is_respected(tmp_path, cohort, config):
    root = tmp_path / "run"
    root.mkdir()
    lock = root / ".run.lock"
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(f"{socket.gethostname()}:{gone.pid}")  # a crashed run on this machine
    done = run_cli("run", "--manifest", cohort, "--out", root, "--config", config, "--until", "cohort")
    assert done.returncode == 0, done.stderr
    assert (root / "cohort.parquet").is_file() and not lock.exists()

    # Another machine's pid cannot be checked from here: its lock stands.
    lock.write_text("node-17.cluster:4242")
    done = run_cli("run", "--out", root, "--until", "cohort")
    assert done.returncode == 2 and "in use by node-17.cluster:4242" in done.stderr
    assert lock.read_text() == "node-17.cluster:4242"


# ---- stage-level skip ------------------------------------------------------------------------
def stage_seconds(run: RunDir, stages: tuple[str, ...]) -> float:
    return sum(stage_entry(run, s)["duration_s"] for s in stages)


@pytest.mark.slow
def test_unchanged_stages_are_not_recomputed_and_a_sae_change_redoes_sae_only(
    tmp_path, cohort, config
):
    work = ("tile", "embed", "sae")
    run, cfg = prepare_run(cohort, tmp_path / "run", config)
    run_pipeline(run, cfg, until="sae", echo=quiet)
    first = output_ids(run, "tiles", "qc", "features", "sae")
    first_seconds = stage_seconds(run, work)
    assert stage_entry(run, "sae")["summary"]["models"]["topk"]["status"] == "trained"

    summaries = resume(run.root, until="sae")
    assert output_ids(run, "tiles", "qc", "features", "sae") == first
    assert summaries["tile"]["n_skipped_existing"] == N_SLIDES
    assert (summaries["embed"]["embedded"], summaries["embed"]["skipped_done"]) == (0, N_SLIDES)
    assert summaries["sae"]["models"]["topk"]["status"] == "skipped (unchanged)"
    assert all(stage_entry(run, s)["status"] == "done" for s in work)
    assert stage_seconds(run, work) < 0.5 * first_seconds, run.read_state()["stages"]

    changed = write_config(tmp_path / "k4.yaml", sae={"k": 4})
    run, cfg = prepare_run(cohort, run.root, changed)
    summaries = run_pipeline(run, cfg, until="sae", echo=quiet)
    assert summaries["sae"]["models"]["topk"]["status"] == "trained"
    upstream = {k: v for k, v in first.items() if not k.startswith("sae/")}
    assert output_ids(run, "tiles", "qc", "features") == upstream
    sae_now = output_ids(run, "sae")
    assert all(sae_now.get(name) != ids for name, ids in first.items() if name.startswith("sae/"))
