"""Tests of the ablation table and the trade-off plot: one row per technique set, honest about what it costs."""
import pandas
import pytest

from semgap.analysis import ablation, frames, verdicts

from semgap.report import plots, writer

from .markdown import rows
from .synthetic import case, run_json, standard, variant


def ablation_run(weights="random", **kw):
    """The standard four modes, the headline set and four ablation variants, one of them lossy."""
    specs = standard() + [
        variant("none", latency_s=0.2, payload=(300, 100_000), encode_ms=0.5, decode_ms=1.0),
        variant("prune", latency_s=0.08, payload=(300, 2_000), max_abs_logit_error_rounds=[0.0, 0.0, 0.0]),
        variant("compress", latency_s=0.15, payload=(300, 60_000)),
        variant("prune,cast", latency_s=0.07, payload=(300, 1_000), agreement=0.8,
                max_abs_logit_error_rounds=[0.01, 0.03, 0.02], encode_ms=0.25, decode_ms=0.5, server_codec_ms=0.75,
                zstd_level=3, compression_ratio=1.8),
    ]
    data = run_json(specs, noise=0.0, drift=0.0, **kw)
    for bench in data["benchmarks"]:
        bench["extra_info"]["weights"] = weights
        if bench["extra_info"]["mode"] == "semantic" and "techniques" not in bench["extra_info"]:
            bench["extra_info"]["techniques"] = "prune,cast,compress,narrow-ids"
    return data


def table(data):
    rv = verdicts.compute(data, n_resamples=200)
    return rv, ablation.frame(rv, frames.rounds(data))


def test_one_row_per_technique_set_headline_first():
    _, values = table(ablation_run())
    assert values["label"].tolist() == ["semantic", "semantic:none", "semantic:compress", "semantic:prune",
                                        "semantic:prune,cast"]
    assert values["techniques"].tolist() == ["prune,cast,compress,narrow-ids", "none", "compress", "prune",
                                             "prune,cast"]


def test_savings_against_every_blind_baseline_and_the_tax_against_local():
    rv, values = table(ablation_run())
    prune = values.set_index("label").loc["semantic:prune"]
    assert prune["sent B/round"] == 400 and prune["recv B/round"] == 2_100  # TCP: payload + 100 each way
    assert prune["bytes vs remote_cache"] == pytest.approx(1 - 2_500 / 2_200)  # more bytes than remote_cache
    assert prune["bytes vs naive"] == pytest.approx(1 - 2_500 / 1_100_200)
    assert prune["latency vs remote_cache"] == pytest.approx(1 - 0.08 / 0.1)
    assert prune["latency vs naive"] == pytest.approx(1 - 0.08 / 0.5)
    assert prune["latency vs local"] == pytest.approx(0.08 / 0.05)
    tax = next(t for t in rv.taxes if t.reference == "remote_cache" and t.label == "semantic:prune")
    assert prune["latency vs remote_cache"] == pytest.approx(1 - tax.latency_ratio)


def test_a_lossy_technique_shows_its_agreement_beside_its_saving_and_codec_time_counts():
    _, values = table(ablation_run())
    cast = values.set_index("label").loc["semantic:prune,cast"]
    assert (cast["token agreement"], cast["tokens"]) == (0.8, "LOSSY")
    columns = values.columns.tolist()
    assert columns.index("token agreement") == columns.index("latency vs remote_cache") + 1
    assert cast["max abs logit error"] == 0.03  # the worst round
    assert cast["client codec ms"] == pytest.approx(0.75) and cast["server codec ms"] == 0.75
    assert cast["codec share"] == pytest.approx(1.5 / 70)
    assert (cast["zstd level"], cast["compression ratio"]) == (3, 1.8)
    none = values.set_index("label").loc["semantic:none"]
    assert none["tokens"] == "as local" and pandas.isna(none["max abs logit error"])
    assert none["client codec ms"] == pytest.approx(1.5) and pandas.isna(none["server codec ms"])


def test_random_weights_are_marked_as_such():
    data = ablation_run()
    md = writer.markdown(verdicts.compute(data, n_resamples=200), data)
    assert "- **Random weights**: rows whose weights are `random` ran on an untrained preset." in md
    assert {r["weights"] for r in rows(md, "Ablation")} == {"random"}
    trained = ablation_run(weights="trained")
    assert "**Random weights**" not in writer.markdown(verdicts.compute(trained, n_resamples=200), trained)


def test_verdicts_judge_only_the_headline_set():
    with_variants = verdicts.compute(ablation_run(), n_resamples=200)
    without = verdicts.compute(run_json(standard(), noise=0.0, drift=0.0), n_resamples=200)
    assert {v.candidate for v in with_variants.verdicts} == {"semantic"}
    assert [(v.hypothesis, v.baseline, v.estimate) for v in with_variants.verdicts] == \
           [(v.hypothesis, v.baseline, v.estimate) for v in without.verdicts]


def test_no_semantic_row_no_ablation_section():
    data = run_json([case("local"), case("remote_cache")])
    assert "## Ablation" not in writer.markdown(verdicts.compute(data, n_resamples=200), data)


def test_the_tradeoff_plot_annotates_agreement(tmp_path):
    rv, _ = table(ablation_run())
    path = plots.tradeoff(rv, tmp_path / "tradeoff.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    by_label = {s.label: s for s in rv.summaries}
    assert plots._point_label(by_label["semantic:prune,cast"], rv.min_agreement) == \
        "semantic:prune,cast (agreement 0.800 LOSSY)"
    assert plots._point_label(by_label["semantic:prune"], rv.min_agreement) == "semantic:prune (agreement 1.000)"
    assert plots._point_label(by_label["remote_cache"], rv.min_agreement) == "remote_cache"
    assert plots.tradeoff(verdicts.compute(run_json([case("remote_cache")])), tmp_path / "none.png") is None
