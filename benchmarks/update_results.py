"""Paste a leaderboard table (leaderboard.md of a `retr eval --suite` run) into benchmarks/RESULTS.md between the
markers <!-- leaderboard:start --> and <!-- leaderboard:end -->.

    .venv/bin/python benchmarks/update_results.py out/leaderboard
"""
from __future__ import annotations

import sys
from pathlib import Path

START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def main() -> None:
    run = Path(sys.argv[1])
    results = Path(__file__).with_name("RESULTS.md")
    table = (run / "leaderboard.md").read_text().strip()
    text = results.read_text()
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    results.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"updated {results}")


if __name__ == "__main__":
    main()
