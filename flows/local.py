"""The preprocess flow run in this process, as `vitonprep preprocess`, `vitonprep demo` and the benchmarks
run it: with the CLI's progress bar and, when a Prefect server is configured, the run's UI link."""

from __future__ import annotations

import logging
import sys
from typing import Any

from flows.cli.common import progress_bar


class RunLink(logging.Handler):
    """Prints the run's UI page on stderr as it starts, when the run goes to a configured Prefect server
    (the temporary server of a run without one is gone when the command ends: no link then)."""

    def __init__(self, ui_url: str):
        super().__init__()
        self.ui_url, self.page = ui_url, None

    def emit(self, record: logging.LogRecord) -> None:
        from flows.report import flow_run_page

        self.page = flow_run_page(self.ui_url, record.flow_run_id)
        print(f"watch the run at {self.page}", file=sys.stderr, flush=True)


def configured_ui_url() -> str | None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return settings.ui_url if settings.api.url else None


def run_flow(config, show_progress: bool = True, **groups: Any) -> dict[str, Any]:
    """The preprocess flow on `config` and the other parameter groups given (`selection`, `policy`)."""
    from flows.preprocess import preprocess
    from flows.report import progress_logger, run_logger
    from tasks.engine.workers import warm_up

    warm_up(config)  # the worker processes start while Prefect starts its temporary API server
    ui_url = configured_ui_url()
    link = RunLink(ui_url) if ui_url else None
    if link is not None:
        run_logger.addHandler(link)
        run_logger.setLevel(logging.INFO)
    try:
        with progress_bar(progress_logger, show_progress, "preprocess"):
            summary = preprocess(config, **groups)
    finally:
        if link is not None:
            run_logger.removeHandler(link)
    if link is not None and link.page:
        summary = {**summary, "ui_url": link.page}
    return summary
