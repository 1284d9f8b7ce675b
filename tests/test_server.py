"""The server: clear errors that leave it serving, loopback by default, clean shutdown, bounded connects, checked uploads."""
import re
import signal
import time

import pytest
import torch

from semgap.wire import codec, transport

from semgap.model import presets

from semgap.bench.testbed import serverproc
from semgap.server.model_server import ModelServer, frame_limit_bytes
from semgap.bench.testbed.serverproc import ServerProcess, ServerStartError


from .conftest import TEST_MODEL, unused_port


def call(client, op, tensors=None, meta=None):
    return codec.decode(client.call(op, codec.encode(tensors or {}, meta)))


def test_unknown_kv_handle_is_a_clear_error_and_the_server_keeps_serving(client):
    with pytest.raises(transport.ServerError, match="unknown KV handle 'no-such-handle': it was released"):
        call(client, "decode", {"input_ids": torch.tensor([[1]])}, {"kv_handle": "no-such-handle"})
    assert call(client, "hello")[1]["model"] == TEST_MODEL


def test_unknown_operation_is_a_clear_error(client):
    with pytest.raises(transport.ServerError, match="unknown operation 'reboot'"):
        call(client, "reboot")
    assert call(client, "hello")[1]["device"] == "cpu"


def test_echo_returns_the_exact_bytes(client):
    payload = bytes(range(256)) * 1000
    assert client.call("echo", payload) == payload


@pytest.mark.parametrize("transport_name", transport.TRANSPORTS)
def test_unreachable_server_fails_fast_with_advice(transport_name):
    start = time.monotonic()
    with pytest.raises(transport.ServerUnreachable, match=f"no semgap server answers at 127.0.0.1:.*--transport {transport_name}"):
        transport.connect(transport_name, "127.0.0.1", unused_port(), connect_timeout_s=3)
    assert time.monotonic() - start < 10


def test_an_unknown_transport_names_the_choices():
    with pytest.raises(ValueError, match="unknown transport 'grpc'; choose from tcp, rpc"):
        transport.connect("grpc", "127.0.0.1", 1)


def test_loopback_detection():
    assert transport.is_loopback("127.0.0.1") and transport.is_loopback("::1") and transport.is_loopback("localhost")
    assert not transport.is_loopback("0.0.0.0") and not transport.is_loopback("10.0.0.1")


def test_sigterm_stops_the_server_cleanly(tmp_path):
    process = ServerProcess.spawn(TEST_MODEL, "127.0.0.1", 0, tmp_path, extra_args=("--no-gpu-monitor",))
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0
    assert "semgap server stopped" in process.log_tail()


def test_a_slow_server_start_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(serverproc, "PROGRESS_EVERY_S", 0.2)
    lines = []
    slow_start = ("bash", "-c", 'sleep 1.5; exec "$@"', "slow-start")  # then runs the server's argv
    process = ServerProcess.spawn(TEST_MODEL, "127.0.0.1", 0, tmp_path, command_prefix=slow_start,
                                  extra_args=("--no-gpu-monitor",), progress=lines.append)
    process.stop()
    assert len(lines) >= 3 and all(line.startswith("semgap: waiting") for line in lines)


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    with pytest.raises(ServerStartError, match="unknown model"):
        ServerProcess.spawn("no-such-model", "127.0.0.1", 0, tmp_path, ready_timeout_s=60)


def test_a_post_is_counted_as_bytes_sent_and_not_as_a_round_trip(client):
    before = client.counter.snapshot()
    client.post("echo", b"x" * 100)
    counted = client.counter.since(before)
    assert (counted.bytes_sent, counted.bytes_received, counted.posts, counted.round_trips) == (100, 0, 1, 0)
    assert call(client, "hello")[1]["model"] == TEST_MODEL  # the connection goes on after a post


def test_a_stateless_step_that_lacks_a_weight_is_refused_not_run_on_resident_weights(client, preset_model):
    weights = {f"w.{name}": tensor for name, tensor in presets.weights_of(preset_model).items()}
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(transport.ServerError, match=r"must ship exactly the model's \d+ weights: \d+ missing"):
        call(client, "naive_step", {"input_ids": ids})
    without_one = {name: tensor for name, tensor in weights.items() if name != "w.transformer.h.0.mlp.c_fc.weight"}
    with pytest.raises(transport.ServerError, match=r"1 missing \['transformer.h.0.mlp.c_fc.weight'\]"):
        call(client, "naive_step", {"input_ids": ids, **without_one})
    with pytest.raises(transport.ServerError, match=r"1 unexpected \['no.such.weight'\]"):
        call(client, "naive_step", {"input_ids": ids, **weights, "w.no.such.weight": torch.zeros(1)})
    logits = call(client, "naive_step", {"input_ids": ids, **weights})[0]["logits"]  # all of them: it runs
    assert logits.shape == (1, 3, preset_model.config.vocab_size)


# --- uploads are checked ---------------------------------------------------------------------------

def test_a_partial_or_empty_upload_is_refused_naming_what_is_missing(client, preset_model):
    weights = presets.weights_of(preset_model)
    handle = call(client, "upload_weights", weights)[1]["weights_handle"]  # other tests share this server
    partial = {name: tensor for name, tensor in weights.items() if name != "transformer.h.1.attn.c_attn.weight"}
    with pytest.raises(transport.ServerError, match=(r"uploaded weights do not fit model 'gpt2-test', nothing was loaded: "
                                                      r"1 of its \d+ weights missing \['transformer.h.1.attn.c_attn.weight'\]")):
        call(client, "upload_weights", partial)
    with pytest.raises(transport.ServerError, match=rf"{len(weights)} of its {len(weights)} weights missing \['lm_head"
                                                    r"|transformer\.h\.0"):
        call(client, "upload_weights", {})
    # nothing was loaded: the complete upload's weights still answer to their handle
    assert "kv_handle" in call(client, "prefill", {"input_ids": torch.tensor([[1, 2]])}, {"weights_handle": handle})[1]


@pytest.fixture(scope="module")
def model_server():
    """A model server in this process, no transport: its handler called directly."""
    server = ModelServer(presets.ModelSpec(TEST_MODEL))
    yield server
    server.close()


def upload(server: ModelServer, weights: dict) -> str:
    return codec.decode(server.handle("upload_weights", codec.encode(weights)))[1]["weights_handle"]


def test_an_upload_of_another_shape_or_dtype_is_refused_and_the_handle_is_a_hash_of_what_was_loaded(model_server):
    weights = {name: tensor.clone() for name, tensor in presets.weights_of(model_server.engine.model).items()}
    name = "transformer.h.0.mlp.c_fc.weight"
    with pytest.raises(ValueError, match=rf"1 of another shape or dtype: {name} \(3, 3\) torch.float32 \(the model's"):
        upload(model_server, {**weights, name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=rf"1 of another shape or dtype: {name} .* torch.float64"):
        upload(model_server, {**weights, name: weights[name].double()})
    with pytest.raises(ValueError, match=r"1 unexpected \['no.such.weight'\]"):
        upload(model_server, {**weights, "no.such.weight": torch.zeros(1)})
    assert model_server.weights_handle == "server-built"  # none of them loaded anything
    handle = upload(model_server, weights)
    assert re.fullmatch("[0-9a-f]{32}", handle) and upload(model_server, {k: v.clone() for k, v in weights.items()}) == handle
    changed = upload(model_server, {**weights, name: weights[name] + 1})
    assert changed != handle and model_server.weights_handle == changed
    assert torch.equal(model_server.engine.model.state_dict()[name], weights[name] + 1)  # what the hash names is loaded


def test_the_frame_limit_follows_the_model(model_server):
    model = model_server.engine.model
    weight_bytes = sum(t.numel() * t.element_size() for t in presets.unique_weights(model).values())
    limit = frame_limit_bytes(model, model_server.engine.max_cache_len)
    assert model_server.max_frame_bytes == limit
    assert weight_bytes * 1.5 + (64 << 20) < limit < weight_bytes * 3 + (64 << 20) < 4 << 30
    small = codec.encode({"x": torch.zeros(limit + 1, dtype=torch.uint8)}, compress=True)  # a few kB on the wire
    with pytest.raises(codec.MalformedMessage, match="beyond this receiver's limit"):
        model_server.handle("prefill", small)


def test_a_server_asked_for_port_0_serves_the_handshake_on_the_port_it_reports(preset_server, client):
    # preset_server was spawned with port 0: the kernel picked the port, so parallel tests cannot race for one.
    assert preset_server.port != 0
    assert serverproc.reported_port(preset_server.log_tail(10_000)) == preset_server.port
    assert call(client, "hello")[1]["model"] == TEST_MODEL


def test_the_reported_port_is_read_from_ipv4_and_ipv6_ready_lines():
    assert serverproc.reported_port("loading\n" + serverproc.ready_line("::1", 40123, "tcp") + "\n") == 40123
    assert serverproc.reported_port(serverproc.ready_line("10.0.0.2", 29500, "rpc calibration peer")) == 29500
    assert serverproc.reported_port("semgap server built model=gpt2-test") is None
