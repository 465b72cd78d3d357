"""Prints how many fuzz inputs each reader ran, and how many it refused in one line."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    from fuzz.harness import COUNTS, FAILURES

    if COUNTS:
        rows = ", ".join(f"{reader} {COUNTS[reader]} ({FAILURES[reader]} refused)" for reader in sorted(COUNTS))
        terminalreporter.write_line(f"fuzz inputs: {sum(COUNTS.values())} in all; {rows}")
