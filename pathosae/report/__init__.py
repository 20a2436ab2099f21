"""A self-contained HTML report of a run: a person can judge the run without the app."""

from pathosae.report.build import build_report

__all__ = ["build_report"]
