"""What `mlctl status` prints about data contracts."""

from __future__ import annotations

from rich.console import Console

from pipelines.console import validation_table


def test_validation_table_names_flagged_days_and_quarantine() -> None:
    summary = {
        "days": ["2025-01-01", "2025-01-02", "2025-01-03"],
        "tables": {
            "events": {
                "passed": 1,
                "warnings": 1,
                "critical": 1,
                "warnings_days": ["2025-01-02"],
                "critical_days": ["2025-01-03"],
                "quarantined": ["2025-01-03"],
            },
            "users": {
                "passed": 3,
                "warnings": 0,
                "critical": 0,
                "warnings_days": [],
                "critical_days": [],
                "quarantined": [],
            },
        },
    }
    out = Console(width=160, record=True)
    out.print(validation_table(summary))
    text = out.export_text()
    assert "2025-01-01 .. 2025-01-03" in text
    events = next(line for line in text.splitlines() if "events" in line)
    assert "2025-01-02" in events and "2025-01-03" in events
    users = next(line for line in text.splitlines() if "users" in line)
    assert "│ 3 " in users
