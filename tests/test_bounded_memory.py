"""Memory that does not grow with the tiles: the stages after embedding read capped samples from
the per-slide feature files, and the capped reads equal the old in-memory results."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from embed_helpers import write_cohort

from pathosae.config import PathosaeConfig, SAEConfig
from pathosae.downstream.bags import Bags, _sample_rows, capped_rows, per_slide_cap
from pathosae.embedding.h5files import write_feature_file
from pathosae.features import FeatureStore
from pathosae.inputs import load_run_bags
from pathosae.run import RunDir
from pathosae.sae.run_training import split_data

DIM = 8


def _store_run(tmp_path, counts: dict[str, int], dim: int = DIM) -> RunDir:
    run = RunDir(tmp_path / "run")
    write_cohort(run, {s: tmp_path / f"{s}.svs" for s in counts})
    rng = np.random.default_rng(0)
    for slide_id, n in counts.items():
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        coords = np.stack([np.arange(n), np.arange(n) * 2], axis=1)
        write_feature_file(run.features_path("enc", slide_id), feats, coords, {"encoder": "enc"})
    return run


@pytest.mark.parametrize("cap", [None, 1, 3, 50])
def test_capped_rows_draw_the_same_tiles_as_the_in_memory_sample(cap):
    counts = np.array([5, 1, 9, 0, 4])
    slide_of_row = np.repeat(np.array(["a", "b", "c", "d", "e"]), counts)
    np.testing.assert_array_equal(capped_rows(counts, cap, seed=7),
                                  _sample_rows(slide_of_row, cap, seed=7))


def test_per_slide_cap_shrinks_to_the_total():
    assert per_slide_cap(10, 256, None) == 256
    assert per_slide_cap(10, 256, 1000) == 100
    assert per_slide_cap(10_000, 256, 1000) == 1  # never zero tiles per slide


def test_streamed_bags_equal_bags_of_the_whole_matrix(tmp_path):
    run = _store_run(tmp_path, {"s1": 7, "s2": 3, "s3": 12, "s4": 5})
    cfg = PathosaeConfig.model_validate({"embedding": {"name": "enc"}})
    streamed = load_run_bags(run, cfg, "site", max_tiles_per_slide=4, seed=3)
    store = FeatureStore(run, "enc")
    whole = Bags.from_tiles(np.asarray(store.matrix()), store.index(), "label", "site", 4, 3)
    torch.testing.assert_close(streamed.x, whole.x, rtol=0, atol=0)
    torch.testing.assert_close(streamed.slide, whole.slide)
    assert list(streamed.slide_ids) == list(whole.slide_ids)
    capped = load_run_bags(run, cfg, "site", max_tiles_per_slide=4, seed=3, max_tiles=8)
    assert capped.x.shape[0] == 8  # 2 tiles from each of the 4 slides


def test_sae_split_keeps_every_row_below_the_caps_and_samples_above(tmp_path):
    run = _store_run(tmp_path, {"s1": 6, "s2": 4, "s3": 5, "s4": 9})  # splits train/val/test/train
    store = FeatureStore(run, "enc")
    matrix = np.asarray(store.matrix())
    data = split_data(store, "enc", SAEConfig(), seed=0)
    np.testing.assert_array_equal(data["train_x"], np.concatenate([matrix[:6], matrix[15:]]))
    np.testing.assert_array_equal(np.asarray(data["held_x"]), matrix[6:15])
    assert list(data["held_index"]["slide_id"].unique()) == ["s2", "s3"]

    small = split_data(store, "enc", SAEConfig(max_train_rows=5, eval_max_rows=3), seed=0)
    assert small["train_x"].shape == (5, DIM) and small["held_x"].shape == (3, DIM)
    assert small["n_train_rows"] == 15 and small["n_held_rows"] == 9
    train_rows = {tuple(r) for r in np.concatenate([matrix[:6], matrix[15:]])}
    assert all(tuple(r) in train_rows for r in small["train_x"])
    assert set(small["train_slides"]) <= {"s1", "s4"}
    # no more rows than the SAE will see: n_samples caps them as max_train_rows does
    seen = split_data(store, "enc", SAEConfig(n_samples=4, batch_size=2), seed=0)
    np.testing.assert_array_equal(seen["train_x"], split_data(
        store, "enc", SAEConfig(max_train_rows=4), seed=0)["train_x"])
    assert seen["train_x"].shape == (4, DIM) and seen["n_train_rows"] == 15


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pathosae.config import PathosaeConfig, SAEConfig
    from pathosae.features import FeatureStore
    from pathosae.inputs import load_run_bags
    from pathosae.run import RunDir
    from pathosae.sae.run_training import split_data

    def peak_mb():  # VmHWM: the peak resident set since the last reset
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        return int(status.split()[0]) / 1024

    def reset_peak():  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    run = RunDir(sys.argv[1])
    cfg = PathosaeConfig.model_validate({"embedding": {"name": "enc"}})
    store = FeatureStore(run, "enc")
    reset_peak()  # importing torch peaks higher than anything measured here
    start = peak_mb()
    data = split_data(store, "enc", SAEConfig(max_train_rows=4000, eval_max_rows=2000), seed=0)
    bags = load_run_bags(run, cfg, "site", max_tiles_per_slide=256, seed=0, max_tiles=4000)
    capped = peak_mb()
    bag_tiles = int(bags.x.shape[0])
    del data, bags
    reset_peak()
    capped_end = peak_mb()
    whole = np.asarray(store.matrix())  # what holding every tile costs
    print(json.dumps({"start": start, "capped": capped, "whole": peak_mb() - capped_end + capped,
                      "rows": len(whole), "bag_tiles": bag_tiles}))
""")


def test_capped_reads_stay_far_below_the_feature_size(tmp_path):
    """30 slides x 1,500 tiles x 2,048 dims (369 MB): the SAE split and the bags, under their
    caps, must cost a small part of what reading every tile costs (peak RSS, own process)."""
    run = _store_run(tmp_path, {f"s{i:02d}": 1500 for i in range(30)}, dim=2048)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run.root)], capture_output=True,
                         text=True, check=True, timeout=300)
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    capped_growth = peaks["capped"] - peaks["start"]
    whole_growth = peaks["whole"] - peaks["capped"]
    assert peaks["rows"] == 45_000 and peaks["bag_tiles"] == 3990  # 133 tiles x 30 slides
    assert whole_growth > 300, peaks  # the data is big enough to tell the two apart
    # the capped reads hold ~70 MB of rows plus fixed overhead (parquet, h5py), not the cohort
    assert capped_growth < 0.4 * whole_growth, peaks


def _model(dim: int = DIM):
    from pathosae.downstream.model import AdapterMIL

    torch.manual_seed(0)
    model = AdapterMIL(dim, 3, hidden_dim=6, attention_dim=4).eval()
    with torch.no_grad():  # sharp attention, so the online softmax has to rescale
        model.attn_w.weight.mul_(20.0)
    return model


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
def test_chunked_prediction_equals_unchunked(chunk):
    from pathosae.downstream.train import predict_proba, predict_proba_streamed

    g = np.random.default_rng(1)
    counts = [7, 1, 12, 4]
    bags = Bags(
        x=torch.tensor(g.normal(size=(sum(counts), DIM)), dtype=torch.float32),
        slide=torch.arange(len(counts)).repeat_interleave(torch.tensor(counts)),
        y=torch.tensor([0, 1, 2, 0]), site=np.array(list("abab")),
        slide_ids=np.array(["s1", "s2", "s3", "s4"]), patient=np.array(["p1", "p2", "p3", "p4"]),
        split=np.array(["test"] * 4), classes=("a", "b", "c"),
    )
    model = _model()
    whole = predict_proba(model, bags)
    slide_x = [bags.x[bags.slide == i] for i in range(len(counts))]
    streamed = predict_proba_streamed(model, ([x[s : s + chunk] for s in range(0, len(x), chunk)]
                                              for x in slide_x))
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-6)


def test_slides_predicted_over_all_their_tiles_straight_from_the_store(tmp_path):
    from pathosae.downstream.train import predict_proba, predict_proba_streamed

    counts = {"s1": 9, "s2": 2, "s3": 30}
    run = _store_run(tmp_path, counts)
    store = FeatureStore(run, "enc")
    model = _model()
    from_store = predict_proba_streamed(
        model, ((torch.from_numpy(c) for c in store.iter_chunks(s, chunk_rows=4))
                for s in store.slide_ids))
    cfg = PathosaeConfig.model_validate({"embedding": {"name": "enc"}})
    every_tile = load_run_bags(run, cfg, "site", max_tiles_per_slide=100, seed=0)
    assert every_tile.x.shape[0] == sum(counts.values())
    np.testing.assert_allclose(from_store, predict_proba(model, every_tile), rtol=1e-5, atol=1e-6)


def test_confirmation_and_pathorob_samples_are_capped():
    from pathosae.confounders.associations import _confirmation_tiles
    from pathosae.sampling import seeded_subset

    tile_slide = np.repeat(np.arange(10), 3)
    assert np.array_equal(_confirmation_tiles(tile_slide, 10, seed=0), np.arange(30))
    rows = _confirmation_tiles(tile_slide, 4, seed=0)
    kept = np.unique(tile_slide[rows])
    assert len(kept) == 4 and len(rows) == 12  # whole slides: every sampled tile of each
    assert np.array_equal(rows, _confirmation_tiles(tile_slide, 4, seed=0))
    assert np.array_equal(seeded_subset(np.arange(50), 100, seed=0), np.arange(50))
    capped = seeded_subset(np.arange(5000), 100, seed=0)
    assert len(capped) == 100 and np.all(np.diff(capped) > 0)


def test_permutation_nulls_run_below_and_above_the_row_cap():
    import pandas as pd

    from pathosae.sae.run_training import _permutation_controls

    rng = np.random.default_rng(0)
    slides = np.repeat([f"s{i}" for i in range(10)], 150)
    data = {"train_x": rng.normal(size=(1500, DIM)).astype(np.float32),
            "held_x": rng.normal(size=(1500, DIM)).astype(np.float32), "train_slides": slides}
    held_index = pd.DataFrame({"slide_id": slides})
    for cap in (2000, 1000):  # every row (no copy), then a seeded draw
        sae_cfg = SAEConfig.model_validate({
            "d_sae": 16, "k": 4, "batch_size": 32, "n_samples": 32 * 5, "init_samples": 64,
            "eval_max_rows": 1000, "controls": {"max_rows": cap},
        })
        result = _permutation_controls(data, sae_cfg, "topk", {}, held_index, 0, {})
        for mode in ("between", "within"):
            assert np.isfinite(result[mode]["held_out"]["fvu"]), (cap, mode)


def test_codes_filled_in_batches_equal_one_encoding(monkeypatch):
    # codes_and_recon fills preallocated outputs batch by batch (no list of parts to join);
    # with batches of 7 rows over 30 the result equals one encoding of all rows.
    from pathosae.confounders import collect
    from pathosae.sae.registry import get_architecture

    torch.manual_seed(0)
    sae = get_architecture("topk")(d_in=DIM, d_sae=24, k=4)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    x = np.random.default_rng(1).normal(size=(30, DIM)).astype(np.float32)
    monkeypatch.setattr(collect, "_ENCODE_BATCH", 7)
    codes, recon = collect.codes_and_recon(sae, x)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        whole_codes, whole_recon = z.numpy(), sae.decode(z).numpy()
    assert codes.shape == (30, 24) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, whole_codes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recon, whole_recon, rtol=1e-5, atol=1e-6)
    empty_codes, empty_recon = collect.codes_and_recon(sae, x[:0])
    assert empty_codes.shape == (0, 24) and empty_recon.shape == (0, DIM)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("density", [0.05, 1.0])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_tile_summaries_in_chunks_equal_the_whole_matrix(density, chunk, dtype):
    # Sparse codes keep their non-zero entries, dense ones (raw features) the codes: both give
    # numpy's mean and linear-method quantile of the whole float64 matrix to the bit, negative
    # values and all-zero units included, whatever the chunking.
    from pathosae.confounders.aggregate import TileSummaries

    rng = np.random.default_rng(2)
    codes = rng.normal(size=(301, 40)).astype(dtype)
    codes[rng.random(codes.shape) > density] = 0
    codes[:, 3] = 0
    codes[:, 4] = np.abs(codes[:, 4])
    whole = codes.astype(np.float64)
    for q in (0.0, 0.33, 0.5, 0.9, 1.0):
        summary = TileSummaries(40, quantile=q, active_threshold=0.1)
        for start in range(0, len(codes), chunk):
            summary.add(codes[start:start + chunk])
        got = summary.result()
        assert summary.dense == (density > 0.25)
        np.testing.assert_array_equal(got["mean"], whole.mean(axis=0))
        np.testing.assert_array_equal(got["frac_active"], (whole > 0.1).mean(axis=0))
        np.testing.assert_array_equal(got["quantile"], np.quantile(whole, q, axis=0))


def test_slide_summary_holds_no_tiles_by_units_matrix():
    # A slide of 20,000 tiles through a 1,024-unit SAE: its codes in float64 alone would be
    # 164 MB (the old path held them, a float32 copy and np.quantile's copy: over 400 MB).
    # Encoded and summarised 4,096 tiles at a time, numpy's peak is a few chunks' worth
    # (a chunk's codes: 17 MB in float32); the summaries equal those of the whole matrix.
    import tracemalloc

    from pathosae.confounders import collect
    from pathosae.sae.registry import get_architecture

    torch.manual_seed(0)
    sae = get_architecture("topk")(d_in=64, d_sae=1024, k=8)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    features = np.random.default_rng(3).normal(size=(20_000, 64)).astype(np.float32)
    cfg = PathosaeConfig.model_validate({})
    tracemalloc.start()
    summary, residual = collect.summarise_slide(sae, features, None, cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6, f"summarising one slide peaked at {peak / 1e6:.0f} MB of numpy memory"
    codes, recon = collect.codes_and_recon(sae, features)
    whole = codes.astype(np.float64)
    np.testing.assert_array_equal(summary["mean"], whole.mean(axis=0))
    np.testing.assert_array_equal(summary["frac_active"], (whole > 0).mean(axis=0))
    np.testing.assert_array_equal(summary["quantile"], np.quantile(whole, 0.9, axis=0))
    np.testing.assert_allclose(residual, (features - recon).mean(axis=0), rtol=1e-5, atol=1e-7)
