"""Write the semgap report (verdicts.json, report.md, report.tex, tables/*.csv, PNG plots) and compare runs.

Regenerating from saved pytest-benchmark JSON without rerunning::

    python -m semgap.report RUN [--out DIR] [--force] [--h1 0.30] [--h2 0.15] [--alpha 0.05] [--csv [PATH]]
    python -m semgap.report OLD NEW [--fail-on-regression]   # also compares them, case by case

RUN, OLD and NEW are a run's folder (results/<run id>/, whose benchmark.json is read) or a JSON file.
The report goes to ``--out`` (default: ``RUN.report/`` beside the JSON). It never writes over a
report it did not regenerate from the same run: not over the report a run wrote itself, not over
another run's, unless ``--force`` says so. A comparison (NEW's report and comparison.md) goes to a
folder of its own (default: ``compare-<old id>-vs-<new id>/`` beside OLD's run folder, else in
``results/``), never into an input's folder.

Exit status: 0 on success, 1 when ``--fail-on-regression`` is given and a regression was flagged,
2 on unreadable or invalid input, when ``--out`` holds a report it must not replace, or when the
two runs share no case.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from semgap.analysis import compare, frames
from semgap.analysis.headlines import INVALID, LOSSY
from semgap.analysis.stats import INCONCLUSIVE

from semgap.report import looks, plots, render, tables, where_gap
from semgap.bench import rundir
from semgap.bench.argtypes import fraction, share
from semgap.analysis.measurements import InvalidBenchmarkJSON, read_run
from semgap.report.render import Section, pct
from semgap.report.tables import status_line, verdict_label
from semgap.analysis.verdicts import RunVerdicts, compute

CLI_WRITER = "semgap.report"
RUN_JSON = "benchmark.json"  # what a run's folder holds: the JSON this CLI reads
COMPARISON_FILE = "comparison.md"
EXPLAINED = (INCONCLUSIVE, INVALID, LOSSY)  # verdicts whose terminal line ends with their reason
TABLE_DIR = "tables"
ROUNDS_CSV = "rounds.csv"


def _pct(x: float | None) -> str:
    return "-" if x is None else pct(x)


def markdown(rv: RunVerdicts, output_json: dict, sections: Sequence[Section] | None = None) -> str:
    """The full ``report.md`` text (``sections`` as :func:`semgap.report.tables.sections` builds them, if given)."""
    status = status_line(rv)
    lines = [f"# semgap report: run `{run_id(output_json)}`", ""] + ([f"> **{status}**", ""] if status else [])
    for section in tables.sections(rv, output_json) if sections is None else sections:
        lines += section.markdown()
    return "\n".join(lines)


def latex(rv: RunVerdicts, output_json: dict, sections: Sequence[Section] | None = None) -> str:
    """``report.tex``: every table of report.md as a booktabs table whose caption names the run's conditions."""
    status = status_line(rv)
    header = [f"semgap report tables, run {run_id(output_json)}", *([status] if status else [])]
    return render.latex_document_body(tables.sections(rv, output_json) if sections is None else sections,
                                      tables.caption_context(rv), header)


# ---------------------------------------------------------------- writing

class ReportExists(Exception):
    """The output folder holds a report this command must not replace."""


def run_id(output_json: dict) -> str:
    """What names a run: the name of its folder (the `semgap` section's run_id), else, for JSON from before
    semgap recorded it, pytest-benchmark's timestamp and commit, else a hash of its JSON."""
    section = output_json.get("semgap") if isinstance(output_json.get("semgap"), dict) else {}
    if section.get("run_id"):
        return str(section["run_id"])
    commit = output_json.get("commit_info") if isinstance(output_json.get("commit_info"), dict) else {}
    if output_json.get("datetime"):
        return f"{output_json['datetime']} {commit.get('id') or '?'}"
    canonical = json.dumps(output_json, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:16]


def check_out_dir(out_dir: Path, this_run: str) -> None:
    """Refuse a folder that holds any report but one this CLI regenerated from the same run."""
    if not ((out_dir / "verdicts.json").exists() or (out_dir / "report.md").exists()):
        return
    try:
        source = json.loads((out_dir / "verdicts.json").read_text()).get("source") or {}
    except (OSError, ValueError, AttributeError):
        source = {}
    if source.get("run_id") == this_run and source.get("written_by") == CLI_WRITER:
        return
    if source.get("run_id") == this_run:
        whose = "the report this run wrote itself"
    elif source.get("run_id"):
        whose = f"the report of another run ({source['run_id']})"
    else:
        whose = "a report of unknown origin"
    raise ReportExists(f"{out_dir} holds {whose}; choose another --out, or pass --force to replace it")


def write(run_verdicts: RunVerdicts, output_json: dict, out_dir: Path, written_by: str = "plugin",
          draw_plots: bool = True) -> list[Path]:
    """Write verdicts.json, report.md, report.tex, where_gap.md, tables/*.csv and the PNG plots into ``out_dir``
    (the plots unless ``draw_plots`` is False: `semgap-report` draws them later from the JSON).

    Returns their paths. verdicts.json is :meth:`RunVerdicts.to_dict` with ``source`` (run id, who wrote it)
    added; where_gap.md is the "where the gap is" table alone, to paste into the README.
    Every table is built once (:func:`semgap.report.tables.sections`); report.md, report.tex and its
    CSV file (one per table that has rows) all come from it. CSVs of an earlier report in
    ``tables/`` are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump = run_verdicts.to_dict()
    dump["source"] = {"run_id": run_id(output_json), "written_by": written_by}
    sections = tables.sections(run_verdicts, output_json)
    drawn = _plots(run_verdicts, out_dir) if draw_plots else []
    texts = {out_dir / "verdicts.json": json.dumps(dump, indent=2, default=str) + "\n",
             out_dir / "report.md": "\n".join([markdown(run_verdicts, output_json, sections), *plots.markdown(drawn)]),
             out_dir / "report.tex": latex(run_verdicts, output_json, sections),
             out_dir / where_gap.FILE_NAME: where_gap.markdown(run_verdicts, run_id(output_json)) + "\n"}
    table_dir = out_dir / TABLE_DIR
    table_dir.mkdir(exist_ok=True)
    for stale in table_dir.glob("*.csv"):
        stale.unlink()
    texts.update({table_dir / f"{table.key}.csv": table.csv() for section in sections for table in section.tables
                  if not table.empty})
    for path, text in texts.items():
        path.write_text(text)
    return list(texts) + drawn


def _plots(run_verdicts: RunVerdicts, out_dir: Path) -> list[Path]:
    """Draw each plot of :data:`plots.PLOTS` this run has data for; remove an earlier report's others."""
    for plot in plots.PLOTS:
        (out_dir / plot.file).unlink(missing_ok=True)
    if not run_verdicts.summaries:
        return []
    if importlib.util.find_spec("matplotlib") is None:
        print("semgap report: matplotlib is not installed, so no plots were drawn", file=sys.stderr)
        return []
    drawn = [plot.draw(run_verdicts, out_dir / plot.file) for plot in plots.PLOTS]
    return [path for path in drawn if path is not None]


def write_rounds_csv(output_json: dict, path: Path) -> Path:
    """Every measured round of the run as one CSV row: :func:`semgap.analysis.frames.rounds`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames.rounds(output_json).to_csv(path, index=False)
    return path


def terminal_lines(run_verdicts: RunVerdicts) -> list[str]:
    """The run's status if not complete, a header, one line per headline verdict, then what else to read."""
    rv = run_verdicts
    status = status_line(rv)
    lines = [f"semgap: {status}"] if status else []
    if not rv.verdicts:
        return lines
    h2 = [v for v in rv.verdicts if v.hypothesis == "H2" and v.p_value is not None]
    design = f" on {max(v.n_blocks for v in h2)} blocks x {h2[0].rounds_per_block or '?'} rounds" if h2 else ""
    heads = [h for h in rv.headlines if h.hypothesis == "H2" and h.p_value is not None]
    counts = sorted({len(h.baselines) for h in rv.headlines if h.baselines})
    lines += ["reduction = 1 - semantic/baseline (positive: semantic cheaper); each headline is judged against "
              f"every blind baseline ({'/'.join(map(str, counts)) or 0}); vs: the binding one (smallest reduction)",
              f"thresholds H1 {rv.h1:.0%}, H2 {rv.h2:.0%}; H2{design}, headline p Holm-adjusted over {len(heads)} "
              f"headline(s)"] + ([looks.stop_line(rv)] if rv.design else [])
    for v in rv.headlines:
        what = "bytes  " if v.hypothesis == "H1" else "latency"
        if v.ci_low is None or v.ci_high is None:
            interval = f" no interval ({v.n_blocks} block: an interval needs 2)" if v.n_blocks < 2 else ""
        elif v.ci_low == v.ci_high:
            interval = f" exact {v.byte_level}"
        else:
            interval = f" [{v.ci_low:+.1%}, {v.ci_high:+.1%}]"
        p = f" p={v.p_holm:.2g}" if v.p_holm is not None else ""
        lines.append(f"{v.hypothesis} {what} {v.phase:<7} {v.model} {v.link_rate or '-':<7} {_pct(v.estimate):>7}"
                     f"{interval}{p} vs {v.binding_baseline or '-'}  "
                     + (f"{v.verdict}: {v.short_reason}" if v.verdict in EXPLAINED else verdict_label(v)))
    if rv.verdicts:
        lines.append(f"{len(rv.verdicts)} pairwise verdict(s) beneath the headlines: see report.md")
    lines += [f"load warning: block {w.block}: {w.reason}; fed {len(w.verdicts)} H2 verdict(s)"
              for w in rv.load_warnings]
    return lines


# ---------------------------------------------------------------- command line

def json_path(path: str) -> str:
    """The JSON a path names: the file itself, or the benchmark.json of a run's folder."""
    return str(Path(path) / RUN_JSON) if Path(path).is_dir() else path


def folder_id(output_json: dict, path: str) -> str:
    """A run's id fit for a folder name: its run id, else its folder's name if that is a run id, else the file's."""
    source = Path(path)
    name = output_json.get("semgap", {}).get("run_id") if isinstance(output_json.get("semgap"), dict) else None
    name = name or (source.parent.name if rundir.is_run_id(source.parent.name) else source.stem)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _autosaved(path: Path) -> bool:
    """Whether `path` is one of pytest-benchmark's autosaves (0001_<commit>_<date>.json in its storage)."""
    return re.match(r"\d{4}_", path.name) is not None


def comparison_out(paths: Sequence[str], runs: Sequence[dict]) -> Path:
    """``compare-<A>-vs-<B>`` in the folder that holds A's run folder (the results folder); in ``results/``
    when A is an autosave in pytest-benchmark's storage; else beside A."""
    first = Path(paths[0])
    if rundir.is_run_id(first.parent.name):
        parent = first.parent.parent
    else:
        parent = Path("results") if _autosaved(first) else first.parent
    return parent / f"compare-{folder_id(runs[0], paths[0])}-vs-{folder_id(runs[1], paths[1])}"


def input_folder(out: Path, paths: Sequence[str]) -> str | None:
    """The input whose folder ``out`` is, or lies in when that is a run's folder or pytest-benchmark's storage."""
    for path in paths:
        folder = Path(path).resolve().parent
        inside = rundir.is_run_id(folder.name) or _autosaved(Path(path))
        if out.resolve() == folder or (inside and folder in out.resolve().parents):
            return path
    return None


def comparison_markdown(paths: Sequence[str], runs: Sequence[dict], lines: Sequence[str]) -> str:
    return "\n".join(["# semgap comparison", "", f"A (before): run `{run_id(runs[0])}` ({paths[0]})",
                      f"B (after): run `{run_id(runs[1])}` ({paths[1]})", "", "```", *lines, "```", ""])


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise InvalidBenchmarkJSON(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidBenchmarkJSON(f"{path} is not valid JSON: {exc}") from exc
    try:
        if not read_run(data).cases:
            raise InvalidBenchmarkJSON("no semgap benchmarks (extra_info.mode) found")
    except InvalidBenchmarkJSON as exc:
        raise InvalidBenchmarkJSON(f"{path}: {exc}") from exc
    return data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m semgap.report",
                                description="Regenerate the semgap report from saved pytest-benchmark JSON; "
                                            "with two files, also compare them (first = before, second = after).")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="one or two runs: a run's folder (its benchmark.json) or a pytest-benchmark JSON file")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output directory (default: the JSON's name with .report, beside it; comparing two runs: "
                        "compare-<A id>-vs-<B id> beside A's run folder, else in results/)")
    p.add_argument("--force", action="store_true",
                   help="replace a report in --out that this command did not regenerate from the same run "
                        "(default: refuse)")
    p.add_argument("--h1", metavar="F", type=fraction, default=None,
                   help="H1 byte-reduction threshold (default: the run's, else 0.30)")
    p.add_argument("--h2", metavar="F", type=fraction, default=None,
                   help="H2 latency-reduction threshold (default: the run's, else 0.15)")
    p.add_argument("--alpha", metavar="F", type=fraction, default=None,
                   help="significance level (default: the run's, else 0.05)")
    p.add_argument("--min-agreement", metavar="F", type=share, default=None,
                   help="token agreement with local below which a saving is LOSSY (default: the run's, else 1.0)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--latency-noise-band", metavar="F", type=fraction, default=compare.DEFAULT_NOISE_BAND,
                   help="comparing runs: a latency change is a regression only when its interval lies beyond "
                        f"1 + F (default: {compare.DEFAULT_NOISE_BAND})")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="comparing runs: exit 1 when a byte or latency regression is flagged (default: off)")
    p.add_argument("--csv", metavar="PATH", nargs="?", const="", default=None,
                   help=f"also write every measured round of the (last) run as one CSV row, the frame of "
                        f"semgap.analysis.frames.rounds, to PATH (default without PATH: {ROUNDS_CSV} in --out; "
                        "default: not written)")
    return p


def default_out(json_path: str) -> Path:
    """``results/benchmark.json`` -> ``results/benchmark.report``: beside the run, never over its own report."""
    path = Path(json_path)
    return path.with_name(path.stem + ".report")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if len(args.paths) > 2:
        print("error: give one or two JSON files", file=sys.stderr)
        return 2
    paths = [json_path(path) for path in args.paths]
    try:
        runs = [_load(p) for p in paths]
        out = args.out or (comparison_out(paths, runs) if len(runs) == 2 else default_out(paths[-1]))
        if len(runs) == 2 and input_folder(out, paths):
            print(f"error: {out} is the folder of {input_folder(out, paths)}: a comparison goes to a folder of its "
                  "own (--out)", file=sys.stderr)
            return 2
        if not args.force:
            check_out_dir(out, run_id(runs[-1]))
        rv = compute(runs[-1], h1=args.h1, h2=args.h2, alpha=args.alpha, min_agreement=args.min_agreement,
                     seed=args.seed)
        comparison = None
        if len(runs) == 2:
            comparison = compare.compare_runs(runs[0], runs[1], rv.alpha, args.seed,
                                              noise_band=args.latency_noise_band)
    except (InvalidBenchmarkJSON, ReportExists) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if comparison is not None and not comparison.shares_a_case:
        print("\n".join(compare.lines(comparison)), file=sys.stderr)
        print(f"error: {paths[0]} and {paths[1]} share no case: nothing to compare", file=sys.stderr)
        return 2
    try:
        written = write(rv, runs[-1], out, written_by=CLI_WRITER)
        if comparison is not None:
            written.append(out / COMPARISON_FILE)
            written[-1].write_text(comparison_markdown(paths, runs, compare.lines(comparison)))
    except OSError as exc:
        print(f"error: cannot write the report into {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.csv is not None:
        csv_path = Path(args.csv) if args.csv else out / ROUNDS_CSV
        try:
            written.append(write_rounds_csv(runs[-1], csv_path))
        except OSError as exc:
            print(f"error: cannot write the rounds CSV {csv_path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    csvs = [path for path in written if path.parent.name == TABLE_DIR]
    for path in written:
        if path not in csvs:
            print(f"wrote {path}")
    if csvs:
        print(f"wrote {len(csvs)} table(s) as CSV in {csvs[0].parent}")
    print("\n".join(terminal_lines(rv)))
    if comparison is not None:
        print(f"\ncomparison (A = run {run_id(runs[0])}, B = run {run_id(runs[1])}):")
        print("\n".join(compare.lines(comparison)))
        if args.fail_on_regression and comparison.has_regressions:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
