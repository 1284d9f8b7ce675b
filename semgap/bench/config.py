"""The semgap command-line options: parsing, validation, and the run's settings read from them once."""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from semgap.model import cpus, presets

from semgap.analysis import sequential
from semgap.bench import rundir

from semgap.wire import transport
from semgap.bench.argtypes import (address, choices, device, fraction as _fraction, items, non_negative_int,
                                   parsed_by, positive_int, positive_ints, session_counts, share as _share)
from semgap.client.modes import MODES, PHASES
from semgap.model.program import PROGRAMS, Program
from semgap.model.runtime import FAST_PATH_SETTINGS
from semgap.model.sampling import Sampler
from semgap.techniques import TECHNIQUES, TechniqueSet, ablation_chain, ablation_sets
from semgap.wire.transport import auth

LINKS = ("loopback", "netns")
FIXED_BLOCKS = 10  # a sweep of link rates, without --semgap-blocks


def _models(text: str) -> tuple[str, ...]:
    """One model, or several separated by commas, each a preset or a local checkpoint directory; each once."""
    names = tuple(dict.fromkeys(items(text)))
    if not names:
        raise argparse.ArgumentTypeError(f"expected a model, or models separated by commas, got {text!r}")
    try:
        return tuple(presets.check_model_name(name) for name in names)
    except presets.UnknownModelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ablation(text: str) -> str:
    if text.strip() not in ("off", "all"):
        ablation_chain(text, TechniqueSet())  # names and settings checked now; "all" takes the headline's later
    return text.strip()


DEFAULT_SEMANTIC = "prune,token-only,narrow-ids"


def _secret_file(text: str) -> Path:
    try:
        auth.load_secret(Path(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return Path(text)


def _rates(text: str) -> tuple[int, ...]:
    from semgap.bench.testbed.rates import parse_rate

    try:
        return tuple(parse_rate(part) for part in items(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("semgap", "semgap: the semantic-gap experiment")
    option = group.addoption
    option("--semgap-model", metavar="LIST", type=_models, default=(presets.DEFAULT_MODEL,),
           help=f"model preset ({', '.join(presets.named())}) or a local checkpoint directory; a comma list runs "
                "every case, batching and KV-recovery benchmark for each model, in the same blocks, with verdicts "
                f"per model. Default: {presets.DEFAULT_MODEL}")
    option("--semgap-seed", metavar="N", type=non_negative_int, default=0, help="seed of a preset's weights. Default: 0")
    option("--semgap-dtype", metavar="DTYPE", default="auto", choices=["auto", *presets.DTYPES],
           help="model dtype: auto is the serving dtype, bfloat16 on the CPU and float16 on CUDA. Default: auto")
    option("--semgap-device", metavar="DEVICE", type=device, default="auto",
           help="where the model runs (client for local, server otherwise): auto, cpu, cuda. Default: auto")
    option("--semgap-fast-path", metavar="SETTING", default="auto", choices=FAST_PATH_SETTINGS,
           help="decode with a static KV cache and torch.compile (CUDA graphs) wherever the cache stays resident "
                "(local, remote_cache, semantic; naive ships its cache and stays eager): on, off, static (static "
                "cache, no compile), or auto = on for CUDA, off for CPU. Default: auto")
    option("--semgap-cpus", metavar="POLICY", choices=cpus.POLICIES, default="auto",
           help="auto: a spawned server and this client run on disjoint halves of the CPUs this process may use, "
                "each with that many intra-op threads, and local computes with the server's thread count (needs "
                "two CPUs; an external server reports its own); off: both use every CPU, as the OS schedules. "
                "Default: auto")
    option("--semgap-modes", metavar="LIST", type=choices(list(MODES), "mode"), default=tuple(MODES),
           help=f"comma list of modes ({', '.join(MODES)}) or all. Default: all")
    option("--semgap-phases", metavar="LIST", type=choices(PHASES, "phase"), default=PHASES,
           help="comma list of phases (prefill, decode) or all. Default: all")
    option("--semgap-prompt-tokens", metavar="N", type=positive_int, default=128, help="prompt length. Default: 128")
    option("--semgap-decode-steps", metavar="LIST", type=positive_ints, default=(5,),
           help="tokens generated per decode round; a comma list (e.g. 5,50,250) makes every decode benchmark "
                "one per length, to show how bytes and latency per step grow with the KV cache. Default: 5")
    option("--semgap-blocks", metavar="N", type=positive_int, default=None,
           help="a fixed design of N interleaved blocks (each runs every case in a seeded shuffled order; the "
                "latency verdicts compare modes block by block), judged once at the end. Default: the sequential "
                "design, blocks until every H2 headline is decided (--semgap-max-blocks); with several link "
                f"rates, {FIXED_BLOCKS} blocks")
    option("--semgap-max-blocks", metavar="N", type=positive_int, default=sequential.DEFAULT_MAX_BLOCKS,
           help=f"the sequential design's most blocks: it looks after {sequential.FIRST_LOOK} blocks and every "
                f"{sequential.LOOK_EVERY} after, and stops when every H2 headline is decided. "
                f"Default: {sequential.DEFAULT_MAX_BLOCKS}")
    option("--semgap-rounds", metavar="N", type=positive_int, default=3,
           help="measured rounds of each case in each block. Default: 3")
    option("--semgap-warmup-rounds", metavar="N", type=non_negative_int, default=1,
           help="discarded rounds of each case before its measured rounds in each block. Default: 1")
    option("--semgap-block-seed", metavar="N", type=non_negative_int, default=None,
           help="seed of the order of the cases inside each block; give a run's block_order_seed to replay its "
                "order. Default: drawn anew for each run (and recorded)")
    option("--semgap-batch-sessions", metavar="LIST", type=session_counts, default=(1, 4, 16),
           help="concurrent client sessions of the batching benchmark (benchmarks/test_batching.py), a comma list "
                "(one benchmark per count and flavour), or none to leave it out. Default: 1,4,16")
    option("--semgap-batch-rounds", metavar="N", type=positive_int, default=5,
           help="measured rounds of each batching benchmark, after --semgap-warmup-rounds. Default: 5")
    option("--semgap-semantic", metavar="LIST", type=parsed_by(TechniqueSet.parse),
           default=TechniqueSet.parse(DEFAULT_SEMANTIC),
           help=f"the headline technique set of the semantic mode, the one H1 and H2 judge: a comma list of "
                f"{', '.join(TECHNIQUES)} (settings as cast=bfloat16, int8, compress=LEVEL, logprobs=K), or none. "
                f"Default: {DEFAULT_SEMANTIC}")
    option("--semgap-ablation", metavar="LIST", type=parsed_by(_ablation), default="off",
           help="add ablation variants of the semantic mode as cases of the same blocks: no technique, each "
                "listed technique alone, and each cumulative combination in the order listed; all = "
                "prune,cast,int8,compress,narrow-ids,token-only,logprobs with the headline's settings. Default: off")
    option("--semgap-sampler", metavar="SPEC", type=parsed_by(Sampler.parse), default=Sampler(),
           help="how every mode picks tokens, local and the server's token-only alike: greedy, top-k=K or "
                "top-p=P, then ,seed=N for the seeded draws. Default: greedy")
    option("--semgap-program", metavar="NAME", type=parsed_by(Program), default=Program(),
           help=f"the program every mode runs ({', '.join(PROGRAMS)}): generate is transformers' generate() (the "
                "prefill keeps the last position's logits, the sampler reads where the logits are: greedy one id); "
                "full-logits keeps every prompt position's logits, the workload of semgap's first runs. Default: generate")
    option("--semgap-server", metavar="HOST:PORT", type=address, default=None,
           help="use the semgap server already running there; nothing is spawned. Default: spawn one")
    option("--semgap-host", metavar="ADDRESS", default="127.0.0.1",
           help="address a spawned server binds (rpc: loopback only, IPv4). Default: 127.0.0.1")
    option("--semgap-link", metavar="KIND", choices=LINKS, default="loopback",
           help="loopback, or netns: the server in its own network namespace behind a veth pair (root). Default: loopback")
    option("--semgap-link-rate", metavar="RATES", type=_rates, default=(),
           help="with --semgap-link netns: tbf rate(s) on the veth, comma list like 100mbit,1gbit. Default: unshaped")
    option("--semgap-transport", metavar="NAME", choices=list(transport.TRANSPORTS), default=transport.DEFAULT_TRANSPORT,
           help="how client and server exchange requests: tcp (semgap's own: one TCP connection, length-prefixed "
                "frames, HMAC-authenticated, no pickle) or rpc (PyTorch RPC over TensorPipe, loopback or the netns "
                f"link only). Default: {transport.DEFAULT_TRANSPORT}")
    option("--semgap-secret-file", metavar="PATH", type=_secret_file, default=None,
           help="file holding the shared secret the tcp transport proves to the server; a spawned server gets a "
                f"fresh random one unless this or ${auth.SECRET_VARIABLE} is set. Default: ${auth.SECRET_VARIABLE}")
    option("--semgap-calibrate-rpc", action="store_true", default=False,
           help="calibrate the rpc transport too in a run on tcp: it starts a PyTorch RPC peer on the run's link, "
                "which unpickles whatever reaches it (a run on rpc calibrates rpc anyway). Default: off")
    option("--semgap-rpc-timeout", metavar="SECONDS", type=positive_int, default=120,
           help="timeout of one call to the server, whatever the transport. Default: 120")
    option("--semgap-server-start-timeout", metavar="SECONDS", type=positive_int, default=600,
           help="how long to wait for a spawned server to build its model, and for the one weight upload. Default: 600")
    option("--semgap-results", metavar="DIR", type=Path, default=Path("results"),
           help="each run writes its JSON, report, verdicts, plots and server logs into DIR/<run id>/; "
                "DIR/latest points at the newest run that measured something. Default: results")
    option("--semgap-plots", metavar="SETTING", choices=["on", "off"], default="on",
           help="draw the report's PNG plots after the run (about 2 s on a 2-core CPU); off leaves them out (`semgap-report "
                "--force RUN_DIR/benchmark.json` rewrites the report with them later, from the JSON). Default: on")
    option("--semgap-h1", metavar="FRACTION", type=_fraction, default=0.30,
           help="H1: the byte reduction semantic must reach against every blind baseline (the headline: the strongest). Default: 0.30")
    option("--semgap-h2", metavar="FRACTION", type=_fraction, default=0.15,
           help="H2: the latency reduction semantic must reach against every blind baseline (the headline: the strongest). Default: 0.15")
    option("--semgap-alpha", metavar="FRACTION", type=_fraction, default=0.05,
           help="significance level of the latency test. Default: 0.05")
    option("--semgap-min-agreement", metavar="FRACTION", type=_share, default=1.0,
           help="token agreement with local below which a saving is labelled LOSSY, not SUPPORTED. Default: 1.0")
    option("--semgap-enforce", action="store_true", default=False,
           help="fail the run when a hypothesis is NOT SUPPORTED (a CI gate). Default: off")


def _block_seed(config: pytest.Config) -> int:
    """The given block-order seed, else one drawn per run; xdist workers derive it from their shared run uid,
    since each worker collects the matrix itself and must collect the same order."""
    if config.getoption("semgap_block_seed") is not None:
        return config.getoption("semgap_block_seed")
    shared = getattr(config, "workerinput", {}).get("testrunuid")
    return int(shared[:8], 16) % 2**31 if shared else secrets.randbelow(2**31)


def _design(blocks: int | None, max_blocks: int, alpha: float, rates: tuple[int, ...]) -> dict:
    """A fixed design when --semgap-blocks is given, or several link rates are swept (each rate's blocks run
    one after another, so one rate's looks would wait for the others); the sequential design otherwise."""
    if blocks is not None or len(rates) > 1:
        return {"blocks": blocks or FIXED_BLOCKS, "design": None}
    return {"blocks": max_blocks, "design": sequential.Design.plan(max_blocks, alpha)}


@dataclass(frozen=True)
class SemgapConfig:
    """The run's settings, read once from the options and kept in the pytest stash.

    `models` are the run's models; `model` is the one a session serves (`for_model`), the first by default.
    """

    models: tuple[str, ...]
    model: str
    seed: int
    dtype: str
    device: str
    fast_path: str
    cpus: str  # the CPU policy (semgap.model.cpus.POLICIES)
    # Where a spawned server and this client compute, decided once before the client pins itself; None when
    # nothing is pinned (policy off, an external server, or fewer than two CPUs).
    cpu_plan: cpus.CpuPlan | None
    modes: tuple[str, ...]
    phases: tuple[str, ...]
    prompt_tokens: int
    decode_steps: tuple[int, ...]  # one decode benchmark per length
    blocks: int  # blocks the matrix may run: the fixed design's, or the sequential design's most
    design: sequential.Design | None  # None: a fixed design of `blocks` blocks, judged once
    rounds: int  # measured rounds per case and block
    warmup_rounds: int  # per case and block
    block_seed: int
    semantic: TechniqueSet  # the headline set
    ablation: str  # --semgap-ablation as given: off, all or a list
    sampler: Sampler
    program: Program
    server: tuple[str, int] | None
    host: str
    link: str
    link_rates_bps: tuple[int, ...]
    transport: str
    secret_file: Path | None
    rpc_timeout_s: int
    server_start_timeout_s: int
    plots: bool  # draw the report's plots after the run
    results_dir: Path  # the parent of every run's directory (--semgap-results)
    run_dir: Path  # this run's directory: results_dir/<run id>, made when something is written there
    h1: float
    h2: float
    alpha: float
    min_agreement: float
    enforce: bool
    batch_sessions: tuple[int, ...]  # concurrent sessions per batching benchmark; () leaves them out
    batch_rounds: int
    calibrate_rpc: bool  # start an rpc calibration peer although the run uses tcp

    @property
    def fixed_blocks(self) -> int:
        """What sizes the benchmarks beside the matrix (KV recovery's rounds): the fixed design's blocks, or
        FIXED_BLOCKS under the sequential design (whose blocks are not known before the matrix has run)."""
        return FIXED_BLOCKS if self.design else self.blocks

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> "SemgapConfig":
        get = config.getoption
        settings = cls(
            models=get("semgap_model"), model=get("semgap_model")[0], seed=get("semgap_seed"), dtype=get("semgap_dtype"), device=get("semgap_device"),
            fast_path=get("semgap_fast_path"), cpus=get("semgap_cpus"),
            cpu_plan=cpus.plan(get("semgap_cpus")) if get("semgap_server") is None else None,
            modes=get("semgap_modes"), phases=get("semgap_phases"), prompt_tokens=get("semgap_prompt_tokens"),
            decode_steps=get("semgap_decode_steps"), rounds=get("semgap_rounds"),
            **_design(get("semgap_blocks"), get("semgap_max_blocks"), get("semgap_alpha"), get("semgap_link_rate")),
            warmup_rounds=get("semgap_warmup_rounds"),
            block_seed=_block_seed(config),
            semantic=get("semgap_semantic"), ablation=get("semgap_ablation"), sampler=get("semgap_sampler"),
            program=get("semgap_program"),
            server=get("semgap_server"), host=get("semgap_host"), link=get("semgap_link"),
            link_rates_bps=get("semgap_link_rate"), transport=get("semgap_transport"),
            secret_file=get("semgap_secret_file"), rpc_timeout_s=get("semgap_rpc_timeout"),
            server_start_timeout_s=get("semgap_server_start_timeout"), plots=get("semgap_plots") == "on", results_dir=get("semgap_results"),
            run_dir=get("semgap_results") / rundir.new_run_id(),
            h1=get("semgap_h1"), h2=get("semgap_h2"), alpha=get("semgap_alpha"),
            min_agreement=get("semgap_min_agreement"), enforce=get("semgap_enforce"),
            batch_sessions=get("semgap_batch_sessions"), batch_rounds=get("semgap_batch_rounds"),
            calibrate_rpc=get("semgap_calibrate_rpc"),
        )
        settings.check()
        return settings

    def for_model(self, model: str) -> "SemgapConfig":
        """These settings for one of the run's models: what its session, server and benchmarks read."""
        return dataclasses.replace(self, model=model)

    def check(self) -> None:
        """Reject contradictory settings before anything starts."""
        if self.ablation != "off" and "semantic" not in self.modes:
            raise pytest.UsageError("--semgap-ablation measures variants of the semantic mode; add semantic to --semgap-modes")
        if self.link_rates_bps and self.link != "netns":
            raise pytest.UsageError("--semgap-link-rate shapes the veth of --semgap-link netns; add --semgap-link netns")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise pytest.UsageError(f"--semgap-device {self.device}: torch sees no CUDA device on this machine")
        if self.host in ("0.0.0.0", "::", ""):
            raise pytest.UsageError(
                f"--semgap-host {self.host!r} is a wildcard: give the concrete address the client should reach "
                "(bytes are counted on the connection to it)"
            )
        if self.link == "netns":
            from semgap.bench.testbed.netns import link_available

            available, reason = link_available()
            if not available:
                raise pytest.UsageError(f"--semgap-link netns cannot run here: {reason}")
        try:
            auth.load_secret(self.secret_file)  # $SEMGAP_SECRET too
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        if self.server is None and self.link == "loopback":
            try:  # what the spawned server would refuse (it always gets a secret), refused before anything starts
                transport.check_bind(transport.transport_kind(self.transport), self.host, has_secret=True)
            except transport.BindRefused as error:
                raise pytest.UsageError(f"--semgap-host {self.host} --semgap-transport {self.transport}: {error}") from None
        if self.server is not None and self.link == "netns":
            raise pytest.UsageError("--semgap-server names a server already running; --semgap-link netns starts its own")
        if len(self.models) > 1 and self.server is not None:
            raise pytest.UsageError(f"--semgap-server names one server, which holds one model; --semgap-model names "
                                    f"{len(self.models)}: give one, or let the suite spawn a server per model")
        if len(self.models) > 1 and self.transport == "rpc":
            raise pytest.UsageError(f"--semgap-transport rpc allows one RPC group per process, so one server; "
                                    f"--semgap-model names {len(self.models)}: give one, or use tcp")
        for model in self.models:
            self._check_context(model)

    def _check_context(self, model: str) -> None:
        try:
            limit = presets.context_length_of(model)
        except (OSError, ValueError) as error:  # a checkpoint directory without a readable config.json
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise pytest.UsageError(
                f"--semgap-model {model}: cannot read its config ({first_line}); a checkpoint directory "
                "needs config.json and weights"
            ) from None
        if self.prompt_tokens + self.max_decode_steps > limit:
            raise pytest.UsageError(
                f"a prompt of {self.prompt_tokens} tokens plus {self.max_decode_steps} decode steps exceeds the context "
                f"of {model} ({limit} positions); lower --semgap-prompt-tokens or --semgap-decode-steps"
            )

    @property
    def spec(self) -> presets.ModelSpec:
        return presets.ModelSpec(self.model, self.seed, self.dtype, self.device)

    @property
    def max_cache_len(self) -> int:
        """Positions a static KV cache needs: the prompt plus every decoded token."""
        return self.prompt_tokens + self.max_decode_steps

    @property
    def ablation_sets(self) -> list[TechniqueSet]:
        """The semantic variants measured beside the headline set (none without --semgap-ablation)."""
        if self.ablation == "off":
            return []
        return ablation_sets(self.semantic, ablation_chain(self.ablation, self.semantic))

    @property
    def max_decode_steps(self) -> int:
        return max(self.decode_steps)

    @property
    def external_server(self) -> str:
        """What --semgap-server names, in words: a server on another host, or one on this host's loopback."""
        if self.server is None:
            return ""
        host, port = self.server
        where = "on this host's loopback" if is_loopback(host) else "on another host"
        return f"a server the suite did not start ({host}:{port}, {where})"

    def server_args(self) -> tuple[str, ...]:
        plan = self.cpu_plan
        pinned = ("--cpus", cpus.format_cpus(plan.server_cpus), "--threads", str(plan.threads)) if plan else ()
        return ("--seed", str(self.seed), "--dtype", self.dtype, "--device", self.device, "--transport", self.transport,
                "--fast-path", self.fast_path, "--max-cache-len", str(self.max_cache_len), *pinned)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: an external server there runs on this host."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
