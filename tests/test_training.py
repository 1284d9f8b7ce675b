"""Trained presets: deterministic, trained once per cache, greedy tokens always bytes, better than unigram.

These tests train `gpt2-test-trained` (a recipe of a few seconds); the full `gpt2-mini-trained` takes
about 4 minutes, so the suite compares a build already in the cache with the committed record
(tests/test_trained_figures.py) rather than train one.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from semgap.model import corpus, presets, train, training, weights_cache

from .conftest import REPO
from .inner import QUICK, run_pytest
from .test_models import weights_digest

TRAINED_MODEL = "gpt2-test-trained"
TRAINING_LINE = f"semgap: training {TRAINED_MODEL} (seed 0)"


@dataclass
class Trained:
    cache: Path
    model: torch.nn.Module  # float32, as trained
    progress: list[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """gpt2-test-trained, trained once into a cache of this module's own."""
    cache = tmp_path_factory.mktemp("semgap-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(weights_cache.CACHE_VARIABLE, str(cache))
        progress = []
        model = presets.build_model(presets.ModelSpec(TRAINED_MODEL, dtype="float32"), progress=progress.append)
        yield Trained(cache, model, progress)


def test_training_reports_progress_and_stores_its_quality(trained):
    recipe = presets.trained_preset(TRAINED_MODEL).recipe
    assert trained.progress[0].startswith(TRAINING_LINE)
    assert f"step {recipe.steps}/{recipe.steps}, loss" in trained.progress[-2]
    assert "bits per held-out byte" in trained.progress[-1]
    quality = presets.trained_quality(TRAINED_MODEL)
    assert quality["held_out_bits_per_byte"] < quality["unigram_bits_per_byte"] - 0.2  # it learned more than byte counts
    assert quality["steps"] == recipe.steps and quality["training_s"] > 0
    assert quality["corpus"]["digest"] == corpus.stdlib_corpus().digest
    assert quality["byte_margin_nats"] >= training.MINIMUM_BYTE_MARGIN_NATS
    assert 0 < quality["extra_ids_probability_mass"] < 0.25  # a low tail, not a second vocabulary
    assert presets.trained_quality(TRAINED_MODEL, seed=1) is None  # another seed is not trained yet
    assert presets.trained_quality("gpt2-mini") is None  # random weights have no training record


def test_progress_comes_at_least_every_interval(trained, monkeypatch):
    monkeypatch.setattr(training, "PROGRESS_EVERY_S", 0.0)
    preset = presets.trained_preset(TRAINED_MODEL)
    preset = dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, steps=3))
    lines = []
    training.train_byte_model(preset, corpus.stdlib_corpus().train_bytes, lines.append)
    assert [line.split(",")[0] for line in lines[1:]] == [f"semgap: training {TRAINED_MODEL}: step {step}/3" for step in (1, 2, 3)]
    assert all(line.endswith(" s") and "bits per byte" in line for line in lines[1:])


@pytest.mark.slow
def test_first_use_in_a_run_prints_training_progress_on_the_terminal(suite, tmp_path, monkeypatch):
    """pytest captures what a fixture prints; the lines must pass it, through the terminal reporter."""
    monkeypatch.setenv(weights_cache.CACHE_VARIABLE, str(tmp_path / "fresh-cache"))
    result = run_pytest(suite, "--benchmark-only", *QUICK, f"--semgap-model={TRAINED_MODEL}",
                        "--semgap-modes=local", "--semgap-phases=prefill")
    result.stdout.fnmatch_lines([f"{TRAINING_LINE}*", f"semgap: training {TRAINED_MODEL}: step *, loss * bits per "
                                 "byte, * s elapsed, ETA * s", "*bits per held-out byte*"])


def test_a_tail_that_could_reach_the_bytes_is_refused():
    preset = presets.trained_preset(TRAINED_MODEL)
    preset = dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, steps=1, tail_gap_nats=0.5))
    run = training.train_byte_model(preset, corpus.stdlib_corpus().train_bytes, lambda line: None)
    with pytest.raises(ValueError, match="an extra id can come within .* nats of every byte"):
        training.widen_vocabulary(run.model, preset)


def test_a_second_build_loads_the_cache_without_training(trained):
    progress = []
    again = presets.build_model(presets.ModelSpec(TRAINED_MODEL, dtype="float32"), progress=progress.append)
    assert progress == []
    assert weights_digest(again) == weights_digest(trained.model)
    assert [path.name for path in trained.cache.iterdir() if path.is_dir()] == [
        presets.trained_preset(TRAINED_MODEL).cache_entry(corpus.stdlib_corpus().digest)
    ]


def test_two_processes_building_at_once_train_once_and_get_the_same_weights(trained, tmp_path, monkeypatch):
    """A client and the server it spawns build at once: one trains, the other waits and loads. The weights
    also equal those this process trained into another cache: training is deterministic across processes."""
    monkeypatch.setenv(weights_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    entry = presets.trained_preset(TRAINED_MODEL).cache_entry(corpus.stdlib_corpus().digest)
    code = ("from semgap.model import presets; from tests.test_models import weights_digest; "
            f"print(weights_digest(presets.build_model(presets.ModelSpec({TRAINED_MODEL!r}, dtype='float32'))))")
    logs = [tmp_path / f"builder-{index}.log" for index in range(2)]
    builders = []
    try:
        with weights_cache.entry_lock(entry):  # both builders start while the lock is taken, so they overlap
            for log in logs:
                with open(log, "w") as stderr:
                    builders.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(),
                                                     stdout=subprocess.PIPE, stderr=stderr, text=True))
            deadline = time.monotonic() + 120
            while not all("waiting" in log.read_text() for log in logs):
                assert time.monotonic() < deadline, [log.read_text() for log in logs]
                assert all(builder.poll() is None for builder in builders), [log.read_text() for log in logs]
                time.sleep(0.2)
        digests = [builder.communicate(timeout=300)[0].strip() for builder in builders]
    finally:
        for builder in builders:
            builder.kill()
            builder.wait()
    outputs = [log.read_text() for log in logs]
    assert [builder.returncode for builder in builders] == [0, 0], outputs
    assert sum(TRAINING_LINE in output for output in outputs) == 1, outputs
    assert digests == [weights_digest(trained.model)] * 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_greedy_tokens_stay_on_the_byte_ids_whatever_the_input(trained, dtype):
    """The certificate (byte_margin_nats) holds in every serving dtype, and no input found makes an extra id win:
    neither hidden states aimed at an extra id's row, nor prompts of ids from the whole vocabulary."""
    model = presets.build_model(presets.ModelSpec(TRAINED_MODEL, dtype=dtype, device="cpu"), progress=pytest.fail)
    assert training.byte_margin_nats(model) > 0.9 * training.MINIMUM_BYTE_MARGIN_NATS
    generator = torch.Generator().manual_seed(0)
    rows = model.lm_head.weight.float()
    chosen = torch.randint(training.BYTE_VOCABULARY, len(rows), (256,), generator=generator)
    # The final layer norm's input that raises extra id j's logit most: along w * row_j (w its weight).
    aimed = model.transformer.ln_f.weight.float() * rows[chosen]
    aimed = (aimed - aimed.mean(dim=-1, keepdim=True)) * torch.logspace(-2, 3, len(chosen))[:, None]
    with torch.no_grad():
        logits = model.lm_head(model.transformer.ln_f(aimed.to(model.dtype)))  # [256, vocab]
        prompts = torch.randint(0, len(rows), (4, 32), generator=generator)
        prompt_logits = model(input_ids=prompts, use_cache=False).logits  # [4, 32, vocab]
    assert int(logits.float().argmax(dim=-1).max()) < training.BYTE_VOCABULARY
    assert int(prompt_logits.float().argmax(dim=-1).max()) < training.BYTE_VOCABULARY


def test_greedy_next_byte_beats_every_guess_that_ignores_the_context(trained):
    """On held-out text, the argmax byte is right more often than the best constant guess could ever be,
    which only a model that reads its context can do (an untrained one is right about 1 % of the time)."""
    windows = training.held_out_windows(corpus.stdlib_corpus().held_out_bytes, presets.trained_preset(TRAINED_MODEL).recipe)
    with torch.no_grad():
        guesses = torch.cat([trained.model(input_ids=batch[:, :-1], use_cache=False).logits.argmax(dim=-1)
                             for batch in windows.split(8)])  # [windows, length]
    targets = windows[:, 1:]
    best_constant_guess = targets.flatten().bincount().max().item() / targets.numel()
    assert (guesses == targets).float().mean().item() > best_constant_guess


def test_cache_key_covers_everything_that_determines_the_weights(monkeypatch):
    preset = presets.trained_preset(TRAINED_MODEL)
    digest = corpus.stdlib_corpus().digest
    others = [
        preset.cache_key("another corpus"),
        dataclasses.replace(preset, seed=1).cache_key(digest),
        dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, steps=preset.recipe.steps + 1)).cache_key(digest),
        dataclasses.replace(preset, config={**preset.config, "n_layer": 3}).cache_key(digest),
    ]
    # sys.modules: transformers swaps its lazy module object once loaded, so the imported name may be stale
    for module, name in (("torch", "__version__"), ("transformers", "__version__"), ("semgap.model.training", "CODE_DIGEST")):
        monkeypatch.setattr(sys.modules[module], name, "another version")
        others.append(preset.cache_key(digest))
        monkeypatch.undo()
    keys = [preset.cache_key(digest), *others]
    assert len(set(keys)) == len(keys)


def test_a_training_entry_needs_exactly_the_recipe_keys():
    entry = dataclasses.asdict(presets.trained_preset(TRAINED_MODEL).recipe)
    with pytest.raises(ValueError, match=r"missing \['steps'\], unknown \['epochs'\]"):
        training.TrainingRecipe.from_preset("x", {**{k: v for k, v in entry.items() if k != "steps"}, "epochs": 1})
    with pytest.raises(ValueError, match="must be positive"):
        training.TrainingRecipe.from_preset("x", {**entry, "steps": 0})
    with pytest.raises(ValueError, match="not a trained preset"):
        training.TrainedPreset.from_preset("gpt2-mini", presets.named()["gpt2-mini"], 0)


def test_the_trained_preset_has_the_default_presets_shape():
    """Switching --semgap-model between gpt2-mini and gpt2-mini-trained changes only the weights."""
    shape = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "tie_word_embeddings")
    random, trained = presets.config_of("gpt2-mini"), presets.config_of("gpt2-mini-trained")
    assert [getattr(random, key) for key in shape] == [getattr(trained, key) for key in shape]
    assert presets.weights_kind("gpt2-mini-trained") == "trained" and presets.weights_kind("gpt2-mini") == "random"
    assert set(presets.trained_presets()) == {"gpt2-mini-trained", TRAINED_MODEL}


def test_training_command_prints_the_checkpoint_and_its_quality(trained, capsys):
    assert train.main([TRAINED_MODEL]) == 0
    path, quality = capsys.readouterr().out.split("\n", 1)
    assert Path(path).parent == trained.cache and json.loads(quality)["preset"] == TRAINED_MODEL
    with pytest.raises(SystemExit):
        train.main(["gpt2-mini"])
    assert "'gpt2-mini' is not a trained preset; choose from gpt2-mini-trained" in capsys.readouterr().err
