"""The engine's decode paths: static-cache (and compiled) greedy tokens equal the dynamic path's."""
import pytest
import torch

from semgap.wire import codec

from semgap.model import presets, runtime
from semgap.model.runtime import EAGER_DYNAMIC, STATIC, STATIC_COMPILE, Engine
from semgap.server.model_server import ModelServer

from .conftest import TEST_MODEL

PROMPT_TOKENS = 24
DECODE_STEPS = 8


def small_model(model_type: str = "gpt2"):
    """A random model wide enough (64) that greedy argmaxes are not near-ties, unlike tiny-gpt2's width 2.

    Weights drawn with std 0.5 rather than 0.02: at 0.02 a 2-layer model repeats one token forever,
    which any path, right or wrong, would reproduce.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if model_type == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0, initializer_range=0.5)
        return AutoModelForCausalLM.from_config(config).eval()
    # GPT-J's eager attention and rotary positions: the gpt-j-6b preset's code path, 2 layers wide 64.
    config = AutoConfig.for_model("gptj", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                  rotary_dim=8, n_inner=None, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                                  initializer_range=0.5)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def prompt_for(model) -> list[int]:
    return presets.prompt_ids(PROMPT_TOKENS, model.config.vocab_size)


def greedy(engine: Engine, prompt: list[int], steps: int = DECODE_STEPS) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and each step's last-position logits; the cache is released at the end."""
    step = engine.prefill(prompt)
    tokens, logits = [runtime.greedy_token(step.logits)], [step.logits[0, -1].float().clone()]
    for _ in range(steps):
        step = engine.decode_one_token(tokens[-1], step.cache)
        tokens.append(runtime.greedy_token(step.logits))
        logits.append(step.logits[0, -1].float().clone())
    engine.release(step.cache)
    return tokens, logits


@pytest.fixture(scope="module", params=["gpt2", "gptj"])
def model(request):
    return small_model(request.param)


def test_static_cache_gives_the_dynamic_paths_tokens_and_logits(model):
    prompt = prompt_for(model)
    dynamic_tokens, dynamic_logits = greedy(Engine(model, EAGER_DYNAMIC), prompt)
    static_tokens, static_logits = greedy(Engine(model, STATIC, PROMPT_TOKENS + DECODE_STEPS), prompt)
    assert static_tokens == dynamic_tokens
    assert len(set(dynamic_tokens)) > DECODE_STEPS // 2  # not a degenerate repetition that any path would match
    for dynamic, static in zip(dynamic_logits, static_logits):
        torch.testing.assert_close(static, dynamic, rtol=1e-5, atol=1e-5)


def test_static_cache_gives_the_dynamic_paths_tokens_on_the_test_preset(preset_model):
    prompt = prompt_for(preset_model)
    dynamic_tokens, _ = greedy(Engine(preset_model), prompt)
    assert greedy(Engine(preset_model, STATIC, PROMPT_TOKENS + DECODE_STEPS), prompt)[0] == dynamic_tokens


def test_released_static_cache_is_reused_at_the_same_addresses(model):
    # CUDA graphs replay only against the tensors they captured: a request must get a cache back.
    engine = Engine(model, STATIC, PROMPT_TOKENS + DECODE_STEPS)
    first = engine.prefill(prompt_for(model)).cache
    pointers = [layer.keys.data_ptr() for layer in first.layers]
    engine.release(first)
    second = engine.prefill(prompt_for(model)[:5]).cache
    assert second is first and [layer.keys.data_ptr() for layer in second.layers] == pointers
    assert int(second.get_seq_length()) == 5  # the reset cleared the previous request's positions
    assert engine.stats.static_caches_created == 1


def test_requests_beyond_the_static_capacity_fall_back_to_a_dynamic_cache_with_the_same_tokens(model):
    prompt = prompt_for(model)
    expected, _ = greedy(Engine(model), prompt)
    short = Engine(model, STATIC, PROMPT_TOKENS + 3)  # full after 3 decode steps: the rest runs dynamic
    assert greedy(short, prompt)[0] == expected
    assert short.stats.dynamic_fallbacks == 1
    too_short = Engine(model, STATIC, PROMPT_TOKENS)  # the prompt leaves no room: dynamic from the start
    assert greedy(too_short, prompt)[0] == expected
    assert too_short.stats.dynamic_fallbacks == 1 and too_short.stats.static_caches_created == 0


def test_exhausted_pool_falls_back_to_dynamic_caches(model):
    engine = Engine(model, STATIC, PROMPT_TOKENS + DECODE_STEPS, pool_size=2)
    from transformers import DynamicCache, StaticCache

    caches = [engine.prefill(prompt_for(model)).cache for _ in range(3)]
    assert [type(cache) for cache in caches] == [StaticCache, StaticCache, DynamicCache]
    assert engine.stats.dynamic_fallbacks == 1


def test_calls_with_their_own_weights_stay_dynamic_on_a_static_engine(model):
    # naive mode: weights and the cache cross the wire each step, so its cache must stay dynamic.
    from transformers import DynamicCache

    engine = Engine(model, STATIC, PROMPT_TOKENS + DECODE_STEPS)
    weights = dict(model.named_parameters())
    step = engine.prefill(prompt_for(model), weights)
    assert isinstance(step.cache, DynamicCache)
    shipped = runtime.tensors_to_cache(runtime.cache_to_tensors(step.cache))
    assert isinstance(engine.decode_one_token(1, shipped, weights).cache, DynamicCache)
    assert engine.stats.static_caches_created == 0


def test_cache_tensors_round_trip_and_decode_alike(model):
    engine = Engine(model)
    step = engine.prefill(prompt_for(model))
    tensors = runtime.cache_to_tensors(step.cache)
    assert sorted(tensors) == sorted(f"{kind}.{index}" for kind in "kv" for index in range(model.config.n_layer))
    assert tensors["k.0"].shape[2] == PROMPT_TOKENS  # [batch, heads, seq, head_dim]
    rebuilt = runtime.cache_to_tensors(runtime.tensors_to_cache(tensors))
    assert rebuilt.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(rebuilt[name], tensor)
    original = engine.decode_one_token(7, step.cache).logits
    shipped = engine.decode_one_token(7, runtime.tensors_to_cache(rebuilt)).logits
    assert torch.equal(original, shipped)


def test_a_static_cache_is_not_flattened_for_the_wire(model):
    engine = Engine(model, STATIC, PROMPT_TOKENS + DECODE_STEPS)
    with pytest.raises(TypeError, match="dynamic cache"):
        runtime.cache_to_tensors(engine.prefill(prompt_for(model)).cache)


@pytest.mark.parametrize(("setting", "device", "path"), [
    ("auto", "cpu", EAGER_DYNAMIC), ("auto", "cuda", STATIC_COMPILE), ("on", "cpu", STATIC_COMPILE),
    ("static", "cuda", STATIC), ("off", "cuda", EAGER_DYNAMIC),
])
def test_fast_path_settings_resolve_per_device(setting, device, path):
    assert runtime.resolve_decode_path(setting, device) == path


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown fast-path setting 'fast'"):
        runtime.resolve_decode_path("fast", "cpu")
    with pytest.raises(ValueError, match="unknown decode path"):
        Engine(small_model(), "compiled")


def call(server: ModelServer, op: str, tensors=None, meta=None):
    return codec.decode(server.handle(op, codec.encode(tensors or {}, meta)))


def test_static_server_decodes_the_local_tokens_and_returns_caches_to_its_pool():
    spec = presets.ModelSpec(TEST_MODEL)
    server = ModelServer(spec, fast_path="static", max_cache_len=PROMPT_TOKENS + DECODE_STEPS)
    try:
        assert call(server, "hello")[1]["fast_path"] == STATIC
        prompt = prompt_for(server.engine.model)
        expected, _ = greedy(Engine(presets.build_model(spec)), prompt)
        meta = {"weights_handle": server.weights_handle}
        tokens, handles = [], []
        for _ in range(2):  # the second request must get the first one's cache back
            response, reply = call(server, "prefill", {"input_ids": torch.tensor([prompt])}, meta)
            tokens = [runtime.greedy_token(response["logits"])]
            for _ in range(DECODE_STEPS):
                response, _ = call(server, "decode", {"input_ids": torch.tensor([[tokens[-1]]])},
                                   {"kv_handle": reply["kv_handle"]})
                tokens.append(runtime.greedy_token(response["logits"]))
            call(server, "release", meta={"kv_handle": reply["kv_handle"]})
            handles.append(reply["kv_handle"])
        assert tokens == expected and handles[0] != handles[1]
        assert server.engine.stats.static_caches_created == 1
    finally:
        server.close()


def test_evicted_server_caches_go_back_to_the_pool(monkeypatch):
    from semgap.server import model_server as server_module

    monkeypatch.setattr(server_module, "MAX_CACHES", 2)
    server = ModelServer(presets.ModelSpec(TEST_MODEL), fast_path="static", max_cache_len=16)
    meta = {"weights_handle": server.weights_handle}
    for _ in range(5):  # a client that never releases: the oldest handles are evicted
        call(server, "prefill", {"input_ids": torch.tensor([[1, 2, 3]])}, meta)
    assert len(server.caches) == 2 and server.engine.stats.static_caches_created == 3


@pytest.mark.slow
def test_compiled_static_step_gives_the_dynamic_tokens_and_compiles_once(model):
    """static+compile on the CPU (inductor's C++ backend; CUDA graphs need a GPU): same tokens, one graph."""
    from torch._dynamo.utils import counters

    prompt = prompt_for(model)
    expected, expected_logits = greedy(Engine(model), prompt)
    engine = Engine(model, STATIC_COMPILE, PROMPT_TOKENS + DECODE_STEPS)
    engine.warm_up()
    graphs = counters["stats"]["unique_graphs"]
    for length in (PROMPT_TOKENS, PROMPT_TOKENS - 5):  # other prompt lengths reuse the decode graph
        tokens, logits = greedy(engine, prompt[:length])
        if length == PROMPT_TOKENS:
            assert tokens == expected
            for want, got in zip(expected_logits, logits):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing recompiled after the warm-up
    assert engine.stats.static_caches_created == 1
