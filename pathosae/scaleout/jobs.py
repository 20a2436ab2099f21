"""What happened to submitted jobs: the ``jobs.json`` record and the error for failed jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathosae.errors import StageError
from pathosae.io import read_json, write_json_atomic


@dataclass(frozen=True)
class JobOutcome:
    """The end of one job (one shard of an array, or a single job)."""

    index: int
    job_id: str
    slides: list[str] | None  # None for a single (non-sharded) job
    ok: bool
    result: Any = None
    error: str = ""
    stdout: Path | None = None
    stderr: Path | None = None


class JobFailedError(StageError):
    """One or more Slurm jobs of a stage failed; names their slides, logs and how to resume."""

    def __init__(self, stage: str, failures: list[JobOutcome], total: int, resume_command: str) -> None:
        self.stage = stage
        self.failures = failures
        self.resume_command = resume_command
        lines = [f"{len(failures)} of {total} job(s) of stage '{stage}' failed:"]
        for f in failures:
            what = f"shard {f.index}" if f.slides is not None else "job"
            lines.append(f"  - {what} (job {f.job_id}): {f.error}")
            if f.slides is not None:
                lines.append(f"      slides: {', '.join(f.slides)}")
            lines.append(f"      stdout: {f.stdout}")
            lines.append(f"      stderr: {f.stderr}")
        lines.append(
            "Finished slides are kept. Fix: read the logs above, fix the cause, then resume with\n"
            f"  {resume_command}\n"
            "(shards skip the slides they finished, so only the missing work is redone)."
        )
        super().__init__("\n".join(lines))


class JobsLog:
    """``jobs.json`` in the log folder: every submission of this run, its job ids and its end."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "jobs.json"

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"submissions": []}
        data = read_json(self.path)
        data.setdefault("submissions", [])
        return data

    def submitted(
        self, stage: str, job_ids: list[str], shards: list[list[str]] | None, folder: Path
    ) -> None:
        data = self.read()
        data["submissions"].append(
            {
                "stage": stage,
                "job_ids": job_ids,
                "array_job_id": job_ids[0].split("_")[0] if shards is not None else None,
                "shards": shards,
                "folder": str(folder),
                "submitted_at": _now(),
                "status": "running",
            }
        )
        write_json_atomic(self.path, data)

    def finished(self, job_ids: list[str], status: str, failed: list[JobOutcome] | None = None) -> None:
        data = self.read()
        for entry in reversed(data["submissions"]):
            if entry.get("job_ids") == job_ids:
                entry["status"] = status
                entry["finished_at"] = _now()
                entry["failed"] = [
                    {"index": f.index, "job_id": f.job_id, "slides": f.slides, "error": f.error,
                     "stdout": str(f.stdout), "stderr": str(f.stderr)}
                    for f in failed or []
                ]
                break
        write_json_atomic(self.path, data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
