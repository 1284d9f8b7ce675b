"""Tests of semgap.report.render: one frame, three renderings (Markdown, LaTeX, CSV), and a report.tex that compiles."""
import io
import shutil
import subprocess

import pandas
import pytest

from semgap.report import writer

from semgap.analysis import verdicts
from semgap.report.render import Section, Table, count, latex_escape, pct

from .synthetic import run_json, standard

TABLE = Table.from_rows("demo", "Demo 100% & more", ("case", "bytes", "saving", "why"),
                        [("a|b", 1234567, 0.25, "x < y"), ("c_d", None, -0.5, None)],
                        {"bytes": count, "saving": pct}, prose=("why",))


def test_values_stay_numbers_in_csv_and_read_alike_in_markdown_and_latex():
    frame = pandas.read_csv(io.StringIO(TABLE.csv()))
    assert frame["bytes"].tolist()[0] == 1234567 and frame["saving"].tolist() == [0.25, -0.5]
    assert TABLE.display().values.tolist() == [["a|b", "1,234,567", "+25.0%", "x < y"], ["c_d", "-", "-50.0%", "-"]]
    header, rule, first, second = TABLE.markdown()[0].splitlines()
    assert [cell.strip()[-1] == ":" for cell in rule.strip("|").split("|")] == [False, True, True, False]  # numbers right
    assert [c.strip() for c in first.strip("|").split(" | ")] == ["a\\|b", "1,234,567", "+25.0%", "x < y"]
    tex = TABLE.latex("gpt2-test, 2026")
    assert "\\caption{Demo 100\\% \\& more. gpt2-test, 2026}" in tex and "\\label{tab:semgap-demo}" in tex
    assert "{lrrp{5cm}}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "a\\textbar{}b & 1,234,567 & +25.0\\% & x \\textless{} y \\\\" in tex
    assert "c\\_d & - & -50.0\\% & - \\\\" in tex


def test_a_table_without_rows():
    empty = Table.from_rows("none", "Nothing", ("a", "b"), [])
    assert empty.markdown() == ["_none_", ""] and empty.latex("ctx") == "% Nothing: none\n"
    assert Section("S", ("intro", ""), (empty,)).markdown() == ["## S", "", "intro", "", "_none_", ""]


def test_latex_escape():
    assert latex_escape("a_b & 5% #1 {x} ~ ^ $ \\ < > |") == (
        "a\\_b \\& 5\\% \\#1 \\{x\\} \\textasciitilde{} \\textasciicircum{} \\$ \\textbackslash{} \\textless{} "
        "\\textgreater{} \\textbar{}")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (apt-get install "
                                                               "texlive-latex-recommended): report.tex not compiled")
def test_report_tex_compiles_in_a_minimal_document(tmp_path):
    data = run_json(standard("prefill") + standard())
    data["semgap"]["failures"] = [{"name": "test_semantic_gap[x_y-decode]", "reason": "a & b < 100% of {c}"}]
    writer.write(verdicts.compute(data, n_resamples=200), data, tmp_path)
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n"
                                        "\\begin{document}\n\\input{report.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Overfull \\hbox" not in proc.stdout  # wide tables are scaled down to the text width
    assert (tmp_path / "paper.pdf").stat().st_size > 0
