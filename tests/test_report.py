"""Tests of semgap.report.writer and semgap.analysis.compare: files written, terminal lines, run comparison and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pandas
import pytest

from semgap.analysis import compare, verdicts

from semgap.report import plots, writer

from .markdown import rows
from .synthetic import case, legacy, run_json, standard, variant

REPO = Path(__file__).resolve().parents[1]


def both_phases(**kw):
    return run_json(standard("prefill") + standard("decode", **kw))


# ---------------------------------------------------------------- write / markdown

def test_write_creates_report_files_with_their_source(tmp_path):
    data = both_phases()
    paths = writer.write(verdicts.compute(data), data, tmp_path / "out")
    tables = {p.name for p in paths if p.parent.name == "tables"}
    assert sorted(p.name for p in paths if p.parent.name == "out") == [
        "latency_vs_bytes.png", "report.md", "report.tex", "verdicts.json", "where_gap.md"]  # no ablation: no tradeoff
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Plots" in md and f"*latency_vs_bytes.png*: {plots.PLOTS[0].caption}" in md and "tradeoff" not in md
    assert {"headline_verdicts.csv", "cases.csv", "ablation.csv", "conditions.csv"} <= tables
    assert "load.csv" not in tables and "failures.csv" not in tables  # a table without rows has no CSV
    saved = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert saved["source"] == {"run_id": "2026-11-30T00:00:00.000001 abc123", "written_by": "plugin"}
    assert [(h["hypothesis"], h["binding_baseline"], h["verdict"]) for h in saved["headlines"][:2]] == [
        ("H1", "remote_cache", "SUPPORTED"), ("H2", "remote_cache", "SUPPORTED")]
    assert [p["baseline"] for p in saved["headlines"][0]["pairwise"]] == ["naive", "remote_cache"]
    assert [(v["hypothesis"], v["baseline"], v["binding"]) for v in saved["verdicts"][:4]] == [
        ("H1", "remote_cache", True), ("H1", "naive", False), ("H2", "remote_cache", True), ("H2", "naive", False)]
    md = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## Design and method", "## Headline verdicts (against every blind baseline)",
                    "## Pairwise verdicts (each blind baseline)", "## H1 cross-check", "## Load",
                    "## Per case", "## Against local", "## Against naive", "## Against remote_cache", "## Ablation",
                    "## RTT projection", "## Cost model", "## Failures", "## Conditions", "## Where the gap is"):
        assert heading in md
    assert "- Blocks: 10 measured of 10 planned; 3 rounds per block after 1 warm-up(s); block order seed 7" in md
    assert "Holm-adjusted over the run's 4 pairwise H2 test(s)" in md
    assert "Holm-adjusted over the run's 2 H2 headline(s)" in md
    h2_decode = next(r for r in rows(md, "Headline verdicts (against every blind baseline)")
                     if r["hypothesis"] == "H2" and r["phase"] == "decode")
    assert {k: h2_decode[k] for k in ("model", "weights", "steps", "blind baselines", "binding baseline", "p",
                                      "p Holm", "blocks", "threshold", "verdict", "pairwise")} == {
        "model": "gpt2-test", "weights": "random", "steps": "5", "blind baselines": "2",
        "binding baseline": "remote_cache", "p": "0.000977", "p Holm": "0.00195", "blocks": "10", "threshold": "15%",
        "verdict": "SUPPORTED", "pairwise": "naive SUPPORTED; remote_cache SUPPORTED"}
    pairwise = [r for r in rows(md, "Pairwise verdicts (each blind baseline)")
                if r["hypothesis"] == "H2" and r["phase"] == "decode"]
    assert [(r["baseline"], r["binding"], r["p Holm"], r["rounds/block"]) for r in pairwise] == [
        ("remote_cache", "binding", "0.00391", "3"), ("naive", "-", "0.00391", "3")]
    assert "**tcp**: kernel TCP socket counters" in md and "**link**" not in md
    conditions = {r["item"]: r["value"] for r in rows(md, "Conditions")}
    assert conditions["machine (CPU)"] == "Test CPU 9000" and conditions["commit"] == "abc123 (dirty)"
    assert conditions["run status"] == "complete" and conditions["dtype"] == "bfloat16"
    assert "This run is" not in md
    assert (tmp_path / "out" / "latency_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"


def test_every_table_is_the_same_frame_in_markdown_latex_and_csv(tmp_path):
    data = both_phases()
    writer.write(verdicts.compute(data), data, tmp_path)
    md, tex = (tmp_path / "report.md").read_text(), (tmp_path / "report.tex").read_text()
    cases = pandas.read_csv(tmp_path / "tables" / "cases.csv")
    assert len(cases) == len(rows(md, "Per case")) == 8
    naive = cases[(cases["case"] == "naive") & (cases["phase"] == "decode")].iloc[0]
    assert naive["sent B/round"] == 1_000_100  # a number in the CSV ...
    md_naive = next(r for r in rows(md, "Per case") if r["case"] == "naive" and r["phase"] == "decode")
    assert md_naive["sent B/round"] == "1,000,100"  # ... that reads the same in Markdown ...
    assert "decode & - & 5 & naive & blind & 10 & 30 &" in tex and "& 1,000,100 & 100,100 & tcp &" in tex  # ... and LaTeX
    assert tex.count("\\begin{table}") == tex.count("\\toprule") == len(list((tmp_path / "tables").glob("*.csv")))
    assert "\\caption{Per case. Model gpt2-test (random weights), bfloat16, loopback link; Test CPU 9000, 2 cores, " \
           "cpu; 2026-11-30T00:00:00.000001.}" in tex


def test_a_rewritten_report_leaves_no_stale_table(tmp_path):
    failed = both_phases()
    failed["semgap"]["failures"] = [{"name": "test_semantic_gap[naive-decode-b03]", "reason": "RuntimeError: boom"}]
    writer.write(verdicts.compute(failed, n_resamples=200), failed, tmp_path)
    assert (tmp_path / "tables" / "failures.csv").exists()
    clean = both_phases()
    writer.write(verdicts.compute(clean, n_resamples=200), clean, tmp_path)
    assert not (tmp_path / "tables" / "failures.csv").exists() and (tmp_path / "tables" / "cases.csv").exists()


def test_report_shows_lossy_labels_load_warnings_and_an_incomplete_run():
    data = run_json(standard(agreement=0.8), loads={2: 3.1}, run_status="interrupted", interrupted_by="SIGTERM")
    rv = verdicts.compute(data)
    md = writer.markdown(rv, data)
    assert md.splitlines()[2] == ("> **This run is INTERRUPTED by SIGTERM: its verdicts rest only on the blocks that "
                                  "finished and must not be quoted as a complete run's.**")
    verdict_cells = [r["verdict"] for heading in ("Headline verdicts (against every blind baseline)",
                                                  "Pairwise verdicts (each blind baseline)")
                     for r in rows(md, heading)]
    assert verdict_cells == ["LOSSY (agreement 0.800)"] * 6
    assert "**Warning: these blocks ran on an overloaded machine" in md
    (warning,) = rows(md, "Load")
    assert list(warning.values())[:5] == ["2", "3.10", "2", "0.0", "load 3.10 > 2 cores"]
    assert warning["H2 verdicts it fed"].startswith("H2 gpt2-test decode (5 steps) vs remote_cache; ")
    tex = writer.latex(rv, data)
    assert tex.count("INTERRUPTED RUN: only the blocks that finished.}") == tex.count("\\caption{") > 0


def test_the_link_cross_check_sits_beside_h1():
    data = run_json([case("remote_cache", link_extra=5000), case("semantic", latency_s=0.06, payload=(300, 300),
                                                                 link_extra=200, wire_tcp_bytes_retransmitted_sent_rounds=[7, 0, 0])])
    md = writer.markdown(verdicts.compute(data), data)
    (check,) = rows(md, "H1 cross-check: link bytes and retransmissions (never judged)")
    assert list(check.values()) == ["gpt2-test", "decode", "-", "5", "remote_cache", "tcp", "+63.6%", "+91.7%", "0",
                                    "-"]
    assert "**link**: veth interface counters" in md


def test_conditions_total_the_retransmitted_bytes():
    data = both_phases()

    def row() -> str:
        markdown = writer.markdown(verdicts.compute(data), data)
        return {r["item"]: r["value"] for r in rows(markdown, "Conditions")}["TCP retransmitted (in link bytes)"]

    assert row() == "-"  # a run from before the field: nothing claimed
    for index, bench in enumerate(data["benchmarks"]):
        n = len(bench["stats"]["data"])
        bench["extra_info"]["wire_tcp_bytes_retransmitted_sent_rounds"] = [0] * (n - 1) + [65_483 * (index == 3)]
        bench["extra_info"]["wire_tcp_bytes_retransmitted_received_rounds"] = [None] * n
    assert row() == "sent 65,483, received unknown; 1 rounds with any"


def test_failures_only_run_still_writes_a_report(tmp_path):
    data = {"benchmarks": [], "semgap": {"failures": [{"name": "test_semantic_gap[semantic-decode]",
                                                       "reason": "RuntimeError: boom\ntraceback..."}],
                                         "warnings": ["netns unavailable"]}}
    rv = verdicts.compute(data)
    paths = writer.write(rv, data, tmp_path)
    assert sorted(p.name for p in paths) == ["conditions.csv", "failures.csv", "report.md", "report.tex", "verdicts.json",
                                               "where_gap.md"]
    md = (tmp_path / "report.md").read_text()
    assert rows(md, "Failures") == [{"benchmark": "test_semantic_gap[semantic-decode]", "reason": "RuntimeError: boom"}]
    assert "measurement warning: netns unavailable" in md
    assert writer.terminal_lines(rv) == []


def test_rate_plot_only_with_rates(tmp_path):
    specs = [case("local", latency_s=0.05)]
    for rate, bps, sem in (("100mbit", 10**8, 0.06), ("1gbit", 10**9, 0.08), ("10gbit", 10**10, 0.09)):
        specs += [case("remote_cache", rate=rate, bps=bps), case("semantic", latency_s=sem, rate=rate, bps=bps)]
    data = run_json(specs, link="netns", noise=0.0)
    names = {p.name for p in writer.write(verdicts.compute(data), data, tmp_path)}
    assert "latency_vs_rate.png" in names
    md = (tmp_path / "report.md").read_text()
    assert "## Link-rate crossover (H2)" in md and "interpolated" in md


def test_a_single_rate_draws_no_rate_plot_and_no_ablation_no_tradeoff(tmp_path):
    data = run_json([case("local", latency_s=0.05), case("remote_cache", rate="1gbit", bps=10**9),
                     case("semantic", latency_s=0.06, rate="1gbit", bps=10**9)], link="netns", noise=0.0)
    names = {p.name for p in writer.write(verdicts.compute(data), data, tmp_path)}
    assert "latency_vs_rate.png" not in names and "tradeoff.png" not in names and "latency_vs_bytes.png" in names
    ablation = run_json(standard() + [variant("topk")])
    assert "tradeoff.png" in {p.name for p in writer.write(verdicts.compute(ablation), ablation, tmp_path / "a")}


@pytest.fixture
def drawn(monkeypatch):
    """latency_vs_bytes's figure, drawn (not saved) for a run of both phases."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rv = verdicts.compute(both_phases())
    plots.latency_vs_bytes(rv, Path("unused.png"))
    FigureCanvasAgg(figures[0]).draw()
    return rv, figures[0]


def test_the_thresholds_are_drawn_against_the_binding_baseline(drawn):
    rv, fig = drawn
    decode = [s for s in rv.summaries if s.phase == "decode"]
    binding = next(s for s in decode if s.label == "remote_cache")  # both headlines bind on it here
    marks = plots.threshold_marks(rv, decode)
    assert marks["H1"][0] == pytest.approx(0.7 * (binding.bytes_sent_per_round + binding.bytes_received_per_round))
    assert marks["H2"][0] == pytest.approx(0.85 * binding.median_latency_ms)
    ax = next(ax for ax in fig.axes if "decode" in ax.get_title())
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines[marks["H1"][1]].get_xdata()) == pytest.approx([marks["H1"][0]] * 2)
    assert list(lines[marks["H2"][1]].get_ydata()) == pytest.approx([marks["H2"][0]] * 2)


def test_legends_sit_beside_the_data_and_ticks_are_plain_numbers(drawn):
    _, fig = drawn
    for ax in fig.axes:
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # right of the panel
        labels = [t.get_text() for axis in (ax.xaxis, ax.yaxis) for minor in (False, True)
                  for t in axis.get_ticklabels(minor=minor) if t.get_text()]
        assert labels and not [label for label in labels if "$" in label or "times" in label], labels
    assert [plots.plain_number(v) for v in (60, 0.5, 2000, 1.5e6)] == ["60", "0.5", "2k", "1.5M"]


def test_plot_legends_mark_a_lossy_candidate():
    rv = verdicts.compute(run_json(standard(agreement=0.8)))
    semantic = [s for s in rv.summaries if s.label == "semantic"]
    assert plots._legend("semantic", semantic, rv.min_agreement) == "semantic (LOSSY, agreement 0.800)"
    assert plots._legend("semantic", semantic, 0.8) == "semantic"


# ---------------------------------------------------------------- terminal lines

def test_terminal_lines_show_the_headline_verdicts():
    meaning, design, *lines, others = writer.terminal_lines(verdicts.compute(both_phases(semantic_latency=0.095)))
    assert meaning.startswith("reduction = 1 - semantic/baseline") and "every blind baseline (2)" in meaning
    assert design == "thresholds H1 30%, H2 15%; H2 on 10 blocks x 3 rounds, headline p Holm-adjusted over 2 headline(s)"
    assert len(lines) == 4 and others == "8 pairwise verdict(s) beneath the headlines: see report.md"
    h1_decode = next(ln for ln in lines if ln.startswith("H1") and "decode" in ln)
    assert h1_decode.endswith("+63.6% exact tcp vs remote_cache  SUPPORTED")
    h2_decode = next(ln for ln in lines if ln.startswith("H2") and "decode" in ln)
    assert "p=1 vs remote_cache" in h2_decode and h2_decode.endswith("NOT SUPPORTED")
    assert all(len(ln) < 100 for ln in lines)


def test_terminal_lines_name_the_binding_baseline_not_the_most_favourable():
    specs = [case("remote_cache", latency_s=0.1), case("op_sync", latency_s=0.065, payload=(350, 350)),
             case("semantic", latency_s=0.06, payload=(300, 300))]
    _, _, h1, h2, _ = writer.terminal_lines(verdicts.compute(run_json(specs), n_resamples=500))
    assert h1.endswith("+11.1% exact tcp vs op_sync  NOT SUPPORTED") and h2.endswith("vs op_sync  NOT SUPPORTED")


def test_terminal_lines_say_lossy_load_and_status():
    data = run_json(standard(agreement=0.5), loads={1: 4.0}, run_status="failed")
    lines = writer.terminal_lines(verdicts.compute(data))
    assert lines[0].startswith("semgap: This run is FAILED:")
    assert sum(ln.endswith("LOSSY: token agreement 0.500 < min agreement 1") for ln in lines) == 2
    assert lines[-1] == "load warning: block 1: load 4.00 > 2 cores; fed 2 H2 verdict(s)"


@pytest.mark.parametrize("blocks,interval,p", [(1, "no interval (1 block: an interval needs 2)", 0.5),
                                                (2, "[+", 0.25)])
def test_an_inconclusive_headline_line_ends_with_its_reason(blocks, interval, p):
    h1, h2 = writer.terminal_lines(verdicts.compute(run_json(standard(), blocks=blocks)))[2:4]
    assert h1.endswith("SUPPORTED")  # a verdict that needs no reason gets none
    assert interval in h2
    assert h2.endswith(f"vs remote_cache  INCONCLUSIVE: too few blocks ({blocks}): smallest attainable p={p} "
                       "is not < alpha=0.05")


# ---------------------------------------------------------------- compare

def tight(**kw):
    return run_json(standard(), drift=0.05, noise=0.01, **kw)


def test_compare_identical_runs_flags_nothing():
    result = compare.compare_runs(tight(), tight())
    assert not result.has_regressions and result.shares_a_case
    lines = compare.lines(result)
    assert lines[-1] == "0 byte regression(s), 0 latency regression(s)"
    assert sum("within noise band" in ln for ln in lines) == 4


def test_compare_flags_any_byte_increase_exactly():
    after = tight()
    for bench in after["benchmarks"]:
        if bench["extra_info"]["mode"] == "semantic":
            bench["extra_info"]["wire_tcp_bytes_received_rounds"] = [401, 401, 401]
    result = compare.compare_runs(tight(), after)
    assert result.byte_regressions == ["gpt2-test semantic-decode (5 steps)"] and not result.latency_regressions
    assert "bytes 800 -> 801 B/round [tcp] +1 (+0.1%) BYTE REGRESSION" in "\n".join(compare.lines(result))


def test_a_bytes_median_over_blocks_ignores_one_odd_block():
    after = tight()
    next(b for b in after["benchmarks"] if b["extra_info"]["mode"] == "semantic")["extra_info"][
        "wire_tcp_bytes_sent_rounds"] = [900, 900, 900]
    assert not compare.compare_runs(tight(), after).byte_regressions


def test_latency_is_a_regression_only_beyond_the_noise_band():
    slower = run_json(standard(semantic_latency=0.09), drift=0.05, noise=0.01)  # +50 %
    result = compare.compare_runs(tight(), slower)
    assert result.latency_regressions == ["gpt2-test semantic-decode (5 steps)"]
    a_little = run_json(standard(semantic_latency=0.066), drift=0.05, noise=0.01)  # +10 %: inside the 20 % band
    assert not compare.compare_runs(tight(), a_little).has_regressions
    assert compare.compare_runs(tight(), a_little, noise_band=0.05).latency_regressions
    faster = compare.compare_runs(slower, tight())
    assert not faster.has_regressions and sum(ln.endswith("faster") for ln in compare.lines(faster)) == 1


def test_runs_without_blocks_never_show_a_latency_regression():
    result = compare.compare_runs(legacy(tight()), legacy(run_json(standard(semantic_latency=0.2))))
    assert not result.latency_regressions
    assert sum("too few blocks to judge" in ln for ln in compare.lines(result)) == 4


def test_compare_matches_cases_not_benchmark_names():
    result = compare.compare_runs(legacy(tight()), tight())  # 1 benchmark per case against 10 per case
    assert len(result.changes) == 4 and not result.only_in_a and not result.only_in_b
    assert {(c.blocks_before, c.blocks_after) for c in result.changes} == {(1, 10)}


def test_runs_sharing_no_case():
    other = run_json([case("remote_cache", "prefill"), case("semantic", "prefill", 0.06)])
    result = compare.compare_runs(tight(), other)
    assert not result.shares_a_case
    assert "A and B share no case: nothing compared" in compare.lines(result)


# ---------------------------------------------------------------- CLI

def subprocess_cli(*args):
    return subprocess.run([sys.executable, "-m", "semgap.report", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli(capsys):
    """``python -m semgap.report ARGS`` in this process (fast); one test runs the real command."""
    def run(*args):
        try:
            returncode = writer.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            returncode = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, returncode, out, err)
    return run


def saved(path, data):
    path.write_text(json.dumps(data))
    return path


def test_cli_writes_beside_the_run_by_default(tmp_path, cli):
    src = saved(tmp_path / "run.json", both_phases())
    proc = subprocess_cli(src, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run.report" / "report.md").exists()
    assert (tmp_path / "run.report" / "latency_vs_bytes.png").exists()
    assert "H2 latency decode" in proc.stdout
    assert json.loads((tmp_path / "run.report" / "verdicts.json").read_text())["source"]["written_by"] == \
        "semgap.report"
    assert cli(src).returncode == 0  # its own regeneration it may replace


def test_cli_writes_every_round_as_csv(tmp_path, cli):
    src = saved(tmp_path / "run.json", both_phases())
    assert cli(src, "--out", tmp_path / "rep").returncode == 0
    assert not (tmp_path / "rep" / "rounds.csv").exists()  # only when asked
    proc = cli(src, "--out", tmp_path / "rep", "--csv")
    assert proc.returncode == 0 and f"wrote {tmp_path / 'rep' / 'rounds.csv'}" in proc.stdout
    frame = pandas.read_csv(tmp_path / "rep" / "rounds.csv")
    assert len(frame) == 8 * 10 * 3 and {"latency_ms", "wire_tcp_bytes_received", "block", "round"} <= set(frame)
    assert cli(src, "--out", tmp_path / "rep", "--csv", tmp_path / "elsewhere" / "all.csv").returncode == 0
    assert pandas.read_csv(tmp_path / "elsewhere" / "all.csv").equals(frame)
    proc = cli(src, "--out", tmp_path / "rep", "--csv", tmp_path / "rep" / "report.md" / "x.csv")
    assert proc.returncode == 2 and "cannot write the rounds CSV" in proc.stderr


def test_cli_never_writes_over_a_report_it_did_not_regenerate_from_the_same_run(tmp_path, cli):
    data = both_phases()
    src = saved(tmp_path / "run.json", data)
    writer.write(verdicts.compute(data), data, tmp_path / "results")  # what the run wrote itself
    before = (tmp_path / "results" / "verdicts.json").read_text()
    proc = cli(src, "--out", tmp_path / "results", "--h2", 0.5)
    assert proc.returncode == 2 and "holds the report this run wrote itself" in proc.stderr
    assert (tmp_path / "results" / "verdicts.json").read_text() == before
    other = saved(tmp_path / "other.json", {**data, "datetime": "2026-12-01T00:00:00"})
    assert cli(other, "--out", tmp_path / "run.report").returncode == 0
    proc = cli(src, "--out", tmp_path / "run.report")
    assert proc.returncode == 2 and "the report of another run (2026-12-01T00:00:00 abc123)" in proc.stderr
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "report.md").write_text("notes")
    assert "a report of unknown origin" in cli(src, "--out", tmp_path / "stray").stderr
    assert cli(src, "--out", tmp_path / "results", "--h2", 0.5, "--force").returncode == 0
    assert json.loads((tmp_path / "results" / "verdicts.json").read_text())["h2"] == 0.5


def test_cli_uses_the_settings_the_run_saved_unless_told_otherwise(tmp_path, cli):
    src = saved(tmp_path / "run.json", run_json(standard(agreement=0.9), h1=0.9, h2=0.9))
    assert cli(src, "--out", tmp_path / "saved").returncode == 0
    dump = json.loads((tmp_path / "saved" / "verdicts.json").read_text())
    assert dump["h1"] == 0.9 and {v["verdict"] for v in dump["verdicts"]} == {"LOSSY"}
    assert cli(src, "--out", tmp_path / "told", "--h1", 0.3, "--min-agreement", 0.9).returncode == 0
    dump = json.loads((tmp_path / "told" / "verdicts.json").read_text())
    assert (dump["h1"], dump["min_agreement"]) == (0.3, 0.9) and "LOSSY" not in {v["verdict"] for v in dump["verdicts"]}


def test_cli_compares_two_runs(tmp_path, cli):
    a = saved(tmp_path / "a.json", tight())
    more = tight()
    for bench in more["benchmarks"]:
        if bench["extra_info"]["mode"] == "semantic":
            bench["extra_info"]["wire_tcp_bytes_sent_rounds"] = [450] * 3
    b = saved(tmp_path / "b.json", more)
    proc = cli(a, b)
    assert proc.returncode == 0, proc.stderr
    assert "BYTE REGRESSION" in proc.stdout and "1 byte regression(s)" in proc.stdout
    assert cli(a, b, "--out", tmp_path / "res", "--fail-on-regression").returncode == 1
    assert cli(a, a, "--out", tmp_path / "same", "--fail-on-regression").returncode == 0


def test_cli_refuses_runs_that_share_no_case(tmp_path, cli):
    a = saved(tmp_path / "a.json", tight())
    b = saved(tmp_path / "b.json", run_json([case("remote_cache", "prefill"), case("semantic", "prefill", 0.06)]))
    proc = cli(a, b, "--fail-on-regression")
    assert proc.returncode == 2 and "share no case" in proc.stderr
    assert not (tmp_path / "b.report").exists()


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"machine_info": {}}', "missing 'benchmarks'"),
    ('{"benchmarks": []}', "no semgap benchmarks"),
])
def test_cli_rejects_invalid_input(tmp_path, cli, content, message):
    src = tmp_path / "bad.json"
    src.write_text(content)
    proc = cli(src, "--out", tmp_path / "res")
    assert proc.returncode == 2
    assert message in proc.stderr and "bad.json" in proc.stderr
    assert not (tmp_path / "res").exists()


def test_cli_rejects_bad_options_and_missing_files(tmp_path, cli):
    assert "cannot read" in cli(tmp_path / "absent.json", "--out", tmp_path / "res").stderr
    src = saved(tmp_path / "run.json", tight())
    proc = cli(src, "--out", src)  # a file, not a folder
    assert proc.returncode == 2 and "cannot write the report into" in proc.stderr
    proc = cli(tmp_path / "absent.json", "--latency-noise-band", "2")
    assert proc.returncode == 2 and "expected a fraction between 0 and 1" in proc.stderr


def run_folder(results, run_id, data):
    """A run's folder as the plugin leaves it: results/<run id>/benchmark.json with the id in its semgap section."""
    data["semgap"]["run_id"] = run_id
    (results / run_id).mkdir(parents=True)
    return saved(results / run_id / "benchmark.json", data).parent


def test_one_run_id_names_the_folder_the_verdicts_the_report_and_the_comparison(tmp_path, cli):
    results = tmp_path / "results"
    a = run_folder(results, "20261203-073026-d2b3a8", tight())
    b = run_folder(results, "20261203-081500-0f0f0f", tight())
    assert cli(b, "--out", tmp_path / "again").returncode == 0  # a run's folder stands for its benchmark.json
    assert json.loads((tmp_path / "again" / "verdicts.json").read_text())["source"]["run_id"] == b.name
    assert (tmp_path / "again" / "report.md").read_text().startswith(f"# semgap report: run `{b.name}`")
    proc = cli(a, b)
    assert proc.returncode == 0, proc.stderr
    assert f"comparison (A = run {a.name}, B = run {b.name})" in proc.stdout
    compared = results / f"compare-{a.name}-vs-{b.name}"  # a folder of its own, beside the runs'
    assert f"run `{a.name}`" in (compared / "comparison.md").read_text()
    assert sorted(path.name for path in a.iterdir()) == sorted(path.name for path in b.iterdir()) == ["benchmark.json"]
    refused = cli(a, b, "--out", a)
    assert refused.returncode == 2 and "a comparison goes to a folder of its own" in refused.stderr
    storage = tmp_path / ".benchmarks" / "Linux-CPython-3.12-64bit"
    storage.mkdir(parents=True)
    autosave = saved(storage / "0002_abc_20261203_073021.json", tight())
    refused = cli(autosave, b, "--out", storage / "cmp")
    assert refused.returncode == 2 and "a comparison goes to a folder of its own" in refused.stderr


def test_a_short_reason_is_the_binding_baselines_or_the_first_clause():
    from semgap.analysis.headlines import short_reason
    reason = "not shown; short of it: naive (too few blocks (1): p=0.5); remote_cache (interval (x) below 15%)"
    assert short_reason(reason, "remote_cache") == "interval (x) below 15%"
    assert short_reason("case semantic-decode block 2: token 3 differs; candidate INVALID", "naive") == \
        "case semantic-decode block 2: token 3 differs"


def test_report_lists_the_skipped_benchmarks_with_their_reasons():
    skipped = [{"name": "test_calibration[tcp-small]", "case": "calibration:tcp-small", "reason": "no server here"}]
    data = run_json(standard(), skipped=skipped)
    md = writer.markdown(verdicts.compute(data), data)
    assert rows(md, "Skipped benchmarks") == [{"benchmark": "test_calibration[tcp-small]", "reason": "no server here"}]
