#!/usr/bin/env python3
"""A client generated from the article's original proto, unchanged, against our server.

The stubs come from tests/seed/codereview.proto ONLY (scripts/setup-peers
generates them into tests/python/gen_seed/): this client knows nothing of the
server's extensions. Messages whose payload it does not know (Joined, Ack,
Notice, Error, ...) arrive with the payload oneof unset; they are tolerated,
skipped and counted, as an old client would.

    seed_client.py --server 127.0.0.1:50051 --scenario two_participants

Scenarios: two_participants, late_join_history, edit_into_empty_session,
concurrent_replaces (or all). Prints `PASS check` / `FAIL check: reason` per check and an `INFO` line
per participant with the messages it skipped; exits 1 if any check failed.
"""

import argparse
import collections
import os
import queue
import sys
import threading
import time
import traceback
import uuid

import grpc

GEN_SEED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_seed")
sys.path.insert(0, GEN_SEED)

import codereview_pb2 as pb  # noqa: E402
import codereview_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402

try:  # Only for the diagnostics (which extension fields were skipped).
    from google.protobuf.unknown_fields import UnknownFieldSet  # noqa: E402
except ImportError:  # pragma: no cover - older protobuf
    UnknownFieldSet = None

# Every wait for a message.
WAIT = 5.0
# How long to keep listening for messages that must NOT arrive.
QUIET = 0.5
# A backstop for a whole call, so nothing hangs the run.
CALL_TIMEOUT = 60.0
# The extended proto's oneof cases (for the skipped-message report only).
EXTENSION_NAMES = {
    10: "join",
    11: "joined",
    12: "ack",
    13: "error",
    14: "snapshot",
    15: "file",
    16: "token_refresh",
    17: "notice",
}
JOINED = pb.PresenceUpdate.JOINED
LEFT = pb.PresenceUpdate.LEFT


class Abort(Exception):
    """A check whose failure makes the rest of the scenario meaningless."""


class Checks:
    def __init__(self, scenario):
        self.scenario = scenario
        self.failed = 0

    def ok(self, name, condition, detail=""):
        """Records a check; the scenario goes on either way."""
        if condition:
            print(f"PASS {self.scenario}: {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {self.scenario}: {name}: {detail}", flush=True)
        return condition

    def must(self, name, condition, detail=""):
        """Records a check; a failure ends the scenario."""
        if not self.ok(name, condition, detail):
            raise Abort(name)

    def fail(self, name, detail):
        self.ok(name, False, detail)
        raise Abort(name)


def now_ms():
    return int(time.time() * 1000)


def show(message):
    return "{" + text_format.MessageToString(message, as_one_line=True) + "}"


def unknown_cases(message):
    """The field numbers of the unknown payload cases of a message (diagnostics
    only; 8 and 9, sequence and client_sequence, are not payloads)."""
    if UnknownFieldSet is None:
        return []
    try:
        return [field.field_number for field in UnknownFieldSet(message) if field.field_number not in (8, 9)]
    except Exception:  # noqa: BLE001 - diagnostics must never fail a run
        return []


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


class End:
    """The end of a response stream: its status."""

    def __init__(self, code, details):
        self.code = code
        self.details = details

    def __str__(self):
        return f"{self.code} ({self.details!r})"


class Participant:
    """One CollaborativeSession stream, as the article's client opens it."""

    def __init__(self, stub, checks, session_id, user_id):
        self.checks = checks
        self.session_id = session_id
        self.user_id = user_id
        self.pipe = Pipe()
        self.inbox = queue.Queue()
        # Typed messages received but not yet claimed by an expect().
        self.unclaimed = []
        # Every typed message received, in order.
        self.received = []
        # Messages whose payload the seed proto does not know.
        self.skipped = 0
        self.skipped_cases = collections.Counter()
        self.end = None
        self.call = stub.CollaborativeSession(self.pipe, timeout=CALL_TIMEOUT)
        self.reader = threading.Thread(target=self._read, name=f"read-{user_id}", daemon=True)
        self.reader.start()

    def _read(self):
        try:
            for message in self.call:
                self.inbox.put(message)
            self.inbox.put(End(self.call.code(), self.call.details()))
        except grpc.RpcError as error:
            self.inbox.put(End(error.code(), error.details()))
        except Exception as error:  # noqa: BLE001 - surface it to the waiting check
            self.inbox.put(End("client error", f"{type(error).__name__}: {error}"))

    def message(self, **payload):
        return pb.SessionMessage(session_id=self.session_id, user_id=self.user_id, timestamp=now_ms(), **payload)

    def send(self, message):
        self.pipe.add(message)

    def join(self):
        """The article's first message: presence JOINED."""
        self.send(self.message(presence=pb.PresenceUpdate(status=JOINED)))

    def done_writing(self):
        """Half-closes the stream: the participant is done."""
        self.pipe.close()

    def cancel(self):
        self.call.cancel()

    def _next(self, deadline):
        """The next typed message or End, or None at the deadline; skips unknown payloads."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self.inbox.get(timeout=left)
            except queue.Empty:
                return None
            if isinstance(item, End):
                self.end = item
                return item
            if item.WhichOneof("payload") is None:
                self.skipped += 1
                for number in unknown_cases(item) or ["?"]:
                    self.skipped_cases[EXTENSION_NAMES.get(number, str(number))] += 1
                continue
            self.received.append(item)
            return item

    def _context(self):
        recent = self.unclaimed[-6:]
        seen = ", ".join(show(m) for m in recent) if recent else "nothing"
        return f"unclaimed messages: {seen}; skipped {self.skipped} unknown-payload message(s)"

    def expect(self, name, what, predicate, timeout=WAIT):
        """Waits for a typed message matching predicate (one received earlier and
        not yet claimed counts too); fails the check `name` after timeout."""
        for index, message in enumerate(self.unclaimed):
            if predicate(message):
                del self.unclaimed[index]
                self.checks.ok(name, True)
                return message
        deadline = time.monotonic() + timeout
        while True:
            if self.end is not None:
                self.checks.fail(name, f"{self.user_id}: stream ended with {self.end} before {what}; {self._context()}")
            item = self._next(deadline)
            if item is None:
                self.checks.fail(name, f"{self.user_id}: no {what} within {timeout:g}s; {self._context()}")
            if isinstance(item, End):
                continue
            if predicate(item):
                self.checks.ok(name, True)
                return item
            self.unclaimed.append(item)

    def collect(self, predicate, count, timeout=WAIT):
        """Up to `count` typed messages matching predicate, in arrival order."""
        found = [m for m in self.unclaimed if predicate(m)][:count]
        for message in found:
            self.unclaimed.remove(message)
        deadline = time.monotonic() + timeout
        while len(found) < count and self.end is None:
            item = self._next(deadline)
            if item is None:
                break
            if isinstance(item, End):
                continue
            if predicate(item):
                found.append(item)
            else:
                self.unclaimed.append(item)
        return found

    def listen(self, duration):
        """Receives whatever arrives for `duration` (into unclaimed)."""
        deadline = time.monotonic() + duration
        while self.end is None:
            item = self._next(deadline)
            if item is None:
                return
            if not isinstance(item, End):
                self.unclaimed.append(item)

    def wait_end(self, timeout=WAIT):
        """Drains the stream until it ends; returns its End (or None on timeout)."""
        deadline = time.monotonic() + timeout
        while self.end is None:
            item = self._next(deadline)
            if item is None:
                return None
            if not isinstance(item, End):
                self.unclaimed.append(item)
        return self.end

    def report(self):
        cases = ", ".join(f"{name}×{n}" for name, n in sorted(self.skipped_cases.items()))
        print(
            f"INFO {self.checks.scenario}: {self.user_id} skipped {self.skipped} message(s) "
            f"with a payload unknown to the seed proto{f' ({cases})' if cases else ''}",
            flush=True,
        )


def is_presence(user, status):
    return lambda m: m.WhichOneof("payload") == "presence" and m.user_id == user and m.presence.status == status


def is_edit(m):
    return m.WhichOneof("payload") == "edit"


def new_session_id(scenario):
    return f"seed-py-{scenario}-{uuid.uuid4().hex[:12]}"


def two_participants(stub, checks):
    session = new_session_id("two")
    alice = Participant(stub, checks, session, "alice")
    bob = None
    try:
        alice.join()
        bob = Participant(stub, checks, session, "bob")
        bob.join()
        alice.expect("alice sees bob JOINED", "PresenceUpdate JOINED from bob", is_presence("bob", JOINED))

        alice.send(alice.message(edit=pb.CodeEdit(file_path="main.rs", line_number=0, content="fn main() {}", version=0)))
        edit = bob.expect(
            "bob receives alice's edit",
            'CodeEdit main.rs:0 "fn main() {}"',
            lambda m: is_edit(m) and m.edit.file_path == "main.rs" and m.edit.line_number == 0,
        )
        checks.ok("the edit is from alice", edit.user_id == "alice", f"user_id {edit.user_id!r}")
        checks.ok("the edit's content", edit.edit.content == "fn main() {}", f"content {edit.edit.content!r}")
        checks.ok("the server stamps version 1", edit.edit.version == 1, f"version {edit.edit.version}")
        checks.ok("the edit names the session", edit.session_id == session, f"session_id {edit.session_id!r}")

        bob.send(bob.message(comment=pb.Comment(comment_id="", line_number=0, text="looks good")))
        comment = alice.expect(
            "alice receives bob's comment",
            'Comment "looks good"',
            lambda m: m.WhichOneof("payload") == "comment" and m.comment.text == "looks good",
        )
        checks.ok("the comment is from bob", comment.user_id == "bob", f"user_id {comment.user_id!r}")
        checks.ok("the server assigns a comment_id", comment.comment.comment_id != "", "comment_id is empty")
        checks.ok("the comment's line", comment.comment.line_number == 0, f"line_number {comment.comment.line_number}")

        bob.send(bob.message(cursor=pb.CursorPosition(file_path="main.rs", line=0, column=3)))
        cursor = alice.expect(
            "alice receives bob's cursor",
            "CursorPosition from bob",
            lambda m: m.WhichOneof("payload") == "cursor" and m.user_id == "bob",
        )
        checks.ok(
            "the cursor's position",
            (cursor.cursor.file_path, cursor.cursor.line, cursor.cursor.column) == ("main.rs", 0, 3),
            show(cursor.cursor),
        )

        bob.done_writing()
        alice.expect("alice sees bob LEFT after bob half-closes", "PresenceUpdate LEFT from bob", is_presence("bob", LEFT))
        end = bob.wait_end()
        checks.ok(
            "bob's stream ends OK after his half-close",
            end is not None and end.code == grpc.StatusCode.OK,
            f"ended with {end}" if end else f"not ended within {WAIT:g}s",
        )

        # Anything alice's own edit could have produced came before bob's LEFT.
        alice.listen(QUIET)
        echoed = [show(m) for m in alice.received if is_edit(m)]
        checks.ok("alice never receives her own edit back as a CodeEdit", not echoed, f"alice received {echoed}")
        alice.done_writing()
        end = alice.wait_end()
        checks.ok(
            "alice's stream ends OK after her half-close",
            end is not None and end.code == grpc.StatusCode.OK,
            f"ended with {end}" if end else f"not ended within {WAIT:g}s",
        )
    finally:
        for participant in (alice, bob):
            if participant is not None:
                participant.cancel()
                participant.report()


def late_join_history(stub, checks):
    session = new_session_id("late")
    lines = ["first line", "second line", "third line"]
    alice = Participant(stub, checks, session, "alice")
    witness = carol = None
    try:
        alice.join()
        for number, content in enumerate(lines):
            alice.send(alice.message(edit=pb.CodeEdit(file_path="main.rs", line_number=number, content=content, version=0)))
        # The seed proto cannot see acknowledgements: a witness that receives
        # all three edits proves the server applied them before carol joins.
        witness = Participant(stub, checks, session, "witness")
        witness.join()
        seen = witness.collect(is_edit, 3)
        checks.must(
            "the witness receives alice's 3 edits",
            len(seen) == 3,
            f"got {len(seen)} within {WAIT:g}s: {[show(m) for m in seen]}; {witness._context()}",
        )

        carol = Participant(stub, checks, session, "carol")
        carol.join()
        replay = carol.collect(is_edit, 3)
        checks.must(
            "carol receives the 3 edits replayed",
            len(replay) == 3,
            f"got {len(replay)} within {WAIT:g}s: {[show(m) for m in replay]}; {carol._context()}",
        )
        got = [(m.edit.file_path, m.edit.line_number, m.edit.content) for m in replay]
        want = [("main.rs", number, content) for number, content in enumerate(lines)]
        checks.ok("the replayed edits, in order", got == want, f"got {got}, want {want}")
        checks.ok(
            "the replayed edits are alice's",
            all(m.user_id == "alice" for m in replay),
            f"user_ids {[m.user_id for m in replay]}",
        )
        versions = [m.edit.version for m in replay]
        checks.ok("the replayed versions are 1, 2, 3", versions == [1, 2, 3], f"versions {versions}")
        # The history replays everything essential in order, alice's join too.
        kinds = [("JOINED " + m.user_id) if is_presence(m.user_id, JOINED)(m) else m.WhichOneof("payload") for m in carol.received]
        joined_at = kinds.index("JOINED alice") if "JOINED alice" in kinds else None
        checks.ok(
            "alice's JOINED is replayed before her edits",
            joined_at is not None and joined_at < kinds.index("edit"),
            f"carol received, in order: {kinds}",
        )
        carol.listen(QUIET)
        extra = [show(m) for m in carol.unclaimed if is_edit(m)]
        checks.ok("no edit is delivered twice", not extra, f"carol also received {extra}")
        for participant in (carol, witness, alice):
            participant.done_writing()
    finally:
        for participant in (alice, witness, carol):
            if participant is not None:
                participant.cancel()
                participant.report()


def edit_into_empty_session(stub, checks):
    session = new_session_id("empty")
    alice = Participant(stub, checks, session, "alice")
    bob = None
    try:
        # No presence first: the stream opens with an edit, beyond the end of
        # a file that does not exist yet (0-based line 2).
        alice.send(alice.message(edit=pb.CodeEdit(file_path="main.rs", line_number=2, content="x", version=0)))
        # The seed proto cannot see acknowledgements; alice's stream ending OK
        # after her half-close proves the server took her edit before bob joins.
        alice.done_writing()
        end = alice.wait_end()
        checks.must(
            "a stream that opens with an edit ends OK after its half-close",
            end is not None and end.code == grpc.StatusCode.OK,
            f"ended with {end}" if end else f"not ended within {WAIT:g}s",
        )

        bob = Participant(stub, checks, session, "bob")
        bob.join()
        edit = bob.expect("bob receives the replayed edit", "CodeEdit", is_edit)
        got = (edit.edit.file_path, edit.edit.line_number, edit.edit.content)
        checks.ok("the replayed edit replaces 0-based line 2", got == ("main.rs", 2, "x"), f"got {got}")
        checks.ok("the replayed edit is alice's", edit.user_id == "alice", f"user_id {edit.user_id!r}")
        checks.ok("the replayed edit has version 1", edit.edit.version == 1, f"version {edit.edit.version}")
        bob.listen(QUIET)
        extra = [show(m) for m in bob.unclaimed if is_edit(m)]
        checks.ok("exactly one edit is replayed", not extra, f"bob also received {extra}")
        bob.done_writing()
    finally:
        for participant in (alice, bob):
            if participant is not None:
                participant.cancel()
                participant.report()


def concurrent_replaces(stub, checks):
    """alice and bob each replace line 1 of f.txt six times, interleaved as fast
    as they can, always with version 0 (the article's client tracks no
    versions): every edit of each reaches the other."""
    session = new_session_id("concurrent")
    alice = Participant(stub, checks, session, "alice")
    bob = None
    try:
        alice.join()
        bob = Participant(stub, checks, session, "bob")
        bob.join()
        alice.expect("alice sees bob JOINED", "PresenceUpdate JOINED from bob", is_presence("bob", JOINED))
        for i in range(6):
            alice.send(alice.message(edit=pb.CodeEdit(file_path="f.txt", line_number=1, content=f"alice {i}", version=0)))
            bob.send(bob.message(edit=pb.CodeEdit(file_path="f.txt", line_number=1, content=f"bob {i}", version=0)))
        from_bob = alice.collect(lambda m: is_edit(m) and m.user_id == "bob", 6)
        from_alice = bob.collect(lambda m: is_edit(m) and m.user_id == "alice", 6)
        got = [m.edit.content for m in from_bob]
        checks.ok("alice receives all 6 of bob's edits, in order", got == [f"bob {i}" for i in range(6)], f"got {got}")
        got = [m.edit.content for m in from_alice]
        checks.ok("bob receives all 6 of alice's edits, in order", got == [f"alice {i}" for i in range(6)], f"got {got}")
        lines = {m.edit.line_number for m in from_alice + from_bob}
        checks.ok("every broadcast edit replaces line 1", lines == {1}, f"lines {sorted(lines)}")
        versions = [m.edit.version for m in from_bob]
        checks.ok("versions increase", versions == sorted(versions) and len(set(versions)) == len(versions), f"versions {versions}")
        alice.done_writing()
        bob.done_writing()
    finally:
        for participant in (alice, bob):
            if participant is not None:
                participant.cancel()
                participant.report()


SCENARIOS = {
    "two_participants": two_participants,
    "late_join_history": late_join_history,
    "edit_into_empty_session": edit_into_empty_session,
    "concurrent_replaces": concurrent_replaces,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="HOST:PORT of the server (plaintext)")
    parser.add_argument("--scenario", required=True, help=f"one of {', '.join(SCENARIOS)}, or all")
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")

    # The point of this client: it knows only the article's proto.
    fields = set(pb.SessionMessage.DESCRIPTOR.fields_by_name)
    if fields != {"session_id", "timestamp", "user_id", "edit", "comment", "cursor", "presence"}:
        print(f"FAIL setup: the stubs in {GEN_SEED} are not the article's proto (fields {sorted(fields)})")
        return 1

    failed = 0
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.CodeReviewServiceStub(channel)
        for name in names:
            checks = Checks(name)
            try:
                SCENARIOS[name](stub, checks)
            except Abort:
                pass
            except Exception as error:  # noqa: BLE001 - report any surprise as a failure
                checks.failed += 1
                print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc()
            failed += checks.failed
            print(f"{'FAIL' if checks.failed else 'PASS'} scenario {name}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
