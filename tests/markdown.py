"""Read the tables of a report.md back as rows, so tests check cells rather than padding."""
from __future__ import annotations


def tables(md: str, heading: str) -> list[list[dict[str, str]]]:
    """Every table of the section ``## <heading>``, each as rows of {column: cell}."""
    lines = md.splitlines()
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    found, block = [], []
    for line in lines[start:end] + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip()[1:-1].split(" | ")])
            continue
        if block:
            header, _, *rows = block
            found.append([dict(zip(header, row)) for row in rows])
            block = []
    return found


def rows(md: str, heading: str) -> list[dict[str, str]]:
    """The rows of the section's only (or first) table; [] when it has none."""
    found = tables(md, heading)
    return found[0] if found else []
