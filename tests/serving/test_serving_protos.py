"""The checked-in stubs are what the pinned generator makes of protos/, and our Open Inference Protocol messages
have the public field numbers (compared with tritonclient's compiled descriptors of Triton's own protos)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.grpc as tritonclient
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from serving import gen_protos
from serving._generated import grpc_service_pb2, model_config_pb2


def test_stubs_are_up_to_date(tmp_path: Path) -> None:
    gen_protos.generate(tmp_path)
    stale = gen_protos.diff(tmp_path, gen_protos.OUT_DIR)
    assert not stale, "serving/_generated is stale; run `python -m serving.gen_protos`:\n" + "".join(stale[:40])


def test_check_mode_reports_a_stale_stub(tmp_path: Path) -> None:
    gen_protos.generate(tmp_path)
    (tmp_path / "model_config_pb2.pyi").write_text("# edited by hand\n")
    assert gen_protos.diff(tmp_path, gen_protos.OUT_DIR)


def _field_signature(field: FieldDescriptor) -> tuple:
    kind = field.message_type.full_name if field.message_type else (
        field.enum_type.full_name if field.enum_type else field.type)
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return field.number, kind, field.is_repeated, oneof


def _compare_message(ours: Descriptor, theirs: Descriptor) -> None:
    for field in ours.fields:
        assert field.name in theirs.fields_by_name, f"{ours.full_name}.{field.name} is not in the public proto"
        assert _field_signature(field) == _field_signature(theirs.fields_by_name[field.name]), \
            f"{ours.full_name}.{field.name} differs from the public proto"
    for nested in ours.nested_types:
        _compare_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        _compare_enum(enum, theirs.enum_types_by_name[enum.name])


def _compare_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    for value in ours.values:
        assert theirs.values_by_name[value.name].number == value.number, f"{ours.full_name}.{value.name}"


@pytest.mark.parametrize("module", ["grpc_service", "model_config"])
def test_open_inference_protocol_matches_the_public_protos(module: str) -> None:
    ours = {"grpc_service": grpc_service_pb2, "model_config": model_config_pb2}[module].DESCRIPTOR
    theirs = {"grpc_service": tritonclient.service_pb2, "model_config": tritonclient.model_config_pb2}[module]
    theirs = theirs.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    assert ours.message_types_by_name, "no messages generated"
    for name, message in ours.message_types_by_name.items():
        _compare_message(message, theirs.message_types_by_name[name])
    for name, enum in ours.enum_types_by_name.items():
        _compare_enum(enum, theirs.enum_types_by_name[name])
    for name, service in ours.services_by_name.items():
        public = theirs.services_by_name[name]
        for method in service.methods:
            other = public.methods_by_name[method.name]
            assert (method.input_type.full_name, method.output_type.full_name, method.client_streaming,
                    method.server_streaming) == (other.input_type.full_name, other.output_type.full_name,
                                                 other.client_streaming, other.server_streaming), method.full_name


def test_stubs_coexist_with_tritonclient() -> None:
    """Both define inference.*; our private descriptor pool keeps them apart, and the bytes are interchangeable."""
    ours = model_config_pb2.ModelConfig(name="m", max_batch_size=8, input=[model_config_pb2.ModelInput(
        name="input", data_type=model_config_pb2.TYPE_FP32, dims=[1, 28, 28])])
    theirs = tritonclient.model_config_pb2.ModelConfig.FromString(ours.SerializeToString())
    assert (theirs.name, theirs.max_batch_size, list(theirs.input[0].dims)) == ("m", 8, [1, 28, 28])
    assert theirs.input[0].data_type == tritonclient.model_config_pb2.TYPE_FP32
