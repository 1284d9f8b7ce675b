"""The op-level wire format without a server: values round-trip exactly, and malformed ones are refused."""
import math

import pytest
import torch

from semgap.wire import op_protocol
from semgap.wire.op_protocol import ProtocolError

DEVICE = torch.device("cpu")


def round_trip(value):
    uploads = {}

    def tensor_ref(tensor):
        uploads[f"u{len(uploads)}"] = tensor
        return {"upload": f"u{len(uploads) - 1}"}

    text = op_protocol.dumps(op_protocol.encode_value(value, tensor_ref))
    return op_protocol.decode_value(op_protocol.loads(text), lambda ref: uploads[ref["upload"]], DEVICE)


@pytest.mark.parametrize("value", [
    None, True, 3, -2**40, 0.1, 1e-300, float("inf"), "floor", [1, [2, 3]], torch.bfloat16, torch.int64,
    torch.strided, torch.contiguous_format, torch.channels_last, [torch.float16, None, 2.5],
])
def test_values_round_trip_exactly(value):
    assert round_trip(value) == value
    assert type(round_trip(value)) is type(value)


def test_nan_tuples_devices_and_tensors():
    assert math.isnan(round_trip(float("nan")))
    assert round_trip((1, 2)) == [1, 2]  # tuples travel as lists: aten accepts either
    assert round_trip(torch.device("cpu")) == torch.device("cpu")
    remote = op_protocol.encode_value(torch.device("meta"), None)  # any device but the host is the server's
    assert remote == {"device": "remote"}
    assert op_protocol.decode_value(remote, None, torch.device("meta")) == torch.device("meta")  # the server's device
    tensor = torch.arange(3)
    assert round_trip([tensor])[0] is tensor


@pytest.mark.parametrize("value, message", [
    ({"device": "cuda"}, "unknown device 'cuda'"),
    ({"dtype": "no_such_type"}, "unknown dtype 'no_such_type'"),
    ({"dtype": "nn"}, "unknown dtype 'nn'"),  # a torch attribute that is not a dtype
    ({"layout": "float32"}, "unknown layout 'float32'"),
    ({"exec": "print(1)"}, "malformed op-level value"),
    ({}, "malformed op-level value"),
    ({"dtype": "float32", "device": "remote"}, "malformed op-level value"),
])
def test_malformed_values_are_refused(value, message):
    with pytest.raises(ProtocolError, match=message):
        op_protocol.decode_value(value, None, DEVICE)


def test_values_without_an_encoding_are_refused():
    with pytest.raises(TypeError, match="argument of type object has no wire encoding"):
        op_protocol.encode_value(object(), None)


@pytest.mark.parametrize("name", ["aten::mm.default", "aten::add.Tensor", "aten::_to_copy.default"])
def test_aten_ops_resolve_by_name(name):
    assert op_protocol.op_name(op_protocol.resolve_op(name)) == name


@pytest.mark.parametrize("name", ["aten::from_file.default", "prims::add.default", "aten::mm", "mm", None,
                                  "aten::mm.default; import os", "aten::__class__.default"])
def test_other_names_are_refused(name):
    with pytest.raises(ProtocolError, match="refused op|unknown op"):
        op_protocol.resolve_op(name)


def test_the_weight_manifest_names_shapes_and_dtypes():
    first = [("a", torch.zeros(2, 3)), ("b", torch.zeros(3))]
    assert op_protocol.manifest_sha256(first) == op_protocol.manifest_sha256([(n, t.clone()) for n, t in first])
    assert op_protocol.manifest_sha256(first) != op_protocol.manifest_sha256([("a", torch.zeros(3, 2)), ("b", torch.zeros(3))])
    assert op_protocol.manifest_sha256(first) != op_protocol.manifest_sha256([("a", torch.zeros(2, 3).half()), first[1]])


def test_storage_extent():
    assert op_protocol.storage_extent((2, 3), (3, 1), 0) == 6
    assert op_protocol.storage_extent((2, 3), (1, 2), 4) == 4 + 1 + 4 + 1
    assert op_protocol.storage_extent((0, 3), (3, 1), 5) == 5
