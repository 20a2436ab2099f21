"""``pathosae synth-features``: a feature-level synthetic cohort of any size, no slides needed.

The generative model (all knobs in :class:`~pathosae.synth.feature_params.FeatureSynthParams`):

- A dictionary of unit-norm random atoms in R^dim: ``n_biology_atoms`` biology atoms, and for
  each confounder (site, scanner, stain batch) and each of its levels ``*_atoms`` planted atoms.
- Each tile is a sparse nonnegative combination: ``active_atoms`` biology atoms drawn with
  replacement by the slide's rates, each with an Exp(1) magnitude; the slide's rates are the
  cohort's base rates times a per-slide log-normal jitter, with the label atoms of the slide's
  class (``n_label_atoms / 2`` per class) ``label_effect`` times more frequent.
- Per tile, each planted atom of the slide's site, scanner and stain-batch level fires with
  probability ``confounder_rate`` and an Exp magnitude of mean ``confounder_scale``.
- Per slide, a dense shift: for each confounder, its level's fixed unit direction times
  ``*_shift``; added to every tile of the slide.
- Isotropic noise: i.i.d. zero-mean uniform per coordinate (256 levels, drawn as raw random
  bytes, which is several times faster than Gaussian draws), expected norm ``noise``.

Site follows the label in train/val with probability ``confounding`` and not (or reversed) in the
``test`` split; splits are by patient. The same seed and parameters give the same bytes on one
machine (the tiles go through one float32 BLAS product, whose rounding may differ between CPU
kinds). Slides are written one at a time, each in chunks of at most ``TILES_PER_CHUNK`` tiles, so
memory does not grow with the number of tiles or slides.

Output: ``OUT/cohort.csv`` (no ``path`` column), the TRIDENT layout
``OUT/trident/20x_256px_0px_overlap/features_synth/<slide_id>.h5`` (``features`` N x D float32,
``coords`` N x 2 int64), ``OUT/ground_truth/`` (:mod:`.feature_groundtruth`) and
``OUT/config.yaml``, the config keys a run of this cohort needs (feature set and confounders).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import h5py
import numpy as np
import pandas as pd
import yaml

from pathosae.errors import ConfigError, PathosaeError
from pathosae.io import atomic_path, write_text_atomic
from pathosae.progress import bar
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT, TILE
from pathosae.synth.design import rng_for
from pathosae.synth.feature_design import (
    STREAM_CODES,
    STREAM_NOISE,
    STREAM_RATES,
    Dictionary,
    FeatureSlide,
    build_dictionary,
    plan_feature_cohort,
)
from pathosae.synth.feature_groundtruth import FeatureTruth, write_ground_truth
from pathosae.synth.feature_params import CONFOUNDERS, FEATURE_LABELS, FeatureSynthParams, level_name

FEATURE_SET = "synth"
FEATURE_FOLDER = Path("trident") / "20x_256px_0px_overlap" / f"features_{FEATURE_SET}"
"""Where the per-slide files go under OUT, TRIDENT's ``<mag>x_<px>px_<overlap>px_overlap`` layout."""
MANIFEST_COLUMNS = [SLIDE_ID, PATIENT_ID, "label", *CONFOUNDERS, SPLIT]
RUN_CONFIG = "config.yaml"
RUN_CONFIG_KEYS = {"cohort": {"confounders": list(CONFOUNDERS)}, "embedding": {"encoder": FEATURE_SET}}
"""The config keys a run of this cohort needs (the rest take the defaults), written to OUT/."""
PATCH_PX = 256
TILES_PER_CHUNK = 8192
PREFETCH_CHUNKS = 2  # chunks drawn ahead of the writer (memory: this many chunks more)
T = TypeVar("T")
_INT8_SD = math.sqrt((256**2 - 1) / 12)  # SD of a uniform draw over the 256 int8 values
_INT8_MEAN = -0.5


@dataclass(frozen=True)
class SlideModel:
    """What drawing one slide's tiles needs."""

    rates: np.ndarray  # biology atom probabilities (float64, sums to 1)
    planted: np.ndarray  # atom rows of the slide's planted confounder atoms
    offset: np.ndarray  # dim, the slide's dense shift


def slide_model(dictionary: Dictionary, slide: FeatureSlide, seed: int,
                params: FeatureSynthParams) -> SlideModel:
    rng = rng_for(seed, STREAM_RATES, slide.index)
    weights = dictionary.base_rates * np.exp(
        params.slide_rate_jitter * rng.standard_normal(dictionary.n_biology))
    weights[list(dictionary.label_atoms[slide.label])] *= params.label_effect
    planted = [row for v in CONFOUNDERS for row in dictionary.planted[v][slide.level(v)]]
    offset = np.zeros(params.dim, dtype=np.float64)
    for variable in CONFOUNDERS:
        row = dictionary.direction_rows[variable][slide.level(variable)]
        offset += params.shift(variable) * dictionary.directions[row]
    return SlideModel(weights / weights.sum(), np.asarray(planted, dtype=np.int64),
                      offset.astype(np.float32))


def iter_slide_codes(dictionary: Dictionary, slide: FeatureSlide, seed: int,
                     params: FeatureSynthParams) -> Iterator[np.ndarray]:
    """The slide's tile codes (tiles x atoms, float32), in chunks of at most TILES_PER_CHUNK."""
    model = slide_model(dictionary, slide, seed, params)
    rng = rng_for(seed, STREAM_CODES, slide.index)
    for start in range(0, slide.n_tiles, TILES_PER_CHUNK):
        yield _codes(rng, model, min(TILES_PER_CHUNK, slide.n_tiles - start), dictionary, params)


def _codes(rng: np.random.Generator, model: SlideModel, m: int, dictionary: Dictionary,
           params: FeatureSynthParams) -> np.ndarray:
    codes = np.zeros((m, len(dictionary.atoms)), dtype=np.float32)
    picks = rng.choice(dictionary.n_biology, size=(m, params.active_atoms), p=model.rates)
    sizes = rng.standard_exponential((m, params.active_atoms), dtype=np.float32)
    rows = np.arange(m)
    for j in range(params.active_atoms):  # one pick per row per pass: no clashing indices
        codes[rows, picks[:, j]] += sizes[:, j]
    if len(model.planted):
        shape = (m, len(model.planted))
        fire = rng.random(shape, dtype=np.float32) < params.confounder_rate
        size = rng.standard_exponential(shape, dtype=np.float32) * np.float32(params.confounder_scale)
        codes[:, model.planted] = np.where(fire, size, np.float32(0))
    return codes


def iter_slide_features(dictionary: Dictionary, slide: FeatureSlide, seed: int,
                        params: FeatureSynthParams) -> Iterator[np.ndarray]:
    """The slide's tile features (tiles x dim, float32), in chunks of at most TILES_PER_CHUNK."""
    model = slide_model(dictionary, slide, seed, params)
    noise = rng_for(seed, STREAM_NOISE, slide.index).bit_generator
    # Work in units of one noise step so the int8 noise adds without a float copy; scale at the end.
    unit = params.noise / math.sqrt(params.dim) / _INT8_SD if params.noise > 0 else 1.0
    atoms = dictionary.atoms / np.float32(unit)
    offset = model.offset / np.float32(unit) - np.float32(_INT8_MEAN if params.noise > 0 else 0.0)
    for codes in iter_slide_codes(dictionary, slide, seed, params):
        x = codes @ atoms
        x += offset
        if params.noise > 0:
            raw = noise.random_raw(-(-x.size // 8)).view(np.int8)[: x.size].reshape(x.shape)
            np.add(x, raw, out=x, casting="unsafe")
            x *= np.float32(unit)
        yield x


def tile_coords(n_tiles: int) -> np.ndarray:
    """Top-left corners (level-0 px) of ``n_tiles`` tiles on a square-ish grid, row by row."""
    cols = max(1, math.ceil(math.sqrt(n_tiles)))
    i = np.arange(n_tiles, dtype=np.int64)
    return np.stack([(i % cols) * PATCH_PX, (i // cols) * PATCH_PX], axis=1)


def write_slide_file(target: Path, chunks: Iterable[np.ndarray], n_tiles: int, dim: int) -> None:
    """One TRIDENT feature file, written atomically and chunk by chunk (no timestamps)."""
    with atomic_path(target) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        feats = h5.create_dataset("features", shape=(n_tiles, dim), dtype=np.float32,
                                  track_times=False)
        row = 0
        for chunk in chunks:
            feats[row : row + len(chunk)] = chunk
            row += len(chunk)
        if row != n_tiles:
            raise RuntimeError(f"{target}: wrote {row} tiles, expected {n_tiles}")
        coords = h5.create_dataset("coords", data=tile_coords(n_tiles), track_times=False)
        for key, value in {"patch_size": PATCH_PX, "patch_size_level0": PATCH_PX,
                           "level0_magnification": 20, "target_magnification": 20,
                           "overlap": 0, "name": target.stem}.items():
            coords.attrs[key] = value


def manifest_table(plans: list[FeatureSlide]) -> pd.DataFrame:
    """The cohort manifest: one row per slide, level names, no ``path`` column."""
    return pd.DataFrame({
        SLIDE_ID: [p.slide_id for p in plans],
        PATIENT_ID: [p.patient_id for p in plans],
        "label": [FEATURE_LABELS[p.label] for p in plans],
        **{v: [level_name(v, p.level(v)) for p in plans] for v in CONFOUNDERS},
        SPLIT: [p.split for p in plans],
    }, columns=MANIFEST_COLUMNS)


def generate_feature_cohort(
    out: str | Path, n_slides: int = 24, seed: int = 0, params: FeatureSynthParams | None = None,
) -> Path:
    """Write the cohort into ``out`` slide by slide; return the path of ``out/cohort.csv``.

    Feature files of slides that are not in this cohort (left by an earlier, larger run into the
    same folder) are removed, so the folder always matches the manifest and the ground truth.
    """
    params = params or FeatureSynthParams()
    _check_arguments(n_slides, seed)
    out = Path(out)
    plans = plan_feature_cohort(n_slides, seed, params)
    dictionary = build_dictionary(seed, params)
    folder = out / FEATURE_FOLDER
    _remove_stale(folder, {p.slide_id for p in plans})
    # Tiles are drawn one thread ahead of the writer (a few chunks at most), so drawing goes on
    # while a file is written and synced; the order, and so the bytes, do not change.
    stream = prefetch((chunk for plan in plans
                       for chunk in iter_slide_features(dictionary, plan, seed, params)),
                      PREFETCH_CHUNKS)
    try:
        with _one_blas_thread():
            for plan in bar(plans, "synth-features", unit="slide"):
                chunks = itertools.islice(stream, -(-plan.n_tiles // TILES_PER_CHUNK))
                write_slide_file(folder / f"{plan.slide_id}.h5", chunks, plan.n_tiles, params.dim)
    finally:
        stream.close()
    write_ground_truth(out / "ground_truth", dictionary, plans, seed, params)
    write_text_atomic(out / RUN_CONFIG, yaml.safe_dump(RUN_CONFIG_KEYS, sort_keys=False))
    manifest = out / "cohort.csv"
    with atomic_path(manifest) as tmp:
        manifest_table(plans).to_csv(tmp, index=False)
    return manifest


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """One BLAS thread while drawing: the writer thread has the other core (measured faster on
    a busy 2-core machine, where two BLAS threads spin against the writer)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn requires it
        return contextlib.nullcontext()
    return cast(contextlib.AbstractContextManager[object], threadpool_limits(1, user_api="blas"))


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``items`` drawn in a background thread, at most ``depth`` ahead of the consumer; an error
    in the thread is raised in the consumer, and closing the generator stops the thread."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            put(_Failure(exc))

    thread = threading.Thread(target=fill, name="synth-features-draw", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, _Failure):
                raise item.error
            yield cast(T, item)
    finally:
        stop.set()
        thread.join()


def _check_arguments(n_slides: int, seed: int) -> None:
    if n_slides < 1:
        raise ConfigError(f"--slides must be at least 1, got {n_slides}. Fix: pass --slides 1 or more.")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {seed}. Fix: pass a non-negative seed.")


def _remove_stale(folder: Path, keep: set[str]) -> None:
    if folder.is_dir():
        for path in folder.glob("synth_*.h5"):
            if path.stem not in keep:
                path.unlink()


# ---- per-tile concepts, drawn again from the seed (for the SAE stage's concept coverage) --------
def feature_concepts(gt_dir: str | Path, index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Binary concepts of the tiles in ``index`` (columns ``slide_id`` and ``tile``, the tile's
    row in its slide's file): ``planted=<variable>`` when an atom planted for the slide's level
    of that confounder fires on the tile, ``label_atom=<class>`` when a label atom of that class
    does. The codes are drawn again from the seed (no noise, no features), slide by slide."""
    truth = FeatureTruth.load(gt_dir)
    params, plans = truth.params, truth.plans()
    dictionary = build_dictionary(truth.seed, params)
    groups = {f"planted={v}": truth.atom_rows(v) for v in CONFOUNDERS if truth.atom_rows(v)}
    groups.update({f"label_atom={name}": list(rows) for name, rows
                   in zip(FEATURE_LABELS, dictionary.label_atoms, strict=True) if rows})
    concepts = {name: np.zeros(len(index), dtype=bool) for name in groups}
    tiles = index[TILE].to_numpy(np.int64)
    by_slide = pd.Series(np.arange(len(index))).groupby(index[SLIDE_ID].astype(str).to_numpy())
    for slide_id, positions in by_slide.indices.items():
        if slide_id not in plans:
            raise PathosaeError(f"slide {slide_id!r} is not in the synthetic cohort of {gt_dir}. "
                                "Fix: set ground_truth to the folder written with this cohort.")
        active = _active_atoms(dictionary, plans[slide_id], truth.seed, params, tiles[positions])
        for name, rows in groups.items():
            concepts[name][positions] = active[:, rows].any(axis=1)
    return concepts


def _active_atoms(dictionary: Dictionary, slide: FeatureSlide, seed: int,
                  params: FeatureSynthParams, tiles: np.ndarray) -> np.ndarray:
    """tiles x atoms: which atoms fire on the given tiles of one slide."""
    active = np.zeros((len(tiles), len(dictionary.atoms)), dtype=bool)
    for chunk, codes in enumerate(iter_slide_codes(dictionary, slide, seed, params)):
        local = tiles - chunk * TILES_PER_CHUNK
        inside = (local >= 0) & (local < len(codes))
        active[inside] = codes[local[inside]] > 0
    return active
