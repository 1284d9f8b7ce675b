"""The semantic techniques: each round-trips through both ends, error bounds, the registry, the sampler, and
token-only's bytes and tokens against a real server."""
import dataclasses

import pytest
import torch

from semgap.client import generate

from semgap.model import presets
from semgap.bench.design import cases
from semgap.client.modes import ModeContext, make_mode
from semgap.model.sampling import Sampler
from semgap.techniques import TECHNIQUES, Message, Step, TechniqueSet, ablation_chain, ablation_sets, token_of
from semgap.server.semantic import TECHNIQUES_FIELD, SemanticSessions
from semgap.techniques.compress import Compress
from semgap.wire import codec, names

STEPS = 4
SAMPLERS = [Sampler(), Sampler.parse("top-k=20,seed=3"), Sampler.parse("top-p=0.9,seed=1")]


def through_both_ends(techniques: TechniqueSet, ids: torch.Tensor, logits: torch.Tensor, step: Step = Step()):
    """What the server reads of a request, and what the client reads of the response, through the same code."""
    request = techniques.encode_request(Message({"input_ids": ids.clone()}))
    served = techniques.decode_request(Message(dict(request.tensors), dict(request.meta)))
    response = techniques.encode_response(Message({"logits": logits.clone()}), step)
    return request, served, response, techniques.decode_response(Message(dict(response.tensors), dict(response.meta)))


@pytest.mark.parametrize("name", list(TECHNIQUES))
@pytest.mark.parametrize("ids", [[[7, 50_000, 3]], [[42]]], ids=["prompt", "one-token"])
def test_each_technique_round_trips_on_both_ends(name, ids):
    torch.manual_seed(0)
    logits = torch.randn(1, len(ids[0]), 1000) * 5  # [batch, seq, vocab]
    technique = TECHNIQUES[name]()
    _, served, response, read = through_both_ends(TechniqueSet((technique,)), torch.tensor(ids), logits)
    assert served.tensors["input_ids"].tolist() == ids  # the server runs the ids the client meant
    token = token_of(read)
    if token is not None:  # token-only, logprobs: the server's sampler picked it from the last row
        assert token == int(logits[0, -1].argmax())
        if name == "logprobs":
            expected = logits[0, -1].log_softmax(-1).topk(int(technique.value))
            assert read.tensors["top_ids"].tolist() == expected.indices.tolist()
            assert torch.allclose(read.tensors["top_logprobs"], expected.values)
        return
    rows = read.tensors["logits"].shape[1]
    assert rows == (1 if name == "prune" else logits.shape[1])
    error = (read.tensors["logits"].float() - logits[:, -rows:]).abs()
    if technique.lossless:
        assert error.max() == 0
    else:
        assert 0 < error.max() < 0.1 and response.tensors["logits"].element_size() < 4


def test_cast_and_int8_stay_within_their_error_bounds():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4000) * torch.tensor([1.0, 10.0, 100.0]).reshape(1, 3, 1)  # rows of different ranges
    for spec, bound in [("cast", 2.0 ** -11), ("cast=bfloat16", 2.0 ** -8)]:  # relative: half an ulp
        read = through_both_ends(TechniqueSet.parse(spec), torch.tensor([[1]]), logits)[3].tensors["logits"]
        assert ((read - logits).abs() <= logits.abs() * bound).all(), spec
    response, read = through_both_ends(TechniqueSet.parse("int8"), torch.tensor([[1]]), logits)[2:]
    assert response.tensors["logits"].dtype == torch.int8
    scale = logits.abs().amax(-1, keepdim=True) / 127  # per row: one scale for each of the three
    assert response.tensors["logits.int8_scale"].shape == (1, 3, 1)
    assert ((read.tensors["logits"] - logits).abs() <= scale / 2 * 1.001).all()


def test_compress_sets_the_chosen_zstd_level_on_messages_with_tensors_only():
    request, _, response, _ = through_both_ends(TechniqueSet.parse("compress=9"), torch.tensor([[1, 2]]), torch.ones(1, 1, 8))
    assert request.zstd_level == response.zstd_level == 9
    token_response = TechniqueSet.parse("token-only,compress=9").encode_response(Message({"logits": torch.ones(1, 1, 8)}), Step())
    assert token_response.zstd_level is None and token_response.tensors == {}


def test_the_registry_rejects_unknown_names_with_the_choices_and_conflicting_pairs():
    with pytest.raises(ValueError, match="unknown semantic technique 'gzip'; choose from prune, token-only, logprobs, "
                                         "cast, int8, compress, narrow-ids or none"):
        TechniqueSet.parse("prune,gzip")
    for text, message in [("cast,int8", "cast and int8 decide the same thing"), ("compress=23", "from 1 to 22"),
                          ("logprobs=0", "k >= 1"), ("cast=int4", "float16, bfloat16"), ("prune=1", "takes no setting")]:
        with pytest.raises(ValueError, match=message):
            TechniqueSet.parse(text)
    techniques = TechniqueSet.parse("narrow-ids,compress=5,cast,prune")
    assert (str(techniques), techniques.spec) == ("prune,cast,compress,narrow-ids", "prune,cast=float16,compress=5,narrow-ids")
    assert TechniqueSet.parse(techniques.spec) == techniques and str(TechniqueSet.parse("none")) == "none"
    assert not techniques.lossless and TechniqueSet.parse("prune,token-only,compress,narrow-ids").lossless


def test_ablation_variants_are_none_each_alone_and_each_cumulative_set_once():
    headline = TechniqueSet.parse("prune,token-only")
    variants = [str(v) for v in ablation_sets(headline, ablation_chain("prune,cast,int8,token-only", headline))]
    assert variants == ["none", "prune", "cast", "int8", "token-only", "prune,cast", "prune,token-only,cast"]
    assert ablation_sets(headline, ()) == []


def test_ablation_cases_carry_their_set_in_id_and_label():
    settings = dataclasses.make_dataclass("S", ["models", "modes", "phases", "decode_steps", "link_rates_bps", "ablation_sets"])(
        ("gpt2-test",), ("remote_cache", "semantic"), ("decode",), (5,), (), [TechniqueSet(), TechniqueSet.parse("prune,compress=9")])
    expected = [("remote_cache-decode", "remote_cache"), ("semantic-decode", "semantic"),
                ("semantic+none-decode", "semantic:none"), ("semantic+prune+compress=9-decode", "semantic:prune,compress")]
    assert [(case.id, case.label) for case in cases(settings)] == expected  # one model: ids as before model lists
    two = dataclasses.replace(settings, models=("gpt2-test", "llama-test"))  # several: each id names its model
    assert [(case.id, case.label) for case in cases(two)] == [
        (f"{model}:{case_id}", label) for model in two.models for case_id, label in expected]


@pytest.mark.parametrize("sampler", SAMPLERS[1:], ids=str)
def test_seeded_samplers_draw_from_their_candidates_and_repeat_per_seed_and_position(sampler):
    torch.manual_seed(2)
    logits = torch.randn(2000) * 3
    draws = [sampler(logits, position) for position in range(200)]
    assert draws == [sampler(logits, position) for position in range(200)]
    assert len(set(draws)) > 3  # a draw, not an argmax
    if sampler.kind == "top-k":
        assert set(draws) <= set(logits.topk(sampler.top_k).indices.tolist())
    else:
        probabilities, order = logits.softmax(-1).sort(descending=True)
        nucleus = order[:int((probabilities.cumsum(-1) < sampler.top_p).sum()) + 1]
        assert set(draws) <= set(nucleus.tolist())
    reseeded = dataclasses.replace(sampler, seed=sampler.seed + 1)
    assert [reseeded(logits, p) for p in range(200)] != draws
    assert Sampler.parse(str(sampler)) == sampler


def test_the_sampler_option_rejects_what_it_cannot_read():
    for text, message in [("beam", "unknown sampler 'beam'"), ("top-k=0", "k >= 1"), ("top-p=x", "cannot read"),
                          ("top-k=5,temperature=2", "only seed=N")]:
        with pytest.raises(ValueError, match=message):
            Sampler.parse(text)


@pytest.fixture(scope="module")
def context(preset_model, client):
    context = ModeContext(preset_model, client)
    make_mode("remote_cache", context).setup()  # one upload; the contexts below share its handle
    return context


@pytest.fixture(scope="module")
def prompt(preset_model):
    return presets.prompt_ids(64, preset_model.config.vocab_size)


def semantic(context, spec: str, sampler: Sampler = Sampler()):
    mode = make_mode("semantic", dataclasses.replace(context, semantic=TechniqueSet.parse(spec), sampler=sampler))
    mode.setup()
    return mode


def test_token_only_decode_carries_at_most_64_bytes_per_step_each_way(context, prompt):
    mode = semantic(context, "prune,token-only,compress,narrow-ids")
    token, state = generate.prefill(mode, prompt)
    for _ in range(STEPS):
        before = context.counter.snapshot()
        output, state = mode.decode_one_token(token, state)
        step = context.counter.since(before)
        assert isinstance(output, int) and step.round_trips == 1
        assert step.bytes_sent <= 64 and step.bytes_received <= 64, step
        token = output
    mode.release(state)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
def test_the_server_samples_the_tokens_local_samples(context, prompt, sampler):
    local = make_mode("local", dataclasses.replace(context, sampler=sampler))
    local.setup()
    reference = generate.generate(local, prompt, STEPS)
    for spec in ("prune,token-only,narrow-ids", "logprobs=3", "prune,compress"):  # server-side and client-side picks
        assert generate.generate(semantic(context, spec, sampler), prompt, STEPS) == reference, spec
    if sampler.kind != "greedy":  # the equality above means something: another seed draws other tokens
        reseeded = semantic(context, "prune,token-only", dataclasses.replace(sampler, seed=sampler.seed + 1))
        assert generate.generate(reseeded, prompt, STEPS) != reference


def test_lossy_sets_report_their_logit_error_and_lossless_ones_zero(context, prompt):
    # Measured for every set, on the response as the client decodes it; cast's float16 holds the test model's
    # bfloat16 logits exactly, so its measured error is 0 too (a float32 model's would not be).
    for spec, low, high in [("prune,int8", 1e-4, 0.1), ("prune,cast", 0.0, 0.0), ("prune,compress=9", 0.0, 0.0),
                            ("compress", 0.0, 0.0), ("none", 0.0, 0.0)]:
        mode = semantic(context, spec)
        token, state = generate.prefill(mode, prompt)
        before = mode.counters()
        generate.decode_n_tokens(mode, token, state, STEPS, position=len(prompt))
        mode.release(state)
        figures = mode.round_figures(before, mode.counters())
        assert low <= figures["max_abs_logit_error"] <= high, (spec, figures)
        assert figures["server_codec_ms"] > 0
        assert (figures["compression_ratio"] is not None) == ("compress" in spec)
    mode = semantic(context, "token-only")
    token, state = generate.prefill(mode, prompt)
    before = mode.counters()
    mode.release(generate.decode_n_tokens(mode, token, state, STEPS, position=len(prompt))[1])
    assert mode.round_figures(before, mode.counters())["max_abs_logit_error"] is None  # no logits came back


def test_the_logit_error_is_measured_for_lossless_sets_too_on_the_bytes_the_client_decodes(monkeypatch):
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 100)  # [batch, seq, vocab]

    def error_of(spec: str, prefill: bool) -> float:
        sessions = SemanticSessions()
        sessions.open("h", {TECHNIQUES_FIELD: spec}, torch.zeros(1, 3, dtype=torch.long))
        response = sessions.respond("h", logits, 1.0, prefill=prefill)
        meta = codec.decode(response)[1] if prefill else sessions.close("h")
        return float(meta[names.MAX_ABS_LOGIT_ERROR])

    assert [error_of("prune,compress=9", prefill) for prefill in (True, False)] == [0.0, 0.0]
    original = Compress.encode_response

    def shifting(self, message, step):  # a "lossless" technique that sends other values than computed
        original(self, message, step)
        message.tensors[names.LOGITS] = message.tensors[names.LOGITS] + 0.5

    monkeypatch.setattr(Compress, "encode_response", shifting)
    assert [error_of("prune,compress=9", prefill) for prefill in (True, False)] == pytest.approx([0.5, 0.5], abs=1e-6)


def test_a_bad_technique_field_is_refused_by_the_server_naming_the_choices(context, prompt):
    mode = make_mode("semantic", context)
    mode.setup()
    with pytest.raises(Exception, match="unknown semantic technique 'gzip'; choose from prune"):
        mode.call("prefill", {"input_ids": torch.tensor([prompt])},
                  {"weights_handle": mode.weights_handle, "techniques": "prune,gzip"})
    local = make_mode("local", context)
    local.setup()
    assert generate.generate(mode, prompt, 1) == generate.generate(local, prompt, 1)  # the connection and server carry on


def test_a_prefill_that_fails_leaves_no_semantic_session():
    sessions = SemanticSessions()
    with sessions.opening("kept", {TECHNIQUES_FIELD: "token-only"}, torch.zeros(1, 3, dtype=torch.long)):
        pass  # the prefill ran: the session stays for its decode steps
    with pytest.raises(RuntimeError, match="forward failed"):
        with sessions.opening("failed", {TECHNIQUES_FIELD: "token-only"}, torch.zeros(1, 3, dtype=torch.long)):
            raise RuntimeError("forward failed")
    assert "kept" in sessions and "failed" not in sessions
