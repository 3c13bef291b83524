#!/usr/bin/env python3
"""Server reflection driven by grpcio-reflection, knowing nothing of our protos.

ProtoReflectionDescriptorDatabase (grpc.reflection.v1alpha) lists the services
and backs a DescriptorPool that resolves every message and enum of
codereview.v1; each resolved message is compared, field by field, with the
stubs generated from proto/ (tests/python/gen). Then GetSnapshot is called with
message classes built from the reflected descriptors only. The same questions
are asked of grpc.reflection.v1 with the package's message classes (the two
versions share every message and field number).

    reflection_client.py --server 127.0.0.1:50051 --session S [--token T]

Prints `PASS check` or `FAIL check: reason`; exits 1 if any check failed.
"""

import argparse
import os
import sys
import traceback

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")
sys.path.insert(0, GEN)

from codereview.v1 import codereview_pb2 as generated  # noqa: E402

SERVICE = "codereview.v1.CodeReviewService"
EXPECTED_SERVICES = {
    SERVICE,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]

failures = []


def case(name):
    def wrap(fn):
        def run(*args):
            try:
                fn(*args)
                print(f"PASS {name}")
            except Exception:  # noqa: BLE001 - report, do not hide
                failures.append(name)
                print(f"FAIL {name}: {traceback.format_exc()}")

        run.__name__ = name
        return run

    return wrap


def all_messages(descriptors):
    """Every message (nested too) of the generated file, by full name."""
    for message in descriptors:
        yield message
        yield from all_messages(message.nested_types)


def all_enums(file_descriptor):
    yield from file_descriptor.enum_types_by_name.values()
    for message in all_messages(file_descriptor.message_types_by_name.values()):
        yield from message.enum_types


def field_shape(field):
    """What a field is on the wire and to a program."""
    type_name = (field.message_type or field.enum_type or field).full_name if field.type in (11, 14) else ""
    oneof = field.containing_oneof.name if field.containing_oneof else ""
    return (field.name, field.number, field.type, field.is_repeated, field.has_presence, type_name, oneof)


@case("list_services")
def list_services(database):
    services = set(database.get_services())
    assert services == EXPECTED_SERVICES, f"services {sorted(services)}"


@case("resolve_every_message")
def resolve_every_message(pool):
    checked = 0
    for expected in all_messages(generated.DESCRIPTOR.message_types_by_name.values()):
        got = pool.FindMessageTypeByName(expected.full_name)
        want_fields = [field_shape(f) for f in expected.fields]
        got_fields = [field_shape(f) for f in got.fields]
        assert got_fields == want_fields, f"{expected.full_name}: {got_fields} != {want_fields}"
        want_oneofs = [o.name for o in expected.oneofs]
        assert [o.name for o in got.oneofs] == want_oneofs, expected.full_name
        checked += 1
    for expected in all_enums(generated.DESCRIPTOR):
        got = pool.FindEnumTypeByName(expected.full_name)
        assert [(v.name, v.number) for v in got.values] == [(v.name, v.number) for v in expected.values], (
            expected.full_name
        )
        checked += 1
    assert checked >= 20, f"only {checked} types resolved"


@case("resolve_the_service")
def resolve_the_service(pool):
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    expected = {
        m.name: (m.input_type.full_name, m.output_type.full_name)
        for m in generated.DESCRIPTOR.services_by_name["CodeReviewService"].methods
    }
    assert methods == expected, methods
    pool.FindServiceByName("grpc.health.v1.Health")


@case("call_get_snapshot_without_protos")
def call_get_snapshot(channel, pool, session, metadata):
    method = pool.FindMethodByName(f"{SERVICE}.GetSnapshot")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{SERVICE}/GetSnapshot",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    snapshot = call(request_class(session_id=session), timeout=10, metadata=metadata)
    assert snapshot.session_id == session, snapshot
    assert [f.file_path for f in snapshot.files] == ["reflected.rs"], snapshot


@case("v1_answers_the_same")
def v1_answers_the_same(channel):
    info = channel.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    questions = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="codereview.v1.CodeEdit.Op"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="grpc/health/v1/health.proto"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="codereview.v1.NoSuchThing"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="grpc/testing/test.proto"),
    ]
    answers = list(info(iter(questions), timeout=10))
    assert len(answers) == len(questions), answers
    for question, answer in zip(questions, answers):
        assert answer.original_request == question, answer
    names = {s.name for s in answers[0].list_services_response.service}
    assert names == EXPECTED_SERVICES, names
    files = answers[1].file_descriptor_response.file_descriptor_proto
    parsed = descriptor_pb2.FileDescriptorProto.FromString(files[0])
    assert parsed.name == "codereview/v1/codereview.proto", parsed.name
    assert "CodeEdit" in [m.name for m in parsed.message_type]
    parsed = descriptor_pb2.FileDescriptorProto.FromString(answers[2].file_descriptor_response.file_descriptor_proto[0])
    assert parsed.package == "grpc.health.v1", parsed.package
    for unknown in answers[3:]:
        assert unknown.WhichOneof("message_response") == "error_response", unknown
        assert unknown.error_response.error_code == NOT_FOUND, unknown


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--token", help="bearer token for GetSnapshot (reflection itself needs none)")
    args = parser.parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with grpc.insecure_channel(args.server) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        list_services(database)
        resolve_every_message(pool)
        resolve_the_service(pool)
        call_get_snapshot(channel, pool, args.session, metadata)
        v1_answers_the_same(channel)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
