#!/usr/bin/env node
// A client built from the article's original proto, unchanged, against our server.
//
// @grpc/proto-loader loads tests/seed/codereview.proto ONLY: this client knows
// nothing of the server's extensions. Messages whose payload it does not know
// (Joined, Ack, Notice, Error, ...) decode with the payload oneof unset; they
// are tolerated, skipped and counted, as an old client would.
//
//     node seed_client.js --server 127.0.0.1:50051 --scenario two_participants
//
// Scenarios: two_participants, late_join_history, edit_into_empty_session (or
// all). Prints `PASS check` / `FAIL check: reason` per check and an `INFO` line
// per participant with the messages it skipped; exits 1 if any check failed.
//
// Dependencies come from scripts/setup-peers (npm ci in tests/node).
'use strict';

const crypto = require('crypto');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const SEED_PROTO = path.join(__dirname, '..', 'seed', 'codereview.proto');
const definition = protoLoader.loadSync(SEED_PROTO, {
  keepCase: true,
  oneofs: true,
  defaults: true,
  enums: String,
  longs: String,
});
const codereview = grpc.loadPackageDefinition(definition).codereview.v1;

// Every wait for a message.
const WAIT_MS = 5000;
// How long to keep listening for messages that must NOT arrive.
const QUIET_MS = 500;
// A backstop for a whole call, so nothing hangs the run.
const CALL_TIMEOUT_MS = 60000;
const Status = grpc.status;

class Abort extends Error {}

class Checks {
  constructor(scenario) {
    this.scenario = scenario;
    this.failed = 0;
  }

  /** Records a check; the scenario goes on either way. */
  ok(name, condition, detail = '') {
    if (condition) {
      console.log(`PASS ${this.scenario}: ${name}`);
    } else {
      this.failed += 1;
      console.log(`FAIL ${this.scenario}: ${name}: ${detail}`);
    }
    return condition;
  }

  /** Records a check; a failure ends the scenario. */
  must(name, condition, detail = '') {
    if (!this.ok(name, condition, detail)) throw new Abort(name);
  }

  fail(name, detail) {
    this.ok(name, false, detail);
    throw new Abort(name);
  }
}

function statusName(code) {
  return Object.keys(Status).find((name) => Status[name] === code) || String(code);
}

function show(message) {
  return JSON.stringify(message);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The end of a response stream: its status. */
class End {
  constructor(code, details) {
    this.code = code;
    this.details = details;
  }

  toString() {
    return `${statusName(this.code)} (${JSON.stringify(this.details)})`;
  }
}

/** One CollaborativeSession stream, as the article's client opens it. */
class Participant {
  constructor(client, checks, sessionId, userId) {
    this.checks = checks;
    this.sessionId = sessionId;
    this.userId = userId;
    this.inbox = [];
    this.waiter = null;
    // Typed messages received but not yet claimed by an expect().
    this.unclaimed = [];
    // Every typed message received, in order.
    this.received = [];
    // Messages whose payload the seed proto does not know.
    this.skipped = 0;
    this.end = null;
    this.status = null;
    this.readEnded = false;
    this.call = client.CollaborativeSession({ deadline: new Date(Date.now() + CALL_TIMEOUT_MS) });
    this.call.on('data', (message) => this.deliver(message));
    this.call.on('end', () => {
      this.readEnded = true;
      this.maybeEnd();
    });
    this.call.on('status', (status) => {
      this.status = status;
      this.maybeEnd();
    });
    // A failed call also emits 'error' (after its status): handled via 'status'.
    this.call.on('error', () => {});
  }

  /** The stream is over once its status is known and (when OK) every message was read. */
  maybeEnd() {
    if (this.endQueued || !this.status) return;
    if (this.status.code === Status.OK && !this.readEnded) return;
    this.endQueued = true;
    this.deliver(new End(this.status.code, this.status.details));
  }

  deliver(item) {
    this.inbox.push(item);
    if (this.waiter) {
      const wake = this.waiter;
      this.waiter = null;
      wake();
    }
  }

  message(payload) {
    return { session_id: this.sessionId, user_id: this.userId, timestamp: String(Date.now()), ...payload };
  }

  send(message) {
    this.call.write(message);
  }

  /** The article's first message: presence JOINED. */
  join() {
    this.send(this.message({ presence: { status: 'JOINED' } }));
  }

  /** Half-closes the stream: the participant is done. */
  doneWriting() {
    this.call.end();
  }

  cancel() {
    this.call.cancel();
  }

  /** The next item from the stream, or null at the deadline. */
  async take(deadline) {
    while (this.inbox.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((resolve) => {
        const timer = setTimeout(() => {
          this.waiter = null;
          resolve();
        }, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.inbox.shift();
  }

  /** The next typed message or End, or null at the deadline; skips unknown payloads. */
  async next(deadline) {
    for (;;) {
      const item = await this.take(deadline);
      if (item === null) return null;
      if (item instanceof End) {
        this.end = item;
        return item;
      }
      if (!item.payload) {
        this.skipped += 1;
        continue;
      }
      this.received.push(item);
      return item;
    }
  }

  context() {
    const recent = this.unclaimed.slice(-6);
    const seen = recent.length ? recent.map(show).join(', ') : 'nothing';
    return `unclaimed messages: ${seen}; skipped ${this.skipped} unknown-payload message(s)`;
  }

  /**
   * Waits for a typed message matching predicate (one received earlier and
   * not yet claimed counts too); fails the check `name` after timeout.
   */
  async expect(name, what, predicate, timeoutMs = WAIT_MS) {
    const index = this.unclaimed.findIndex(predicate);
    if (index >= 0) {
      const [message] = this.unclaimed.splice(index, 1);
      this.checks.ok(name, true);
      return message;
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.end) {
        this.checks.fail(name, `${this.userId}: stream ended with ${this.end} before ${what}; ${this.context()}`);
      }
      const item = await this.next(deadline);
      if (item === null) {
        this.checks.fail(name, `${this.userId}: no ${what} within ${timeoutMs / 1000}s; ${this.context()}`);
      }
      if (item instanceof End) continue;
      if (predicate(item)) {
        this.checks.ok(name, true);
        return item;
      }
      this.unclaimed.push(item);
    }
  }

  /** Up to `count` typed messages matching predicate, in arrival order. */
  async collect(predicate, count, timeoutMs = WAIT_MS) {
    const found = this.unclaimed.filter(predicate).slice(0, count);
    this.unclaimed = this.unclaimed.filter((m) => !found.includes(m));
    const deadline = Date.now() + timeoutMs;
    while (found.length < count && !this.end) {
      const item = await this.next(deadline);
      if (item === null) break;
      if (item instanceof End) continue;
      if (predicate(item)) found.push(item);
      else this.unclaimed.push(item);
    }
    return found;
  }

  /** Receives whatever arrives for `durationMs` (into unclaimed). */
  async listen(durationMs) {
    const deadline = Date.now() + durationMs;
    while (!this.end) {
      const item = await this.next(deadline);
      if (item === null) return;
      if (!(item instanceof End)) this.unclaimed.push(item);
    }
  }

  /** Drains the stream until it ends; returns its End (or null on timeout). */
  async waitEnd(timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;
    while (!this.end) {
      const item = await this.next(deadline);
      if (item === null) return null;
      if (!(item instanceof End)) this.unclaimed.push(item);
    }
    return this.end;
  }

  report() {
    console.log(
      `INFO ${this.checks.scenario}: ${this.userId} skipped ${this.skipped} message(s) ` +
        'with a payload unknown to the seed proto',
    );
  }
}

function isPresence(user, status) {
  return (m) => m.payload === 'presence' && m.user_id === user && m.presence.status === status;
}

function isEdit(m) {
  return m.payload === 'edit';
}

function endedOk(end) {
  return end !== null && end.code === Status.OK;
}

function endDetail(end) {
  return end ? `ended with ${end}` : `not ended within ${WAIT_MS / 1000}s`;
}

function newSessionId(scenario) {
  return `seed-node-${scenario}-${crypto.randomUUID().slice(0, 13)}`;
}

async function twoParticipants(client, checks) {
  const session = newSessionId('two');
  const alice = new Participant(client, checks, session, 'alice');
  let bob = null;
  try {
    alice.join();
    bob = new Participant(client, checks, session, 'bob');
    bob.join();
    await alice.expect('alice sees bob JOINED', 'PresenceUpdate JOINED from bob', isPresence('bob', 'JOINED'));

    alice.send(alice.message({ edit: { file_path: 'main.rs', line_number: 0, content: 'fn main() {}', version: 0 } }));
    const edit = await bob.expect(
      "bob receives alice's edit",
      'CodeEdit main.rs:0 "fn main() {}"',
      (m) => isEdit(m) && m.edit.file_path === 'main.rs' && m.edit.line_number === 0,
    );
    checks.ok('the edit is from alice', edit.user_id === 'alice', `user_id ${JSON.stringify(edit.user_id)}`);
    checks.ok("the edit's content", edit.edit.content === 'fn main() {}', `content ${JSON.stringify(edit.edit.content)}`);
    checks.ok('the server stamps version 1', edit.edit.version === 1, `version ${edit.edit.version}`);
    checks.ok('the edit names the session', edit.session_id === session, `session_id ${JSON.stringify(edit.session_id)}`);

    bob.send(bob.message({ comment: { comment_id: '', line_number: 0, text: 'looks good' } }));
    const comment = await alice.expect(
      "alice receives bob's comment",
      'Comment "looks good"',
      (m) => m.payload === 'comment' && m.comment.text === 'looks good',
    );
    checks.ok('the comment is from bob', comment.user_id === 'bob', `user_id ${JSON.stringify(comment.user_id)}`);
    checks.ok('the server assigns a comment_id', comment.comment.comment_id !== '', 'comment_id is empty');
    checks.ok("the comment's line", comment.comment.line_number === 0, `line_number ${comment.comment.line_number}`);

    bob.send(bob.message({ cursor: { file_path: 'main.rs', line: 0, column: 3 } }));
    const cursor = await alice.expect(
      "alice receives bob's cursor",
      'CursorPosition from bob',
      (m) => m.payload === 'cursor' && m.user_id === 'bob',
    );
    const c = cursor.cursor;
    checks.ok("the cursor's position", c.file_path === 'main.rs' && c.line === 0 && c.column === 3, show(c));

    bob.doneWriting();
    await alice.expect(
      'alice sees bob LEFT after bob half-closes',
      'PresenceUpdate LEFT from bob',
      isPresence('bob', 'LEFT'),
    );
    const bobEnd = await bob.waitEnd();
    checks.ok("bob's stream ends OK after his half-close", endedOk(bobEnd), endDetail(bobEnd));

    // Anything alice's own edit could have produced came before bob's LEFT.
    await alice.listen(QUIET_MS);
    const echoed = alice.received.filter(isEdit).map(show);
    checks.ok('alice never receives her own edit back as a CodeEdit', echoed.length === 0, `alice received ${echoed}`);
    alice.doneWriting();
    const aliceEnd = await alice.waitEnd();
    checks.ok("alice's stream ends OK after her half-close", endedOk(aliceEnd), endDetail(aliceEnd));
  } finally {
    for (const participant of [alice, bob]) {
      if (participant) {
        participant.cancel();
        participant.report();
      }
    }
  }
}

async function lateJoinHistory(client, checks) {
  const session = newSessionId('late');
  const lines = ['first line', 'second line', 'third line'];
  const alice = new Participant(client, checks, session, 'alice');
  let witness = null;
  let carol = null;
  try {
    alice.join();
    lines.forEach((content, number) => {
      alice.send(alice.message({ edit: { file_path: 'main.rs', line_number: number, content, version: 0 } }));
    });
    // The seed proto cannot see acknowledgements: a witness that receives
    // all three edits proves the server applied them before carol joins.
    witness = new Participant(client, checks, session, 'witness');
    witness.join();
    const seen = await witness.collect(isEdit, 3);
    checks.must(
      "the witness receives alice's 3 edits",
      seen.length === 3,
      `got ${seen.length} within ${WAIT_MS / 1000}s: ${seen.map(show)}; ${witness.context()}`,
    );

    carol = new Participant(client, checks, session, 'carol');
    carol.join();
    const replay = await carol.collect(isEdit, 3);
    checks.must(
      'carol receives the 3 edits replayed',
      replay.length === 3,
      `got ${replay.length} within ${WAIT_MS / 1000}s: ${replay.map(show)}; ${carol.context()}`,
    );
    const got = JSON.stringify(replay.map((m) => [m.edit.file_path, m.edit.line_number, m.edit.content]));
    const want = JSON.stringify(lines.map((content, number) => ['main.rs', number, content]));
    checks.ok('the replayed edits, in order', got === want, `got ${got}, want ${want}`);
    checks.ok(
      "the replayed edits are alice's",
      replay.every((m) => m.user_id === 'alice'),
      `user_ids ${replay.map((m) => m.user_id)}`,
    );
    const versions = replay.map((m) => m.edit.version);
    checks.ok('the replayed versions are 1, 2, 3', versions.join() === '1,2,3', `versions ${versions}`);
    // The history replays everything essential in order, alice's join too.
    const kinds = carol.received.map((m) => (isPresence(m.user_id, 'JOINED')(m) ? `JOINED ${m.user_id}` : m.payload));
    const joinedAt = kinds.indexOf('JOINED alice');
    checks.ok(
      "alice's JOINED is replayed before her edits",
      joinedAt >= 0 && joinedAt < kinds.indexOf('edit'),
      `carol received, in order: ${JSON.stringify(kinds)}`,
    );
    await carol.listen(QUIET_MS);
    const extra = carol.unclaimed.filter(isEdit).map(show);
    checks.ok('no edit is delivered twice', extra.length === 0, `carol also received ${extra}`);
    for (const participant of [carol, witness, alice]) participant.doneWriting();
  } finally {
    for (const participant of [alice, witness, carol]) {
      if (participant) {
        participant.cancel();
        participant.report();
      }
    }
  }
}

async function editIntoEmptySession(client, checks) {
  const session = newSessionId('empty');
  const alice = new Participant(client, checks, session, 'alice');
  let bob = null;
  try {
    // No presence first: the stream opens with an edit, beyond the end of a
    // file that does not exist yet (0-based line 2).
    alice.send(alice.message({ edit: { file_path: 'main.rs', line_number: 2, content: 'x', version: 0 } }));
    // The seed proto cannot see acknowledgements; alice's stream ending OK
    // after her half-close proves the server took her edit before bob joins.
    alice.doneWriting();
    const aliceEnd = await alice.waitEnd();
    checks.must('a stream that opens with an edit ends OK after its half-close', endedOk(aliceEnd), endDetail(aliceEnd));

    bob = new Participant(client, checks, session, 'bob');
    bob.join();
    const edit = await bob.expect('bob receives the replayed edit', 'CodeEdit', isEdit);
    const got = JSON.stringify([edit.edit.file_path, edit.edit.line_number, edit.edit.content]);
    checks.ok('the replayed edit replaces 0-based line 2', got === JSON.stringify(['main.rs', 2, 'x']), `got ${got}`);
    checks.ok("the replayed edit is alice's", edit.user_id === 'alice', `user_id ${JSON.stringify(edit.user_id)}`);
    checks.ok('the replayed edit has version 1', edit.edit.version === 1, `version ${edit.edit.version}`);
    await bob.listen(QUIET_MS);
    const extra = bob.unclaimed.filter(isEdit).map(show);
    checks.ok('exactly one edit is replayed', extra.length === 0, `bob also received ${extra}`);
    bob.doneWriting();
  } finally {
    for (const participant of [alice, bob]) {
      if (participant) {
        participant.cancel();
        participant.report();
      }
    }
  }
}

// alice and bob each replace line 1 of f.txt six times, interleaved as fast
// as they can, always with version 0 (the article's client tracks no
// versions): every edit of each reaches the other.
async function concurrentReplaces(client, checks) {
  const session = newSessionId('concurrent');
  const alice = new Participant(client, checks, session, 'alice');
  let bob = null;
  try {
    alice.join();
    bob = new Participant(client, checks, session, 'bob');
    bob.join();
    await alice.expect('alice sees bob JOINED', 'PresenceUpdate JOINED from bob', isPresence('bob', 'JOINED'));
    for (let i = 0; i < 6; i++) {
      alice.send(alice.message({ edit: { file_path: 'f.txt', line_number: 1, content: `alice ${i}`, version: 0 } }));
      bob.send(bob.message({ edit: { file_path: 'f.txt', line_number: 1, content: `bob ${i}`, version: 0 } }));
    }
    const fromBob = await alice.collect((m) => isEdit(m) && m.user_id === 'bob', 6);
    const fromAlice = await bob.collect((m) => isEdit(m) && m.user_id === 'alice', 6);
    const want = (who) => JSON.stringify([0, 1, 2, 3, 4, 5].map((i) => `${who} ${i}`));
    let got = JSON.stringify(fromBob.map((m) => m.edit.content));
    checks.ok("alice receives all 6 of bob's edits, in order", got === want('bob'), `got ${got}`);
    got = JSON.stringify(fromAlice.map((m) => m.edit.content));
    checks.ok("bob receives all 6 of alice's edits, in order", got === want('alice'), `got ${got}`);
    const lines = new Set(fromAlice.concat(fromBob).map((m) => m.edit.line_number));
    checks.ok('every broadcast edit replaces line 1', lines.size === 1 && lines.has(1), `lines ${[...lines]}`);
    alice.doneWriting();
    bob.doneWriting();
  } finally {
    for (const participant of [alice, bob]) {
      if (participant) {
        participant.cancel();
        participant.report();
      }
    }
  }
}

const SCENARIOS = {
  two_participants: twoParticipants,
  late_join_history: lateJoinHistory,
  edit_into_empty_session: editIntoEmptySession,
  concurrent_replaces: concurrentReplaces,
};

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 1) {
    const [flag, inline] = argv[i].split(/=(.*)/s);
    const value = inline !== undefined ? inline : argv[++i];
    if (flag === '--server') args.server = value;
    else if (flag === '--scenario') args.scenario = value;
    else throw new Error(`unknown argument ${argv[i]}`);
    if (value === undefined) throw new Error(`${flag} needs a value`);
  }
  if (!args.server || !args.scenario) {
    throw new Error(`usage: seed_client.js --server HOST:PORT --scenario ${Object.keys(SCENARIOS).join('|')}|all`);
  }
  return args;
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(error.message);
    return 2;
  }
  const names = args.scenario === 'all' ? Object.keys(SCENARIOS) : [args.scenario];
  const unknown = names.filter((name) => !(name in SCENARIOS));
  if (unknown.length) {
    console.error(`unknown scenario ${unknown.join(', ')}; known: ${Object.keys(SCENARIOS).join(', ')}`);
    return 2;
  }

  // The point of this client: it knows only the article's proto.
  const fields = definition['codereview.v1.SessionMessage'].type.field.map((f) => f.name).sort();
  const seedFields = ['comment', 'cursor', 'edit', 'presence', 'session_id', 'timestamp', 'user_id'];
  if (fields.join() !== seedFields.join()) {
    console.log(`FAIL setup: ${SEED_PROTO} is not the article's proto (fields ${fields})`);
    return 1;
  }

  let failed = 0;
  const client = new codereview.CodeReviewService(args.server, grpc.credentials.createInsecure());
  try {
    for (const name of names) {
      const checks = new Checks(name);
      try {
        await SCENARIOS[name](client, checks);
      } catch (error) {
        if (!(error instanceof Abort)) {
          checks.failed += 1;
          console.log(`FAIL ${name}: ${error && error.stack ? error.stack : error}`);
        }
      }
      failed += checks.failed;
      console.log(`${checks.failed ? 'FAIL' : 'PASS'} scenario ${name}`);
      // Let cancelled calls settle before the next scenario.
      await sleep(10);
    }
  } finally {
    client.close();
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.log(`FAIL: ${error && error.stack ? error.stack : error}`);
    process.exit(1);
  },
);
