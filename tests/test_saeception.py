"""SAE-ception targets, confounder injection and a short end-to-end run on planted confounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from planted_bags import planted_bags

from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.confounding import confounder_eraser, flag_confounded_units
from pathosae.saeception.cycle import Splits, build_target, run_saeception
from pathosae.saeception.metrics import monosemanticity
from pathosae.saeception.targets import class_means, sharpened_targets, top_units


def test_target_by_hand() -> None:
    codes = torch.tensor([[3.0, 1.0, 0.0, 2.0], [1.0, 0.0, 4.0, 0.5], [2.0, 2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    # class 0 means: [2.5, 1.5, 0, 1.0]; class 1 means: [1, 0, 4, 0.5] -> top-2: {0,1} and {2,0}
    keep = top_units(class_means(codes, labels, 2), 2)
    assert keep.tolist() == [[True, True, False, False], [True, False, True, False]]
    w_dec = torch.eye(4) * 2
    bias = torch.tensor([1.0, 1.0, 1.0, 1.0])
    target = sharpened_targets(codes, labels, keep, lambda z: z @ w_dec + bias)
    expected = torch.tensor([[7.0, 3.0, 1.0, 1.0], [3.0, 1.0, 9.0, 1.0], [5.0, 5.0, 1.0, 1.0]])
    assert torch.equal(target, expected)


def test_injection_never_keeps_flagged_units() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(200, 30, generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    exclude = torch.zeros(30, dtype=torch.bool)
    means = class_means(codes, labels, 3)
    top = means.topk(5, dim=1).indices.flatten()
    exclude[top] = True  # flag exactly the units plain SAE-ception would keep
    keep = top_units(means, 5, exclude)
    assert not keep[:, exclude].any()
    assert keep.sum(1).tolist() == [5, 5, 5]


def test_site_balanced_top_n_differs_for_a_site_skewed_class() -> None:
    # unit 0 fires at site A only; class 1 comes 90% from site A. Unit 1 is the class-1 biology.
    n = 400
    labels = torch.tensor([0] * 200 + [1] * 200)
    sites = np.array(["B"] * 180 + ["A"] * 20 + ["A"] * 180 + ["B"] * 20)
    codes = torch.zeros(n, 3)
    codes[:, 0] = torch.from_numpy((sites == "A").astype(np.float32)) * 1.0
    codes[200:, 1] = 0.7
    codes[:, 2] = 0.3
    plain = top_units(class_means(codes, labels, 2), 1)
    balanced = top_units(class_means(codes, labels, 2, sites, min_count=5), 1)
    assert plain[1].nonzero().flatten().tolist() == [0]  # the site unit wins without balancing
    assert balanced[1].nonzero().flatten().tolist() == [1]  # the biology unit wins with it


def test_flags_and_eraser_find_the_planted_site() -> None:
    bags = planted_bags(120, 0, "train", 0.8)
    codes = torch.relu(torch.cat([bags.x, -bags.x], 1))  # a trivially sparse "code"
    meta = pd.DataFrame({"label": bags.y.numpy().astype(str), "site": bags.site})
    flagged = flag_confounded_units(codes, bags.slide, meta, ["site"], "label", 0.05)
    assert flagged[1] or flagged[1 + 8]  # the site dimension
    assert not flagged[0] and not flagged[8]  # the biology (a covariate) is not flagged
    erase = confounder_eraser(bags.x, bags.tile_y().numpy(), bags.tile_site(), "class_site_means")
    out = erase(bags.x)
    for c in (0, 1):
        sel = bags.tile_y() == c
        a = out[sel & torch.from_numpy(bags.tile_site() == "A")].mean(0)
        b = out[sel & torch.from_numpy(bags.tile_site() == "B")].mean(0)
        assert abs(float(a[1] - b[1])) < 0.3  # the site gap is gone inside each class
    assert float((out[:, 0] - bags.x[:, 0]).abs().mean()) < 0.3  # the biology is kept


def test_dominant_rule_keeps_a_unit_that_carries_more_label_than_site() -> None:
    bags = planted_bags(200, 4, "train", 0.8)
    y = bags.tile_y().float()
    site = torch.from_numpy((bags.tile_site() == "B").astype("float32"))
    noise = torch.randn(len(y), 2, generator=torch.Generator().manual_seed(0)) * 0.3
    mixed = 2.0 * y + 0.6 * site + noise[:, 0]  # mostly biology, some site
    pure_site = 1.5 * site + noise[:, 1]
    codes = torch.relu(torch.stack([mixed, pure_site], 1) + 1.0)
    meta = pd.DataFrame({"label": bags.y.numpy().astype(str), "site": bags.site})
    by_q = flag_confounded_units(codes, bags.slide, meta, ["site"], "label", 0.05, rule="q")
    dominant = flag_confounded_units(codes, bags.slide, meta, ["site"], "label", 0.05)
    assert by_q.tolist() == [True, True]  # both carry the site given the label
    assert dominant.tolist() == [False, True]  # only the site-dominated unit is dropped


def test_monosemanticity_bounds() -> None:
    labels = np.array([0, 0, 1, 1] * 25)
    codes = np.stack([labels == 1, np.tile([1, 0], 50) == 1], 1).astype(float)
    mono = monosemanticity(codes, labels)
    assert mono[0] > 0.99 and mono[1] < 0.01


def test_end_to_end_on_planted_confounding() -> None:
    splits = Splits(planted_bags(60, 1, "train", 0.9), planted_bags(30, 2, "val", 0.9),
                    planted_bags(30, 3, "test", 0.1))
    cfg = SAECeptionConfig(
        cycles=1, seeds=[0], n_top=4, cycle_epochs=3, sae_samples=2048, sae_expansion=2, sae_k=4,
        eval_max_tiles=200, leakage_folds=3, min_cell_tiles=4,
        downstream={"epochs": 5, "hidden_dim": 8, "attention_dim": 4},
    )
    metrics = run_saeception(splits, cfg)
    assert len(metrics) == 4 * 2  # 4 variants × (base + 1 cycle)
    assert set(metrics["variant"]) == {"no_aux", "random_target", "plain", "injected"}
    last = metrics[metrics["cycle"] == 1].set_index("variant")
    for col in ("bacc_normal", "bacc_shifted", "site_leakage", "sae_fvu", "silhouette"):
        assert np.isfinite(last[col].to_numpy(float)).all(), col
    assert last.loc["injected", "n_kept"] >= 1
    # The same settings and seed give the same numbers.
    again = run_saeception(splits, cfg.model_copy(update={"variants": ["injected"]}))
    assert np.allclose(again[again["cycle"] == 1]["bacc_shifted"], last.loc["injected", "bacc_shifted"])
    target, info = build_target("no_aux", _Identity(), None, splits.train, cfg, 0)
    assert target is None and info == {}


class _Identity(torch.nn.Module):
    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def eval(self) -> _Identity:
        return self


def test_aware_variant_never_keeps_the_reserved_block() -> None:
    """The aware variant's targets come from a confounder-aware SAE told the training slides'
    sites: its reserved block is excluded from every class's top units."""
    train = planted_bags(60, 1, "train", 0.9)
    cfg = SAECeptionConfig(n_top=6, sae_samples=2048, sae_expansion=2, sae_k=4, min_cell_tiles=4,
                           downstream={"hidden_dim": 8, "attention_dim": 4})
    target, info = build_target("aware", _Identity(), None, train, cfg, 0)
    assert target is not None and target.shape == train.x.shape
    assert bool(torch.isfinite(target).all())
    assert info["n_reserved"] >= 2 * len(set(train.site))  # 2 latents per site level at least
    assert 1 <= info["n_kept"] <= 2 * cfg.n_top
    again, _ = build_target("aware", _Identity(), None, train, cfg, 0)
    torch.testing.assert_close(again, target, rtol=0, atol=0)  # same seed, same targets
