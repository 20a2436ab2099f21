"""Edit operations: algebra, kept reconstruction error, composition, specs, random baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathosae.edit import (
    Editor,
    EditSpec,
    ablate_units,
    apply_code_edit,
    clamp_units,
    project_code,
    project_out,
    scale_units,
)
from pathosae.edit.spec import Ablate, Clamp, Leace, ProjectOut, RandomUnits, Scale
from pathosae.errors import ConfigError, StageError


class TinySAE:
    """A ReLU SAE with fixed random weights (encode/decode is all an edit needs)."""

    def __init__(self, d_in: int = 6, d_sae: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w_enc = torch.randn(d_sae, d_in, generator=g)
        self.b_enc = torch.randn(d_sae, generator=g) * 0.1
        self.w_dec = torch.randn(d_sae, d_in, generator=g)
        self.b_dec = torch.randn(d_in, generator=g)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.w_enc.T + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec + self.b_dec


@pytest.fixture
def data() -> tuple[TinySAE, torch.Tensor]:
    return TinySAE(), torch.randn(50, 6, generator=torch.Generator().manual_seed(1))


def test_code_ops_algebra() -> None:
    z = torch.arange(12.0).reshape(3, 4) + 1
    assert torch.equal(ablate_units(z, [1, 3])[:, [1, 3]], torch.zeros(3, 2))
    assert torch.equal(ablate_units(z, [1, 3])[:, [0, 2]], z[:, [0, 2]])
    assert torch.allclose(scale_units(z, [2], 3.0)[:, 2], 3 * z[:, 2])
    assert torch.equal(scale_units(z, [2], 3.0)[:, :2], z[:, :2])
    assert torch.equal(clamp_units(z, [0], 7.0)[:, 0], torch.full((3,), 7.0))
    d = torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = project_code(z, d)
    assert torch.allclose(p @ d, torch.zeros(3), atol=1e-5)
    assert torch.allclose(project_code(p, d), p, atol=1e-5)  # a projection is idempotent
    assert torch.allclose(p[:, 2:], z[:, 2:])
    with pytest.raises(ValueError, match="unit ids"):
        ablate_units(z, [4])


def test_project_out_removes_only_the_direction() -> None:
    x = torch.randn(20, 5)
    d = torch.tensor([[0.0, 3.0, 4.0, 0.0, 0.0]])
    out = project_out(x, d)
    assert torch.allclose(out @ d[0], torch.zeros(20), atol=1e-4)
    assert torch.allclose(out[:, [0, 3, 4]], x[:, [0, 3, 4]])


def test_reconstruction_error_is_kept(data) -> None:
    sae, x = data
    edited = apply_code_edit(x, sae, [lambda z: ablate_units(z, [0, 5, 7])])
    z = sae.encode(x)
    z2 = ablate_units(z, [0, 5, 7])
    error_before = x - sae.decode(z)
    error_after = edited - sae.decode(z2)
    assert torch.allclose(error_before, error_after, atol=1e-5)
    assert not torch.allclose(edited, x)  # the edit did change something
    assert torch.allclose(apply_code_edit(x, sae, []), x, atol=1e-4)  # no op, no change


def test_composition_groups_code_ops(data) -> None:
    sae, x = data
    two = EditSpec(name="two", ops=[Ablate(units=[1, 2]), Ablate(units=[3])])
    one = EditSpec(name="one", ops=[Ablate(units=[1, 2, 3])])
    assert torch.allclose(Editor(two, sae).fit_transform(x), Editor(one, sae).fit_transform(x), atol=1e-6)
    d = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    mixed = EditSpec(name="mixed", ops=[Scale(units=[4], factor=2.0), ProjectOut(vector=d)])
    manual = project_out(apply_code_edit(x, sae, [lambda z: scale_units(z, [4], 2.0)]), torch.tensor(d))
    assert torch.allclose(Editor(mixed, sae).fit_transform(x), manual, atol=1e-5)


def test_spec_round_trip(tmp_path) -> None:
    spec = EditSpec(name="combo", description="d", ops=[
        Ablate(units=[1]), Scale(units=[2], factor=0.5), Clamp(units=[3], value=1.0),
        RandomUnits(count=2, seed=3), ProjectOut(name="site.mean_difference"), Leace(concept="site"),
    ])
    (tmp_path / "s.json").write_text(spec.to_json())
    assert EditSpec.from_file(tmp_path / "s.json") == spec
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    assert EditSpec.from_file(tmp_path / "s.yaml") == spec
    (tmp_path / "bad.json").write_text('{"name": "x", "ops": [{"op": "ablate", "unitz": [1]}]}')
    with pytest.raises(ConfigError, match=r"bad\.json"):
        EditSpec.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="exactly one"):
        ProjectOut()


def test_random_units_draw_same_count_among_firing_units(data) -> None:
    sae, x = data
    fired = set((sae.encode(x) > 0).any(0).nonzero().flatten().tolist())
    draws = []
    for seed in range(4):
        editor = Editor(EditSpec(name="r", ops=[RandomUnits(count=3, seed=seed)]), sae).fit(x)
        assert len(editor.units_) == 3 and len(set(editor.units_)) == 3
        assert set(editor.units_) <= fired
        draws.append(tuple(editor.units_))
    assert len(set(draws)) > 1
    assert EditSpec(name="r", ops=[RandomUnits(count=3)]).n_units() == 3


def test_leace_erases_linear_site_signal() -> None:
    g = np.random.default_rng(0)
    site = g.integers(0, 3, size=300)
    x = torch.tensor(g.normal(size=(300, 5)) + np.eye(5)[site] * 3, dtype=torch.float32)
    editor = Editor(EditSpec(name="l", ops=[Leace(concept="site")])).fit(x, {"site": site.astype(str)})
    out = editor.transform(x).numpy()
    means = np.stack([out[site == s].mean(0) for s in range(3)])
    assert np.abs(means - means.mean(0)).max() < 1e-3  # class-conditional means equal
    with pytest.raises(StageError, match="scanner"):
        Editor(EditSpec(name="l", ops=[Leace(concept="scanner")])).fit(x, {"site": site})


def test_code_edit_without_sae_is_a_clear_error() -> None:
    with pytest.raises(StageError, match="no SAE"):
        Editor(EditSpec(name="a", ops=[Ablate(units=[0])]))


def test_confounder_aware_edit_removes_the_planted_site_shift() -> None:
    """topk_offsets trained with the site levels: its edit (every tile at the mean offset)
    removes the planted site shift from the embeddings and keeps the label direction."""
    from planted_bags import planted_bags

    from pathosae.config import SAEConfig
    from pathosae.downstream.splits import Splits
    from pathosae.edit.effects import confounder_aware_candidate
    from pathosae.sae import Conditions, train_sae

    train, test = planted_bags(80, 1, "train", 0.9), planted_bags(40, 2, "test", 0.1)
    frame = pd.DataFrame({"site": train.tile_site()})
    sae = train_sae(train.x, SAEConfig(d_sae=32, k=4, n_samples=6000, batch_size=128, seed=0),
                    architecture="topk_offsets", conditions=Conditions.from_frame(frame, ["site"]))
    edited = confounder_aware_candidate("topk_offsets_edit", sae, "site").edit(
        Splits(train, test, test))
    assert edited is not None

    def gap(bags, column):  # mean difference between the two sites along one axis
        site = bags.tile_site()
        return float(bags.x[site == "B", column].mean() - bags.x[site == "A", column].mean())

    assert gap(test, 1) > 1.5  # planted: site B sits 2 units further along axis 1
    assert abs(gap(edited.shifted, 1)) < 0.3  # gone after the edit
    label_gap = edited.shifted.x[edited.shifted.tile_y() == 1, 0].mean() - \
        edited.shifted.x[edited.shifted.tile_y() == 0, 0].mean()
    assert float(label_gap) > 0.6  # the label direction (1 unit) survives


def test_offsets_edit_with_its_flagged_units_removes_the_sparse_site_atom_too() -> None:
    """The offsets take site B's mean shift; a sparse atom that fires on half of site B's tiles
    stays in the dictionary (its mean joins the offset, its spread does not). The offsets SAE's
    units flagged for site on the training slides carry it, and ablating them in the edit takes
    it off as well."""
    from planted_bags import planted_bags

    from pathosae.config import SAEConfig
    from pathosae.downstream.splits import Splits
    from pathosae.edit.config import EditConfig
    from pathosae.edit.defaults import offsets_flagged_units
    from pathosae.edit.effects import confounder_aware_candidate
    from pathosae.sae import Conditions, train_sae

    def with_atom(bags, seed):
        fires = np.random.default_rng(seed).random(len(bags.x)) < 0.5
        atom = torch.zeros(bags.x.shape[1])
        atom[2] = 3.0
        on = torch.as_tensor(fires & (bags.tile_site() == "B"))
        return bags.with_x(bags.x + on[:, None] * atom)

    train = with_atom(planted_bags(80, 1, "train", 0.5), 1)
    test = with_atom(planted_bags(40, 2, "test", 0.5), 2)
    frame = pd.DataFrame({"site": train.tile_site()})
    sae = train_sae(train.x, SAEConfig(d_sae=32, k=4, n_samples=8000, batch_size=128, seed=0),
                    architecture="topk_offsets", conditions=Conditions.from_frame(frame, ["site"]))
    found = offsets_flagged_units(train, {"off": sae}, ["site"], EditConfig())
    units = found[("off", "site")]
    atoms = torch.nn.functional.normalize(sae.W_dec[units], dim=1)
    assert atoms[:, 2].abs().max() > 0.8  # a flagged unit is the planted atom
    splits = Splits(train, test, test)
    plain = confounder_aware_candidate("off_edit", sae, "site").edit(splits)
    both = confounder_aware_candidate("off_edit_ablate_site", sae, "site", units).edit(splits)
    assert plain is not None and both is not None

    def gap(bags):  # site B minus site A: spread along the atom's axis (its mean is an offset)
        site = bags.tile_site()
        return float(bags.x[site == "B", 2].std() - bags.x[site == "A", 2].std())

    assert gap(test) > 0.5 and gap(plain.shifted) > 0.5  # the offsets alone leave the atom
    assert abs(gap(both.shifted)) < 0.5 * gap(plain.shifted)
    # only offsets SAEs get these edits: a reserved SAE's block is its own edit
    assert offsets_flagged_units(train, {}, ["site"], EditConfig()) == {}


def test_chunked_edit_paths_equal_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edit stage encodes a few thousand rows at a time (its memory is one chunk's codes):
    the slide summaries of its scan, the random-unit draw and the confounder-aware edit come
    out the same as from all the rows at once, with chunks that cut through slides."""
    from planted_bags import planted_bags

    from pathosae.config import SAEConfig
    from pathosae.confounders.aggregate import aggregate_by_group
    from pathosae.downstream.splits import Splits
    from pathosae.edit import defaults, editor, effects, ops
    from pathosae.sae import Conditions, train_sae
    from pathosae.sae.metrics import encode_rows

    train = planted_bags(30, 1, "train", 0.5)
    frame = pd.DataFrame({"site": train.tile_site()})
    cfg = SAEConfig(d_sae=24, k=4, n_samples=3000, batch_size=128, seed=0)
    plain = train_sae(train.x, cfg)
    aware = train_sae(train.x, cfg, architecture="topk_offsets",
                      conditions=Conditions.from_frame(frame, ["site"]))
    order, whole = aggregate_by_group(encode_rows(plain, train.x).numpy(),
                                      train.slide.numpy().astype(str), ("mean", "frac_active"))
    chunked = defaults.slide_code_summaries(train, plain, chunk=7)
    np.testing.assert_array_equal(chunked.slides, np.asarray(order, dtype=int))
    for name, matrix in whole.items():
        np.testing.assert_allclose(chunked.matrices[name], matrix, rtol=1e-6, atol=1e-7)

    splits = Splits(train, train, train)
    units = [1, 5]
    whole_draw = editor.draw_random_units(plain, train.x, 3, seed=4)
    whole_edit = effects.confounder_aware_candidate("e", aware, "site", units).edit(splits)
    monkeypatch.setattr(ops, "EDIT_CHUNK_ROWS", 7)
    monkeypatch.setattr(effects, "EDIT_CHUNK_ROWS", 7)
    assert editor.draw_random_units(plain, train.x, 3, seed=4) == whole_draw
    chunk_edit = effects.confounder_aware_candidate("e", aware, "site", units).edit(splits)
    assert whole_edit is not None and chunk_edit is not None
    torch.testing.assert_close(chunk_edit.train.x, whole_edit.train.x, rtol=1e-5, atol=1e-5)


def test_a_non_finite_edit_is_caught_in_any_row_block(monkeypatch) -> None:
    """The finiteness check runs block by block (no full-size temporary): a NaN past the first
    block, in the last split, still stops the edit with a message that names the split."""
    from planted_bags import planted_bags

    from pathosae.downstream.splits import Splits
    from pathosae.edit import effects

    monkeypatch.setattr(effects, "EDIT_CHUNK_ROWS", 7)
    bags = planted_bags(10, 1, "train", 0.5)
    broken = bags.x.clone()
    broken[-3, 2] = float("nan")
    splits = Splits(bags, bags, bags.with_x(broken))
    effects._require_finite("clean", Splits(bags, bags, bags))
    with pytest.raises(StageError, match="shifted"):
        effects._require_finite("broken", splits)


def test_pooled_test_measures_without_concatenating_the_tiles() -> None:
    """Leakage and robustness of the pooled test read the two splits in place: the same
    figures as on the concatenated tiles (the tile-level fallback included)."""
    from planted_bags import planted_bags

    from pathosae.downstream.metrics import TileRows, site_leakage_report
    from pathosae.downstream.splits import Splits
    from pathosae.edit import effects, robustness

    normal, shifted = planted_bags(12, 1, "val", 0.8), planted_bags(10, 2, "test", 0.2)
    splits = Splits(normal, normal, shifted)
    pooled = splits.pooled_test()
    index = splits.pooled_test_index()
    assert index.x.shape == (pooled.x.shape[0], 0)
    assert torch.equal(index.slide, pooled.slide) and list(index.site) == list(pooled.site)
    rows = np.array([0, 5, pooled.x.shape[0] - 1, normal.x.shape[0], normal.x.shape[0] - 1])
    assert torch.equal(splits.pooled_test_rows(rows), pooled.x[rows])

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k]))
            for k in a)

    for min_per_site in (3, 50):  # 50: no slide-level estimate, the tile-level one runs
        expected = site_leakage_report(
            pooled.slide_means().numpy(), pooled.site, pooled.y.numpy(), 5, 0, min_per_site,
            tiles=TileRows(pooled.x.numpy(), pooled.slide.numpy()))
        lazy = site_leakage_report(
            torch.cat([normal.slide_means(), shifted.slide_means()]).numpy(), pooled.site,
            pooled.y.numpy(), 5, 0, min_per_site,
            tiles=TileRows(lambda: splits.pooled_test().x.numpy(), index.slide.numpy()))
        assert same(lazy.columns(), expected.columns())
    assert same(effects.pooled_leakage(splits, 5, 0).columns(), site_leakage_report(
        pooled.slide_means().numpy(), pooled.site, pooled.y.numpy(), 5, 0,
        tiles=TileRows(pooled.x.numpy(), pooled.slide.numpy())).columns())

    slide = pooled.slide.numpy()
    per_slide = max(1, min(robustness.TILES_PER_SLIDE, robustness.MAX_TILES // pooled.n_slides))
    picked = robustness.sample_tiles(slide, per_slide, 0)
    of = slide[picked]
    whole = robustness.croma_metrics(pooled.x[picked].numpy(), pooled.y.numpy()[of].astype(str),
                                     np.asarray(pooled.site)[of], np.asarray(pooled.patient)[of])
    in_place = robustness.pooled_robustness(splits, 0)
    assert same(in_place, {k: whole[k] for k in in_place})
