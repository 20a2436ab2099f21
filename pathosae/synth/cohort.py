"""``generate_cohort``: slides, manifest and ground truth of a synthetic cohort, resumable.

Each slide's files are written atomically, then its record (``ground_truth/records/<id>.json``)
last; a rerun with the same seed and parameters skips slides whose record and file are present,
so a killed run resumes and a larger cohort only renders the new slides.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path

import pandas as pd

import pathosae
from pathosae.errors import ConfigError
from pathosae.io import atomic_path, read_json, settings_hash, write_json_atomic, write_text_atomic
from pathosae.schema import PATIENT_ID, SETTINGS_HASH, SLIDE_ID, SPLIT
from pathosae.synth.design import SlidePlan, batch_name, plan_cohort, scanner_name, site_name
from pathosae.synth.effects import CohortEffects, cohort_effects
from pathosae.synth.groundtruth import write_phenotype_map
from pathosae.synth.params import PHENOTYPES, SynthParams
from pathosae.synth.readme import ground_truth_readme
from pathosae.synth.slide import render_slide
from pathosae.synth.slide_writer import write_slide

MANIFEST_COLUMNS = [SLIDE_ID, "path", PATIENT_ID, "label", "site", "scanner", "stain_batch",
                    SPLIT]
_RENDERER_VERSION = 1  # bump when the pixels a seed gives change


def generate_cohort(
    out: str | Path,
    n_slides: int = 24,
    seed: int = 0,
    params: SynthParams | None = None,
    *,
    workers: int = 1,
) -> Path:
    """Write a synthetic cohort into ``out``; return the path of ``out/cohort.csv``.

    ``out/slides/<slide_id>.tiff`` (pyramidal TIFF), ``out/cohort.csv`` (manifest) and
    ``out/ground_truth/`` (slides.csv, effects.json, params.json, phenotypes/*.npz, README.md).
    The same seed and parameters give byte-identical files; ``workers`` only changes the speed.
    """
    params = params or SynthParams()
    _check_arguments(n_slides, seed, workers)
    out = Path(out)
    gt_dir = out / "ground_truth"
    digest = settings_hash(
        {"params": params.model_dump(mode="json"), "seed": seed, "renderer": _RENDERER_VERSION}
    )
    plans = plan_cohort(n_slides, seed, params)
    effects = cohort_effects(seed, params)
    jobs = [(plan, seed, params, effects, str(out), digest) for plan in plans]
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            records = list(pool.map(_make_slide, jobs))
    else:
        records = [_make_slide(job) for job in jobs]

    truth = pd.DataFrame(records)
    _write_csv(gt_dir / "slides.csv", truth)
    write_json_atomic(gt_dir / "effects.json", _effects_table(effects))
    write_json_atomic(
        gt_dir / "params.json",
        {"params": params.model_dump(mode="json"), "seed": seed, "n_slides": n_slides,
         SETTINGS_HASH: digest, "pathosae_version": pathosae.__version__},
    )
    write_text_atomic(gt_dir / "README.md", ground_truth_readme(params))
    manifest = out / "cohort.csv"
    _write_csv(manifest, truth[MANIFEST_COLUMNS])
    return manifest


def _check_arguments(n_slides: int, seed: int, workers: int) -> None:
    if n_slides < 1:
        raise ConfigError(f"n_slides must be at least 1, got {n_slides}. Fix: pass --slides 1 or more")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}. Fix: pass --seed 0 or more")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")


def _make_slide(job: tuple[SlidePlan, int, SynthParams, CohortEffects, str, str]) -> dict[str, object]:
    """Render and write one slide, or reuse it when a run with the same settings finished it."""
    plan, seed, params, effects, out_name, digest = job
    out = Path(out_name)
    rel_path = f"slides/{plan.slide_id}.tiff"
    record_path = out / "ground_truth" / "records" / f"{plan.slide_id}.json"
    if record_path.is_file() and (out / rel_path).is_file():
        try:
            record = read_json(record_path)
        except (OSError, ValueError):  # unreadable record: render the slide again
            record = {}
        if record.get(SETTINGS_HASH) == digest:
            return record
    slide = render_slide(plan, seed, params, effects)
    quality = int(effects.scanner[plan.scanner].jpeg_quality)  # as the record's scanner_jpeg_quality
    write_slide(out / rel_path, slide.image, params.mpp, quality,
                f"pathosae synthetic slide {plan.slide_id} (seed {seed})")
    write_phenotype_map(out / "ground_truth", plan.slide_id, slide.classes, params.mpp)
    record = {
        SLIDE_ID: plan.slide_id,
        "path": rel_path,
        PATIENT_ID: plan.patient_id,
        "label": plan.label,
        "site": site_name(plan.site),
        "scanner": scanner_name(plan.scanner),
        "stain_batch": batch_name(plan.site, plan.stain_batch),
        SPLIT: plan.split,
        "site_matches_label": plan.site_matches_label,
        "mpp": params.mpp,
        "seed": seed,
        "slide_index": plan.index,
        **slide.record,
        SETTINGS_HASH: digest,
    }
    write_json_atomic(record_path, record)
    return record


def _effects_table(effects: CohortEffects) -> dict[str, object]:
    """Planted effects per site, stain batch and scanner (slides add a small jitter of their own)."""
    return {
        "site": {site_name(s): e.as_record() for s, e in effects.site.items()},
        "stain_batch": {batch_name(s, b): e.as_record() for (s, b), e in effects.batch.items()},
        "scanner": {scanner_name(j): e.as_record() for j, e in effects.scanner.items()},
        "phenotypes": list(PHENOTYPES),
    }


def _write_csv(target: Path, frame: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
