#!/usr/bin/env python3
"""The gRPC interop test cases, driven by Python grpcio against a server.

Each case follows the official gRPC interop test descriptions
(doc/interop-test-descriptions.md in the grpc repository). Prints
`PASS name` or `FAIL name: reason` per case; exits 1 if any case failed.

    interop_client.py --server 127.0.0.1:50051 [--cases empty_unary,ping_pong]

The stubs come from scripts/setup-peers (tests/python/gen/).
"""

import argparse
import os
import queue
import sys
import threading
import traceback

import grpc

GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")
sys.path.insert(0, GEN)
# The stubs are generated with -Iproto, so they import `grpc.testing.*` and
# `grpc.health.v1.*`, which live inside grpcio's own `grpc` package namespace.
# Let that package find the generated subpackages too.
grpc.__path__.append(os.path.join(GEN, "grpc"))

from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc  # noqa: E402

# Generous per-call timeout so a misbehaving server fails a case instead of
# hanging the run (the timeout case sets its own).
CALL_TIMEOUT = 30.0
TEST_STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"


class CaseFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CaseFailed(message)


def payload(size):
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=b"\x00" * size)


def check_payload(response_payload, size, what="response"):
    check(response_payload.type == messages_pb2.COMPRESSABLE, f"{what}: payload type {response_payload.type}")
    body = response_payload.body
    check(len(body) == size, f"{what}: payload of {len(body)} bytes, want {size}")
    check(body == b"\x00" * size, f"{what}: payload is not all zeros")


def expect_error(call_or_fn, code, message=None):
    """Runs fn (or consumes an iterator) and checks it fails with code (and message)."""
    try:
        result = call_or_fn()
    except grpc.RpcError as error:
        check(error.code() == code, f"status {error.code()} ({error.details()!r}), want {code}")
        if message is not None:
            check(error.details() == message, f"status message {error.details()!r}, want {message!r}")
        return error
    raise CaseFailed(f"call succeeded (with a {type(result).__name__}), want {code}")


class Pipe:
    """A request iterator fed one message at a time; the stream stays open until close()."""

    def __init__(self):
        self._queue = queue.Queue()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is None:
            raise StopIteration
        return item

    def add(self, request):
        self._queue.put(request)

    def close(self):
        self._queue.put(None)


def empty_unary(stub, channel):
    response = stub.EmptyCall(empty_pb2.Empty(), timeout=CALL_TIMEOUT)
    check(isinstance(response, empty_pb2.Empty), f"response {response!r} is not an Empty")


def large_unary(stub, channel):
    request = messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE, response_size=314159, payload=payload(271828)
    )
    response = stub.UnaryCall(request, timeout=CALL_TIMEOUT)
    check_payload(response.payload, 314159)


def client_streaming(stub, channel):
    requests = (messages_pb2.StreamingInputCallRequest(payload=payload(n)) for n in (27182, 8, 1828, 45904))
    response = stub.StreamingInputCall(requests, timeout=CALL_TIMEOUT)
    check(
        response.aggregated_payload_size == 74922,
        f"aggregated_payload_size {response.aggregated_payload_size}, want 74922",
    )


def server_streaming(stub, channel):
    sizes = (31415, 9, 2653, 58979)
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=size) for size in sizes],
    )
    responses = list(stub.StreamingOutputCall(request, timeout=CALL_TIMEOUT))
    check(len(responses) == len(sizes), f"{len(responses)} responses, want {len(sizes)}")
    for index, (response, size) in enumerate(zip(responses, sizes)):
        check_payload(response.payload, size, f"response {index}")


def ping_pong(stub, channel):
    request_sizes = (27182, 8, 1828, 45904)
    response_sizes = (31415, 9, 2653, 58979)
    pipe = Pipe()
    call = stub.FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
    try:
        for index, (request_size, response_size) in enumerate(zip(request_sizes, response_sizes)):
            pipe.add(
                messages_pb2.StreamingOutputCallRequest(
                    response_type=messages_pb2.COMPRESSABLE,
                    response_parameters=[messages_pb2.ResponseParameters(size=response_size)],
                    payload=payload(request_size),
                )
            )
            response = next(call, None)
            check(response is not None, f"stream ended before response {index}")
            check_payload(response.payload, response_size, f"response {index}")
    finally:
        pipe.close()
    check(next(call, None) is None, "a response after the last request")
    check(call.code() == grpc.StatusCode.OK, f"status {call.code()} ({call.details()!r})")


def empty_stream(stub, channel):
    call = stub.FullDuplexCall(iter([]), timeout=CALL_TIMEOUT)
    responses = list(call)
    check(responses == [], f"{len(responses)} responses, want none")
    check(call.code() == grpc.StatusCode.OK, f"status {call.code()} ({call.details()!r})")


def _echo_status(stub, message):
    status = messages_pb2.EchoStatus(code=2, message=message)
    request = messages_pb2.SimpleRequest(response_status=status)
    expect_error(lambda: stub.UnaryCall(request, timeout=CALL_TIMEOUT), grpc.StatusCode.UNKNOWN, message)
    return status


def status_code_and_message(stub, channel):
    status = _echo_status(stub, TEST_STATUS_MESSAGE)
    request = messages_pb2.StreamingOutputCallRequest(response_status=status)
    expect_error(
        lambda: list(stub.FullDuplexCall(iter([request]), timeout=CALL_TIMEOUT)),
        grpc.StatusCode.UNKNOWN,
        TEST_STATUS_MESSAGE,
    )


def special_status_message(stub, channel):
    _echo_status(stub, SPECIAL_STATUS_MESSAGE)


def _check_echoed(initial, trailing, what):
    initial = list(initial or ())
    trailing = list(trailing or ())
    check(
        (ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE) in initial,
        f"{what}: initial metadata {initial} lacks {ECHO_INITIAL_KEY}={ECHO_INITIAL_VALUE}",
    )
    check(
        (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE) in trailing,
        f"{what}: trailing metadata {trailing} lacks {ECHO_TRAILING_KEY}={ECHO_TRAILING_VALUE!r}",
    )


def custom_metadata(stub, channel):
    metadata = ((ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE), (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE))
    request = messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE, response_size=314159, payload=payload(271828)
    )
    response, call = stub.UnaryCall.with_call(request, metadata=metadata, timeout=CALL_TIMEOUT)
    check_payload(response.payload, 314159, "UnaryCall")
    _check_echoed(call.initial_metadata(), call.trailing_metadata(), "UnaryCall")

    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=314159)],
        payload=payload(271828),
    )
    call = stub.FullDuplexCall(iter([request]), metadata=metadata, timeout=CALL_TIMEOUT)
    initial = call.initial_metadata()
    responses = list(call)
    check(len(responses) == 1, f"FullDuplexCall: {len(responses)} responses, want 1")
    check_payload(responses[0].payload, 314159, "FullDuplexCall")
    _check_echoed(initial, call.trailing_metadata(), "FullDuplexCall")


def unimplemented_method(stub, channel):
    expect_error(
        lambda: stub.UnimplementedCall(empty_pb2.Empty(), timeout=CALL_TIMEOUT), grpc.StatusCode.UNIMPLEMENTED
    )


def unimplemented_service(stub, channel):
    other = test_pb2_grpc.UnimplementedServiceStub(channel)
    expect_error(
        lambda: other.UnimplementedCall(empty_pb2.Empty(), timeout=CALL_TIMEOUT), grpc.StatusCode.UNIMPLEMENTED
    )


def timeout_on_sleeping_server(stub, channel):
    pipe = Pipe()
    pipe.add(messages_pb2.StreamingOutputCallRequest(payload=payload(27182)))
    call = stub.FullDuplexCall(pipe, timeout=0.001)
    try:
        expect_error(lambda: next(call), grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        pipe.close()


def cancel_after_begin(stub, channel):
    pipe = Pipe()  # nothing is ever sent
    future = stub.StreamingInputCall.future(pipe, timeout=CALL_TIMEOUT)
    future.cancel()
    pipe.close()
    check(future.cancelled(), "the call is not cancelled")
    check(future.code() == grpc.StatusCode.CANCELLED, f"status {future.code()}, want CANCELLED")


def cancel_after_first_response(stub, channel):
    pipe = Pipe()
    call = stub.FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
    pipe.add(
        messages_pb2.StreamingOutputCallRequest(
            response_type=messages_pb2.COMPRESSABLE,
            response_parameters=[messages_pb2.ResponseParameters(size=31415)],
            payload=payload(27182),
        )
    )
    try:
        response = next(call)
        check_payload(response.payload, 31415)
        call.cancel()
        check(call.code() == grpc.StatusCode.CANCELLED, f"status {call.code()}, want CANCELLED")
        expect_error(lambda: next(call), grpc.StatusCode.CANCELLED)
    finally:
        pipe.close()


def health(stub, channel):
    health_stub = health_pb2_grpc.HealthStub(channel)
    response = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    check(
        response.status == health_pb2.HealthCheckResponse.SERVING,
        f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}, want SERVING",
    )


CASES = {
    case.__name__: case
    for case in (
        empty_unary,
        large_unary,
        client_streaming,
        server_streaming,
        ping_pong,
        empty_stream,
        status_code_and_message,
        special_status_message,
        custom_metadata,
        unimplemented_method,
        unimplemented_service,
        timeout_on_sleeping_server,
        cancel_after_begin,
        cancel_after_first_response,
        health,
    )
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="HOST:PORT of the server (plaintext)")
    parser.add_argument("--cases", default="all", help="comma-separated case names, or all (default)")
    args = parser.parse_args()

    names = list(CASES) if args.cases == "all" else [name for name in args.cases.split(",") if name]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")

    failed = 0
    with grpc.insecure_channel(args.server) as channel:
        stub = test_pb2_grpc.TestServiceStub(channel)
        for name in names:
            try:
                CASES[name](stub, channel)
                print(f"PASS {name}", flush=True)
            except CaseFailed as error:
                failed += 1
                print(f"FAIL {name}: {error}", flush=True)
            except grpc.RpcError as error:
                failed += 1
                print(f"FAIL {name}: unexpected status {error.code()} ({error.details()!r})", flush=True)
            except Exception as error:  # noqa: BLE001 - report any surprise as a failure
                failed += 1
                print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
