#!/usr/bin/env python3
"""Every RPC kind of codereview.v1 with gzip compression, driven by Python grpcio.

The channel and every call are set to grpc.Compression.Gzip, so grpcio
compresses what it sends (and, as always, accepts gzip back). Each case checks
what came back; tests/ecosystem.rs runs one case per process behind a proxy
that counts the bytes each way, which shows that both directions were
compressed.

    ecosystem_client.py --server 127.0.0.1:50051 --session S --case upload --lines 17000

Cases (run upload first: the others read the file it uploads):
  upload    client streaming: uploads big.rs (--lines lines, ~60 bytes each)
  snapshot  unary: GetSnapshot returns big.rs whole
  watch     server streaming: WatchSession(want_snapshot) delivers big.rs
  session   bidirectional: joins with want_snapshot (big.rs comes back), then
            replaces line 0 with a --edit-bytes line and waits for its Ack
Prints `PASS case` or `FAIL case: reason`; exits 1 on failure.
"""

import argparse
import os
import queue
import sys
import traceback

import grpc

GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")
sys.path.insert(0, GEN)

from codereview.v1 import codereview_pb2 as pb  # noqa: E402
from codereview.v1 import codereview_pb2_grpc as pb_grpc  # noqa: E402

GZIP = grpc.Compression.Gzip
TIMEOUT = 60.0
FILE = "big.rs"
CHUNK = 256 * 1024


class CaseFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CaseFailed(message)


def big_file(lines):
    """Source-like text: ~60 bytes a line, every line different."""
    return "".join(
        f"    let v{i:05d} = review(&v{i // 2:05d}, {i % 97:2d}); // line {i}\n" for i in range(lines)
    ).encode()


def check_file(files, lines):
    check(len(files) == 1, f"{len(files)} files, want 1")
    check(files[0].file_path == FILE, f"file {files[0].file_path!r}")
    check(len(files[0].lines) == lines, f"{len(files[0].lines)} lines, want {lines}")
    expected = big_file(lines).decode().split("\n")
    for at in (1, lines // 2, lines - 1):
        check(files[0].lines[at] == expected[at], f"line {at} is {files[0].lines[at]!r}")


def upload(stub, args):
    content = big_file(args.lines)
    chunks = (
        pb.FileChunk(session_id=args.session, file_path=FILE, content=content[at : at + CHUNK])
        for at in range(0, len(content), CHUNK)
    )
    summary = stub.UploadFiles(chunks, timeout=TIMEOUT, compression=GZIP)
    check(summary.files == 1, f"summary {summary}")
    check(summary.lines == args.lines, f"summary {summary}")
    check(summary.bytes == len(content), f"summary {summary}")


def snapshot(stub, args):
    response = stub.GetSnapshot(pb.SnapshotRequest(session_id=args.session), timeout=TIMEOUT, compression=GZIP)
    check_file(response.files, args.lines)


def watch(stub, args):
    call = stub.WatchSession(
        pb.WatchRequest(session_id=args.session, want_snapshot=True), timeout=TIMEOUT, compression=GZIP
    )
    try:
        for message in call:
            if message.WhichOneof("payload") == "snapshot":
                check_file(message.snapshot.files, args.lines)
                return
        raise CaseFailed("the stream ended without a snapshot")
    finally:
        call.cancel()


class Requests:
    """A request iterator fed from the test; ends on close()."""

    def __init__(self):
        self._queue = queue.Queue()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is None:
            raise StopIteration
        return item

    def add(self, message):
        self._queue.put(message)

    def close(self):
        self._queue.put(None)


def session(stub, args):
    user = "py-gzip"
    requests = Requests()
    requests.add(pb.SessionMessage(session_id=args.session, user_id=user, join=pb.Join(want_snapshot=True)))
    responses = stub.CollaborativeSession(requests, timeout=TIMEOUT, compression=GZIP)
    line = "x" * args.edit_bytes
    got_snapshot = False
    try:
        for message in responses:
            kind = message.WhichOneof("payload")
            if kind == "snapshot":
                check_file(message.snapshot.files, args.lines)
                got_snapshot = True
                requests.add(
                    pb.SessionMessage(
                        session_id=args.session,
                        user_id=user,
                        client_sequence=1,
                        edit=pb.CodeEdit(file_path=FILE, line_number=0, content=line, op=pb.CodeEdit.REPLACE),
                    )
                )
            elif kind == "error":
                raise CaseFailed(f"error {message.error}")
            elif kind == "ack" and message.ack.client_sequence == 1:
                check(got_snapshot, "ack before the snapshot")
                requests.close()
        check(got_snapshot, "no snapshot")
    finally:
        requests.close()


CASES = {"upload": upload, "snapshot": snapshot, "watch": watch, "session": session}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--lines", type=int, default=17000)
    parser.add_argument("--edit-bytes", type=int, default=60000)
    args = parser.parse_args()
    with grpc.insecure_channel(args.server, compression=GZIP) as channel:
        stub = pb_grpc.CodeReviewServiceStub(channel)
        try:
            CASES[args.case](stub, args)
        except CaseFailed as failure:
            print(f"FAIL {args.case}: {failure}")
            return 1
        except grpc.RpcError as error:
            print(f"FAIL {args.case}: {error.code()} {error.details()!r}")
            return 1
        except Exception:  # noqa: BLE001 - report, do not hide
            print(f"FAIL {args.case}: {traceback.format_exc()}")
            return 1
    print(f"PASS {args.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
