"""One report table as a pandas DataFrame, and its three renderings: Markdown, LaTeX (booktabs) and CSV.

A :class:`Table` holds values (numbers stay numbers, a missing value is None/NaN), which is what
its CSV holds. Each column may name how its cells read (a percentage, bytes, a ratio); that one
display frame is what both Markdown and LaTeX print, so no format has formatting code of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd

MISSING = "-"
#: A LaTeX table wider than the text is scaled down to its width (never up): graphicx's \width is the natural one.
LATEX_FIT = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"
LATEX_PACKAGES = ("booktabs", "graphicx")
# The default OT1 font encoding prints <, > and | as other glyphs, so they are escaped too.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


# ---------------------------------------------------------------- how a value reads

def pct(x: float) -> str:
    """A signed share: 0.636 -> +63.6%."""
    return f"{x:+.1%}"


def share(x: float) -> str:
    """An unsigned share in whole per cent: 0.15 -> 15%."""
    return f"{x:.0%}"


def percent(x: float) -> str:
    """An unsigned share to a tenth of a per cent: 0.0046 -> 0.5%."""
    return f"{x:.1%}"


def count(x: float) -> str:
    """Bytes or any count, with thousands separators: 1234.0 -> 1,234."""
    return f"{x:,.0f}"


def ratio(x: float) -> str:
    """A ratio: 1.2345 -> x1.234."""
    return f"x{x:.3f}"


def fixed(digits: int) -> Callable[[float], str]:
    """A number with ``digits`` decimals."""
    return lambda x: f"{x:.{digits}f}"


def general(x: float) -> str:
    """Three significant digits (p-values, errors)."""
    return f"{x:.3g}"


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Table:
    """A report table: ``frame`` holds its values, ``formats`` how a column's cells read (default: ``str``).

    ``key`` names its CSV (``tables/<key>.csv``) and LaTeX label; ``prose`` lists columns of
    sentences, which LaTeX wraps in a paragraph column.
    """

    key: str
    title: str
    frame: pd.DataFrame
    formats: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    prose: tuple[str, ...] = ()

    @classmethod
    def from_rows(cls, key: str, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
                  formats: dict[str, Callable[[Any], str]] | None = None, prose: Sequence[str] = ()) -> "Table":
        return cls(key, title, pd.DataFrame([list(row) for row in rows], columns=list(header), dtype=object),
                   dict(formats or {}), tuple(prose))

    @property
    def empty(self) -> bool:
        return self.frame.empty

    def numeric(self, column: str) -> bool:
        """Whether every value the column has is a number (such columns align right)."""
        values = [v for v in self.frame[column] if not is_missing(v)]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    def _alignment(self) -> list[str]:
        return ["right" if self.numeric(column) else "left" for column in self.frame.columns]

    def display(self) -> pd.DataFrame:
        """Every cell as the text it reads as; a missing value reads ``-``."""
        def column(name: str) -> pd.Series:
            form = self.formats.get(name, str)
            return self.frame[name].map(lambda v: MISSING if is_missing(v) else form(v)).astype(object)
        return pd.DataFrame({name: column(name) for name in self.frame.columns}, columns=self.frame.columns)

    def markdown(self) -> list[str]:
        """The table as Markdown lines and a blank line (``_none_`` when it has no row)."""
        if self.empty:
            return ["_none_", ""]
        cells = self.display().map(lambda text: text.replace("|", "\\|").replace("\n", " "))
        return [cells.to_markdown(index=False, disable_numparse=True, colalign=self._alignment()), ""]

    def latex(self, context: str) -> str:
        """A booktabs ``table`` float, captioned with its title and ``context``; a comment when it has no row."""
        if self.empty:
            return f"% {self.title}: none\n"
        cells = self.display().map(latex_escape).rename(columns=latex_escape)
        text = cells.to_latex(
            index=False, escape=False, caption=latex_escape(f"{self.title}. {context}"),
            label=f"tab:semgap-{self.key}", position="htbp",
            column_format="".join(r"p{5cm}" if column in self.prose else align[0]
                                  for column, align in zip(self.frame.columns, self._alignment())),
        )
        text = text.replace("\\begin{tabular}", "\\centering\n\\small\n" + LATEX_FIT + "\\begin{tabular}", 1)
        return text.replace("\\end{tabular}\n", "\\end{tabular}}\n", 1)

    def csv(self) -> str:
        return self.frame.to_csv(index=False)


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


@dataclass(frozen=True)
class Section:
    """A section of report.md: Markdown lines before its tables, the tables, and lines after them."""

    title: str
    before: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    after: tuple[str, ...] = ()

    def markdown(self) -> list[str]:
        lines = [f"## {self.title}", "", *self.before]
        for table in self.tables:
            lines += table.markdown()
        return lines + list(self.after)


def latex_document_body(sections: Sequence[Section], context: str, header: Sequence[str]) -> str:
    """Every table of ``sections`` as LaTeX, after ``header`` comment lines and the packages they need."""
    needs = f"% needs \\usepackage{{{','.join(LATEX_PACKAGES)}}} in the preamble"
    lines = [*(f"% {line}" for line in header), needs, ""]
    return "\n".join(lines) + "\n".join(table.latex(context) for section in sections for table in section.tables)
