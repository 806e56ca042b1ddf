"""Run directories → one self-contained HTML page with plots and tables."""

from crossdistill.report.report import ReportError, RunData, load_run, render_report, write_report

__all__ = ["ReportError", "RunData", "load_run", "render_report", "write_report"]
