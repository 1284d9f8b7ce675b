"""Model families (issue 22): the Llama-shaped and mixture-of-experts presets are context-dependent, their shapes
come from their configs, and a shape that misreports a transfer fails against the bytes a run moves."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from semgap.model import presets, runtime, shapes
from semgap.wire import codec
from .conftest import INNER_CONFTEST, REPO
from .inner import QUICK, SMALL, by_case, new_run_dirs, run_suite

FAMILIES = ("gpt2-test", "llama-test", "moe-test", "gpt2-mini", "llama-mini", "moe-mini")
KV_BENCHMARK = (REPO / "benchmarks" / "test_kv_recovery.py").read_text()


def shape_of(name: str) -> shapes.ModelShape:
    return shapes.ModelShape.of(name, presets.config_of(name), torch.bfloat16)


def greedy(model, prompt: list[int], steps: int, cache=None) -> list[int]:
    """Greedy tokens continuing `prompt`'s last token on `cache` (the prompt's own cache when None)."""
    if cache is None:
        cache = runtime.forward(model, torch.tensor([prompt[:-1]])).cache
    tokens, ids = [], torch.tensor([prompt[-1:]])
    for _ in range(steps):
        step = runtime.forward(model, ids, cache)
        cache, tokens = step.cache, tokens + [int(step.logits[0, -1].argmax())]
        ids = torch.tensor([tokens[-1:]])
    return tokens


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_generates_from_its_context_a_wrong_kv_cache_gives_other_tokens(name):
    model = presets.build_model(presets.ModelSpec(name))
    prompt = presets.prompt_ids(48, model.config.vocab_size)
    other = prompt[-2::-1]  # another context of the same length: the same ids, reversed
    right = greedy(model, prompt, 6)
    wrong = greedy(model, prompt, 6, cache=runtime.forward(model, torch.tensor([other])).cache)
    assert right != wrong, f"{name}: its tokens do not depend on the KV cache, so a lost cache would go unseen"
    assert len(set(right)) > 1, f"{name}: greedy decoding repeats one token"


def test_the_families_differ_where_the_gap_does():
    gpt2, llama, moe = shape_of("gpt2-mini"), shape_of("llama-mini"), shape_of("moe-mini")
    # Llama-3's vocabulary: a 128,256-id row, 2.55x GPT-2's.
    assert (llama.vocab_size, llama.logits_row_bytes, gpt2.logits_row_bytes) == (128256, 256512, 100514)
    # Grouped-query attention: 2 KV heads for 8 query heads of 32 dims, keys and values of 4 layers in bfloat16.
    assert (llama.kv_heads, llama.head_dim, llama.kv_bytes_per_token) == (2, 32, 2 * 4 * 2 * 32 * 2)
    assert gpt2.kv_bytes_per_token == 2 * 4 * 256 * 2  # multi-head: 4x llama-mini's at the same width
    # A mixture of experts: 8 experts, 2 per token, so most expert weights are idle for any one token.
    experts = 4 * 8 * 3 * 256 * 512  # layers x experts x (gate, up, down) x width x expert width
    assert (moe.experts, moe.experts_per_token) == (8, 2)
    assert moe.active_parameters == moe.parameters - experts * 6 // 8 == 12_003_584
    assert gpt2.active_parameters is None and gpt2.weight_bytes == 2 * gpt2.parameters


@pytest.mark.parametrize("name", ["llama-test", "moe-test", "gpt2-test"])
def test_a_real_cache_export_matches_the_shape_and_a_misreported_kv_head_count_fails(name):
    model = presets.build_model(presets.ModelSpec(name))
    engine = runtime.Engine(model)
    step = engine.prefill(presets.prompt_ids(40, model.config.vocab_size))
    exported = len(codec.encode(engine.cache_tensors(step.cache)))  # what kv_export sends
    engine.release(step.cache)
    honest = shape_of(name)
    assert shapes.kv_check(honest, exported, 40).ok, shapes.kv_check(honest, exported, 40).line()
    if honest.kv_heads == model.config.num_attention_heads:
        misreported = dataclasses.replace(honest, kv_bytes_per_token=honest.kv_bytes_per_token // 2)
    else:  # grouped-query attention reported as multi-head: a config read that ignores num_key_value_heads
        config = copy.deepcopy(model.config)
        config.num_key_value_heads = config.num_attention_heads
        misreported = shapes.ModelShape.of(name, config, torch.bfloat16)
    check = shapes.kv_check(misreported, exported, 40)
    assert not check.ok and check.line().startswith("KV cache: the shape says"), check


@pytest.mark.slow
def test_a_run_checks_every_shape_and_fails_loudly_on_a_misreported_one(suite):
    """One run whose shape misreports the KV head count (as multi-head attention) and nothing else: the weight
    and logits checks agree, the eviction's export does not, and that benchmark fails saying so."""
    suite.makepyfile(test_kv_recovery=KV_BENCHMARK)
    suite.makeconftest(INNER_CONFTEST + (
        "import dataclasses\nfrom semgap.model import shapes\n_of = shapes.ModelShape.of.__func__\n"
        "def misreported(cls, *args):\n    shape = _of(cls, *args)\n"
        "    return dataclasses.replace(shape, kv_heads=4, kv_bytes_per_token=4 * shape.kv_bytes_per_token)\n"
        "shapes.ModelShape.of = classmethod(misreported)\n"))
    result, output, _ = run_suite(suite, *SMALL, "--semgap-model=llama-test")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*model shape mismatch, KV cache: the shape says *B, the run moved *",
                                 "FAILED *test_kv_recovery[[]eviction-full_cache[]]*"])
    agree = {}
    for check in output["semgap"]["shape_checks"]:
        agree.setdefault(check["quantity"], set()).add(check["ok"])
    assert agree == {"weights": {True}, "logits row": {True}, "KV cache": {False}}, agree
    [run_dir] = new_run_dirs(suite.path)
    shape_section = (run_dir / "report.md").read_text().split("## Model shape")[1]
    assert "| weights    |        1 |" in shape_section and "0 of 1 (NO)" in shape_section, shape_section


@pytest.mark.slow
def test_a_run_of_two_models_serves_each_case_from_its_own_server_and_judges_each_model(suite):
    """`--semgap-model=gpt2-test,llama-test`: every case is named by its model and measured on that model's own
    server (its one-row prefill answer weighs that model's logits row: 100 KB or 256 KB), each model gets its
    headlines, its reference tokens, its shape column and its server log."""
    models = ("gpt2-test", "llama-test")
    result, output, _ = run_suite(suite, *QUICK, f"--semgap-model={','.join(models)}", "--semgap-rounds=1",
                                  "--semgap-warmup-rounds=0", "--semgap-modes=local,remote_cache,semantic",
                                  "--semgap-phases=prefill")
    result.assert_outcomes(passed=6)
    meta = output["semgap"]
    shape = {entry["model"]: entry["model_shape"] for entry in meta["models"]}
    assert meta["model"] == ",".join(models) and list(shape) == list(models), meta["model"]
    # What every model's server shares stays at the top, for the Equal compute section's CPU line.
    assert meta["server_cpus"] and meta["server_threads"] >= 1, meta
    infos = by_case(output)
    assert sorted(infos) == sorted(f"{m}:{mode}-prefill" for m in models for mode in ("local", "remote_cache", "semantic"))
    for case, info in infos.items():
        assert info["model"] == case.split(":")[0], (case, info["model"])
    for model in models:  # the answer came from this model's server: its row, the transport's framing aside
        received = infos[f"{model}:remote_cache-prefill"]["payload_bytes_received"]
        assert 0 <= received - shape[model]["logits_row_bytes"] < 1024, (model, received, shape[model])
    references = [entry["reference_tokens"] for entry in meta["models"]]
    assert references[0] != references[1], references
    [run_dir] = new_run_dirs(suite.path)
    verdicts = json.loads((run_dir / "verdicts.json").read_text())
    assert {(h["hypothesis"], h["model"]) for h in verdicts["headlines"]} == {(h, m) for h in ("H1", "H2") for m in models}
    assert sorted(log.name.split("-")[1] + "-" + log.name.split("-")[2] for log in (run_dir / "logs").glob("server-*")) \
        == sorted(models)
    report = (run_dir / "report.md").read_text()
    assert "| quantity                    | gpt2-test   | llama-test   |" in report
    assert not list(run_dir.glob("*.png")) and "## Plots" not in report  # the inner runs' --semgap-plots=off
