"""Figures a test measures on its way (seconds from a fault to a run's end, from an upload to
the run it starts...): printed at the end of the session, never asserted. Speed belongs to
benchmarks/; these only keep the README's recovery figures honest run after run.

    measured.note(request, "landing: upload -> run created", 12.3, "s")

They travel as the report's user_properties, so they reach the summary from pytest-xdist's
workers too."""

from __future__ import annotations

KEY = "conveyor.measured"


def note(request, what: str, value: float, unit: str = "s") -> None:
    request.node.user_properties.append((KEY, (what, round(float(value), 1), unit)))


def summary(terminalreporter) -> None:
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == KEY:
                    rows.append(value)
    if not rows:
        return
    terminalreporter.section("measured on the way (not asserted)")
    for what, value, unit in rows:
        terminalreporter.write_line(f"{value:>10} {unit:<3} {what}")
