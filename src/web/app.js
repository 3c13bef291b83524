// The review page: a browser participant of codereview.v1, served by the
// server itself (no CDN, no build step). Hand-written here: the protobuf of
// the few messages it exchanges, gRPC-Web framing over fetch, the OT replica
// of src/review/replica.rs (same transform and the same rules), and the UI.
//
// A browser cannot stream both ways, so the participant is two calls:
// Participate (server streaming: its events, JOINED while open) and Send
// (unary: its messages, carrying the participant token the stream's first
// message gave). Reconnects resume after the last sequence number seen, and
// everything not yet acknowledged is sent again with its client sequence.
'use strict';
(() => {
// ---------------------------------------------------------------- protobuf
const STR = 1, U = 2, I32 = 3, BOOL = 4, MSG = 5, OPT = 6;
const Join = [[1, 'want_snapshot', BOOL], [2, 'resume_after_sequence', OPT], [3, 'session_epoch', U]];
const CodeEdit = [[1, 'file_path', STR], [2, 'line_number', I32], [3, 'content', STR], [4, 'version', I32], [5, 'op', I32]];
const Comment = [[1, 'comment_id', STR], [2, 'line_number', I32], [3, 'text', STR], [4, 'file_path', STR]];
const Cursor = [[1, 'file_path', STR], [2, 'line', I32], [3, 'column', I32]];
const Presence = [[1, 'status', I32], [2, 'role', I32]];
const Joined = [[1, 'session_epoch', U], [2, 'sequence', U], [3, 'version', I32], [4, 'catchup', I32], [5, 'role', I32], [6, 'last_client_sequence', U], [7, 'token_expires_at', U]];
const Ack = [[1, 'client_sequence', U], [2, 'sequence', U], [3, 'version', I32], [4, 'duplicate', BOOL], [5, 'noop', BOOL], [6, 'comment_id', STR]];
const ErrorMsg = [[1, 'code', I32], [2, 'message', STR], [3, 'client_sequence', U]];
const FileContent = [[1, 'file_path', STR], [2, 'lines', STR, null, true], [3, 'version', I32]];
const Participant = [[1, 'user_id', STR], [2, 'status', I32], [3, 'role', I32], [4, 'cursor', MSG, Cursor]];
const CommentEntry = [[1, 'user_id', STR], [2, 'comment', MSG, Comment], [3, 'sequence', U], [4, 'timestamp', U]];
const Snapshot = [[1, 'session_id', STR], [2, 'session_epoch', U], [3, 'sequence', U], [4, 'version', I32],
  [5, 'files', MSG, FileContent, true], [6, 'comments', MSG, CommentEntry, true], [7, 'participants', MSG, Participant, true]];
const Notice = [[1, 'kind', I32], [2, 'text', STR], [3, 'at', U]];
const SessionMessage = [[1, 'session_id', STR], [2, 'timestamp', U], [3, 'user_id', STR], [4, 'edit', MSG, CodeEdit],
  [5, 'comment', MSG, Comment], [6, 'cursor', MSG, Cursor], [7, 'presence', MSG, Presence], [8, 'sequence', U],
  [9, 'client_sequence', U], [10, 'join', MSG, Join], [11, 'joined', MSG, Joined], [12, 'ack', MSG, Ack],
  [13, 'error', MSG, ErrorMsg], [14, 'snapshot', MSG, Snapshot], [15, 'file', MSG, FileContent],
  [16, 'token_refresh', MSG, [[1, 'token', STR]]], [17, 'notice', MSG, Notice]];
const ParticipateRequest = [[1, 'session_id', STR], [2, 'user_id', STR], [3, 'join', MSG, Join]];
const SendRequest = [[1, 'participant_token', STR], [2, 'messages', MSG, SessionMessage, true]];
const SendReply = [[1, 'accepted', U]];

const utf8 = new TextEncoder(), fromUtf8 = new TextDecoder();

function varint(out, v) {
  if (v < 0) { // a negative int32 is ten bytes of two's complement
    let b = BigInt.asUintN(64, BigInt(v));
    while (b > 127n) { out.push(Number(b & 127n) | 128); b >>= 7n; }
    out.push(Number(b));
    return;
  }
  while (v > 127) { out.push((v % 128) | 128); v = Math.floor(v / 128); }
  out.push(v);
}

function bytesField(out, no, bytes) {
  varint(out, no * 8 + 2); varint(out, bytes.length);
  for (const b of bytes) out.push(b);
}

function encodeInto(schema, obj, out) {
  for (const [no, name, type, sub, repeated] of schema) {
    const value = obj[name];
    if (value === undefined || value === null) continue;
    for (const v of repeated ? value : [value]) {
      if (type === MSG) { const inner = []; encodeInto(sub, v, inner); bytesField(out, no, inner); }
      else if (type === STR) { if (v !== '' || repeated) bytesField(out, no, utf8.encode(v)); }
      else if (type === BOOL) { if (v) { varint(out, no * 8); out.push(1); } }
      else if (v !== 0 || type === OPT) { varint(out, no * 8); varint(out, v); }
    }
  }
  return out;
}
const encode = (schema, obj) => Uint8Array.from(encodeInto(schema, obj, []));

function decode(schema, buf, start = 0, end = buf.length) {
  const msg = {};
  const fields = schema.byNo || (schema.byNo = new Map(schema.map((f) => [f[0], f])));
  for (const [, name, type, , repeated] of schema) {
    if (repeated) msg[name] = [];
    else if (type === STR) msg[name] = '';
    else if (type === BOOL) msg[name] = false;
    else if (type === U || type === I32) msg[name] = 0;
  }
  let p = start;
  const read = () => { // a varint as [low 32 bits, high 32 bits]
    let lo = 0, hi = 0, shift = 0, b;
    do {
      if (p >= end) throw new Error('truncated protobuf');
      b = buf[p++];
      if (shift < 28) lo |= (b & 127) << shift;
      else if (shift === 28) { lo |= (b & 15) << 28; hi |= (b & 127) >> 4; }
      else if (shift < 64) hi |= (b & 127) << (shift - 32);
      shift += 7;
    } while (b & 128);
    return [lo >>> 0, hi >>> 0];
  };
  while (p < end) {
    const [key] = read();
    const no = key >>> 3, wire = key & 7, field = fields.get(no);
    let value;
    if (wire === 0) {
      const [lo, hi] = read();
      if (!field) continue;
      value = field[2] === BOOL ? lo !== 0 : field[2] === I32 ? lo | 0 : hi * 4294967296 + lo;
    } else if (wire === 2) {
      const [len] = read();
      if (p + len > end) throw new Error('truncated protobuf');
      const from = p; p += len;
      if (!field) continue;
      value = field[2] === MSG ? decode(field[3], buf, from, p) : fromUtf8.decode(buf.subarray(from, p));
    } else if (wire === 1 || wire === 5) { p += wire === 1 ? 8 : 4; continue; }
    else throw new Error('unsupported wire type ' + wire);
    if (field[4]) msg[field[1]].push(value); else msg[field[1]] = value;
  }
  return msg;
}

// ---------------------------------------------------------------- gRPC-Web
class GrpcError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}
const SERVICE = '/codereview.v1.CodeReviewService/';

function frame(bytes) {
  const out = new Uint8Array(5 + bytes.length);
  new DataView(out.buffer).setUint32(1, bytes.length);
  out.set(bytes, 5);
  return out;
}

function trailers(bytes) {
  const status = { code: 2, message: 'no grpc-status in the trailers' };
  for (const line of fromUtf8.decode(bytes).split('\r\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const key = line.slice(0, i).trim().toLowerCase(), value = line.slice(i + 1).trim();
    if (key === 'grpc-status') status.code = Number(value);
    if (key === 'grpc-message') { try { status.message = decodeURIComponent(value); } catch { status.message = value; } }
  }
  if (status.code === 0) status.message = '';
  return status;
}

// Calls METHOD with one request; yields each response message's bytes, then
// throws a GrpcError unless the call ended with OK.
async function* call(method, schema, request, signal) {
  const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', accept: 'application/grpc-web+proto' };
  if (S.auth) headers.authorization = 'Bearer ' + S.auth;
  const response = await fetch(SERVICE + method, { method: 'POST', headers, body: frame(encode(schema, request)), signal, cache: 'no-store' });
  if (response.status !== 200) throw new GrpcError(14, 'HTTP status ' + response.status);
  let status = null;
  const early = response.headers.get('grpc-status');
  if (early !== null) {
    status = { code: Number(early), message: response.headers.get('grpc-message') || '' };
    try { status.message = decodeURIComponent(status.message); } catch { /* as sent */ }
  }
  const reader = response.body.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    while (buf.length >= 5) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
      if (buf.length < 5 + len) break;
      const flags = buf[0], body = buf.slice(5, 5 + len);
      buf = buf.subarray(5 + len);
      if (flags & 0x80) status = trailers(body); else yield body;
    }
    const { done, value } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf); joined.set(value, buf.length);
    buf = joined;
  }
  if (!status) throw new GrpcError(14, 'the call ended without a status');
  if (status.code !== 0) throw new GrpcError(status.code, status.message);
}

// ---------------------------------------------------------------- OT (src/review/ot.rs)
// op: { path, kind: 'replace'|'insert'|'delete'|'file'|'noop', line, text, lines }
const withLine = (op, line) => ({ ...op, line });
const NOOP = (op) => ({ path: op.path, kind: 'noop' });

function transform(a, b, aWins) {
  if (a.path !== b.path || a.kind === 'noop' || b.kind === 'noop') return a;
  if (a.kind === 'file') return b.kind === 'file' && !aWins ? NOOP(a) : a;
  if (b.kind === 'file') return NOOP(a);
  const q = a.line, p = b.line;
  if (b.kind === 'insert') {
    if (a.kind === 'insert') return withLine(a, q > p || (q === p && !aWins) ? q + 1 : q);
    return withLine(a, q >= p ? q + 1 : q);
  }
  if (b.kind === 'delete') {
    if (a.kind === 'insert') return withLine(a, q > p ? q - 1 : q);
    if (q === p) return NOOP(a);
    return q > p ? withLine(a, q - 1) : a;
  }
  // b replaces a line
  if (a.kind === 'replace' && q === p && !aWins) return NOOP(a);
  return a;
}

function check(len, op) {
  if (op.kind === 'insert' && op.line > len) throw new RangeError(`cannot insert at line ${op.line}: the file has ${len} lines`);
  if (op.kind === 'delete' && op.line >= len) throw new RangeError(`cannot delete line ${op.line}: the file has ${len} lines`);
}

function apply(lines, op) {
  check(lines.length, op);
  switch (op.kind) {
    case 'replace': while (lines.length < op.line) lines.push(''); lines[op.line] = op.text; break;
    case 'insert': lines.splice(op.line, 0, op.text); break;
    case 'delete': lines.splice(op.line, 1); break;
    case 'file': lines.splice(0, lines.length, ...op.lines); break;
  }
}

// Where a position on `line` of `path` goes after `op` (null: its line went away).
function transformLine(path, line, op) {
  if (op.path !== path) return line;
  if (op.kind === 'insert' && line >= op.line) return line + 1;
  if (op.kind === 'delete' && line === op.line) return null;
  if (op.kind === 'delete' && line > op.line) return line - 1;
  if (op.kind === 'file') return null;
  return line;
}

const KINDS = ['replace', 'insert', 'delete'];
const toWire = (op, version) => ({ file_path: op.path, line_number: op.line, content: op.kind === 'delete' ? '' : op.text, version, op: KINDS.indexOf(op.kind) });
const fromWire = (e) => ({ path: e.file_path, kind: KINDS[e.op] || 'noop', line: e.line_number, text: e.content });

// ---------------------------------------------------------------- state
const S = {
  session: '', user: '', auth: '',
  files: new Map(), version: 0, pending: [], // the replica: pending = [{cs, op}]
  comments: [], // {id, path, line, text, user, cs, pending, at}
  people: new Map(), // user -> {status, role, cursor}
  role: 0, lastSeq: null, epoch: 0, nextCs: 1,
  caughtUp: false, everCaughtUp: false, wantSnapshot: false, token: null,
  outbox: [], sending: false, pendingCursor: null, myCursor: null,
  stream: null, reconnectNow: false, fatal: null, activity: [],
  selected: null, editing: null, commenting: null, draft: '', catchups: [],
};
const ROLE = ['', 'author', 'reviewer', 'observer'];
const PRESENCE = ['joined', 'active', 'idle', 'left'];
const NOTICE = { TOKEN_EXPIRING: 1, GOING_AWAY: 2, CAUGHT_UP: 3, PARTICIPANT_TOKEN: 5 };

function message(payload, cs = 0) {
  return { session_id: S.session, user_id: S.user, timestamp: Date.now(), client_sequence: cs, ...payload };
}

function reanchor(op) { // comments follow their lines (src/review/comments.rs reanchor)
  const len = (S.files.get(op.path) || []).length;
  for (const c of S.comments) {
    if (c.path !== op.path) continue;
    const moved = transformLine(op.path, c.line, op);
    c.line = Math.max(0, Math.min(moved === null ? c.line : moved, len - 1));
  }
  for (const cur of new Set([...S.people.values()].map((p) => p.cursor).concat(S.myCursor))) { // mine too
    if (cur && cur.file_path === op.path) cur.line = transformLine(op.path, cur.line, op) ?? Math.min(cur.line, Math.max(len - 1, 0));
  }
  for (const key of ['editing', 'commenting']) {
    const at = S[key];
    if (at && at.path === op.path) {
      const moved = transformLine(op.path, at.line, op);
      if (moved === null) S[key] = null; else at.line = moved;
    }
  }
}

function fileOf(path) {
  if (!S.files.has(path)) S.files.set(path, []);
  return S.files.get(path);
}

function localEdit(op) {
  apply(fileOf(op.path), op);
  const cs = S.nextCs++;
  S.pending.push({ cs, op });
  const wire = toWire(op, S.version);
  reanchor(op);
  if (S.caughtUp) queue({ edit: wire }, cs);
  invalidate();
}

function remoteOp(op, version) {
  if (version !== S.version + 1) return false; // a gap: resync
  let incoming = op;
  for (const p of S.pending) {
    const next = transform(incoming, p.op, true);
    p.op = transform(p.op, incoming, false);
    incoming = next;
  }
  if (incoming.kind !== 'noop') { apply(fileOf(incoming.path), incoming); reanchor(incoming); }
  S.version = version;
  return true;
}

function resync(why) {
  S.wantSnapshot = true;
  note(why + ': resyncing');
  restart(true);
}

// ---------------------------------------------------------------- events
function essential(m) {
  if (m.edit || m.comment || m.file) return true;
  if (m.presence) return m.presence.status === 0 || m.presence.status === 3;
  return !!(m.ack && m.ack.sequence !== 0 && !m.ack.duplicate);
}

function receive(m) {
  if (essential(m) && m.sequence !== 0) S.lastSeq = m.sequence;
  const who = m.user_id;
  if (m.joined) {
    const j = m.joined;
    S.nextCs = Math.max(S.nextCs, j.last_client_sequence + 1);
    S.epoch = j.session_epoch;
    S.role = j.role;
    S.catchups.push(['history', 'snapshot', 'resume'][j.catchup]);
    if (j.catchup !== 1 && S.lastSeq === null) S.lastSeq = 0;
  } else if (m.snapshot) {
    const snap = m.snapshot;
    const dropped = S.pending.length;
    if (dropped) note(`${dropped} unacknowledged edit(s) could not be rebased on the snapshot and were dropped`, true);
    S.files = new Map(snap.files.map((f) => [f.file_path, f.lines.slice()]));
    S.version = snap.version;
    S.pending = [];
    S.comments = snap.comments.map((e) => ({ id: e.comment.comment_id, path: e.comment.file_path, line: e.comment.line_number, text: e.comment.text, user: e.user_id, at: e.timestamp }))
      .concat(S.comments.filter((c) => c.pending)); // sent again after catch-up (applied at most once)
    S.people = new Map(snap.participants.filter((p) => p.status !== 3).map((p) => [p.user_id, { status: p.status, role: p.role, cursor: p.cursor }]));
    S.lastSeq = snap.sequence;
  } else if (m.notice) {
    const kind = m.notice.kind;
    if (kind === NOTICE.PARTICIPANT_TOKEN) S.token = m.notice.text;
    else if (kind === NOTICE.CAUGHT_UP) { S.caughtUp = S.everCaughtUp = true; setStatus('connected'); resend(); }
    else if (kind === NOTICE.GOING_AWAY) { note('the server is going away: reconnecting'); restart(true); }
    else if (kind === NOTICE.TOKEN_EXPIRING) note('your token expires soon: join again with a fresh one', true);
  } else if (m.edit) {
    const op = fromWire(m.edit);
    if (!remoteOp(op, m.edit.version)) return resync(`out of sync (expected version ${S.version + 1}, got ${m.edit.version})`);
    log(who, `${op.kind === 'replace' ? 'edited' : op.kind === 'insert' ? 'inserted' : 'deleted'} ${op.path}:${op.line + 1}`);
  } else if (m.file) {
    if (!remoteOp({ path: m.file.file_path, kind: 'file', lines: m.file.lines }, m.file.version)) return resync('out of sync');
    if (!S.selected) S.selected = m.file.file_path;
    log(who, `uploaded ${m.file.file_path}`);
  } else if (m.comment) {
    const c = m.comment;
    let line = c.line_number;
    for (const p of S.pending) line = transformLine(c.file_path, line, p.op) ?? line;
    S.comments.push({ id: c.comment_id, path: c.file_path, line, text: c.text, user: who, at: m.timestamp });
    log(who, c.file_path ? `commented on ${c.file_path}:${c.line_number + 1}` : 'commented on the review');
  } else if (m.presence) {
    const st = m.presence.status;
    if (st === 3) { S.people.delete(who); log(who, 'left'); }
    else {
      const person = S.people.get(who) || { cursor: null, role: m.presence.role };
      person.status = st;
      if (st === 0) { person.role = m.presence.role; log(who, 'joined'); }
      S.people.set(who, person);
    }
  } else if (m.cursor) {
    const person = S.people.get(who) || { status: 1, role: 0 };
    person.cursor = m.cursor;
    S.people.set(who, person);
  } else if (m.ack) {
    const a = m.ack, cs = a.client_sequence;
    const ours = cs !== 0 && (S.pending.some((p) => p.cs === cs) || S.comments.some((c) => c.pending && c.cs === cs));
    if (!ours && a.version > S.version) return resync('the history holds edits made earlier under this name');
    if (cs !== 0) while (S.pending.length && S.pending[0].cs <= cs) S.pending.shift();
    S.version = Math.max(S.version, a.version);
    if (cs !== 0) {
      // A duplicate acknowledgement of a comment already shown (from a snapshot) settles the copy.
      S.comments = S.comments.filter((c) => !(c.pending && c.cs === cs && a.comment_id && S.comments.some((o) => !o.pending && o.id === a.comment_id)));
      for (const c of S.comments) {
        if (c.pending && c.cs <= cs) { c.pending = false; if (c.cs === cs) c.id = a.comment_id; }
      }
    }
  } else if (m.error) {
    const e = m.error;
    note(e.message, true);
    S.comments = S.comments.filter((c) => !(c.pending && c.cs === e.client_sequence));
    if (e.client_sequence !== 0 && S.pending.some((p) => p.cs === e.client_sequence)) {
      return resync('an edit was refused');
    }
  }
  invalidate();
}

// ---------------------------------------------------------------- sending
function queue(payload, cs = 0, later) { S.outbox.push(message(payload, cs)); if (!later) pump(); }

function resend() { // after catch-up: everything unacknowledged, in client-sequence order
  const waiting = S.pending.filter((p) => p.op.kind !== 'noop').map((p) => [p.cs, { edit: toWire(p.op, S.version) }]);
  S.pending = S.pending.filter((p) => p.op.kind !== 'noop');
  for (const c of S.comments) if (c.pending) waiting.push([c.cs, { comment: { line_number: c.line, text: c.text, file_path: c.path } }]);
  waiting.sort((a, b) => a[0] - b[0]);
  S.outbox = [];
  for (const [cs, payload] of waiting) queue(payload, cs, true);
  if (S.pendingCursor) { queue({ cursor: S.pendingCursor }, 0, true); S.pendingCursor = null; }
  pump();
}

async function pump() {
  if (S.sending || !S.caughtUp || !S.token || !S.outbox.length) return;
  S.sending = true;
  const messages = S.outbox.splice(0, 200), token = S.token, stream = S.stream;
  try {
    for await (const reply of call('Send', SendRequest, { participant_token: token, messages })) decode(SendReply, reply);
  } catch (e) {
    // What was not delivered is still pending: the next connection resends it.
    if (S.stream === stream) { note(`sending failed (${e.message}): reconnecting`); restart(true); }
  } finally {
    S.sending = false;
  }
  updateUnsent();
  if (S.outbox.length) pump();
}

function moveCursor(path, line) {
  if (S.myCursor && S.myCursor.file_path === path && S.myCursor.line === line) return;
  S.myCursor = { file_path: path, line, column: 0 };
  if (S.caughtUp) queue({ cursor: S.myCursor }); else S.pendingCursor = S.myCursor;
}

// ---------------------------------------------------------------- connection
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let wake = null;

function restart(now) {
  S.reconnectNow = S.reconnectNow || now;
  if (S.stream) S.stream.abort();
  if (wake) wake();
}

function setStatus(state, detail) {
  const el = $('status');
  el.dataset.state = state;
  el.textContent = { connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…', offline: 'offline' }[state] || state;
  el.title = detail || '';
}

async function connectionLoop() {
  let attempt = 0;
  for (;;) {
    setStatus(S.everCaughtUp ? 'reconnecting' : 'connecting');
    const controller = new AbortController();
    S.stream = controller;
    const join = S.lastSeq === null || S.wantSnapshot || !S.epoch
      ? { want_snapshot: true }
      : { resume_after_sequence: S.lastSeq, session_epoch: S.epoch };
    S.wantSnapshot = false;
    let why = 'the server ended the stream';
    try {
      const request = { session_id: S.session, user_id: S.user, join };
      for await (const bytes of call('Participate', ParticipateRequest, request, controller.signal)) {
        receive(decode(SessionMessage, bytes));
        if (controller.signal.aborted) break;
      }
    } catch (e) {
      why = e.message || String(e);
      // invalid, denied, replaced by a newer stream of this name, unauthenticated
      if ([3, 7, 10, 16].includes(e.code)) S.fatal = e.message;
    }
    controller.abort();
    const wasLive = S.caughtUp;
    S.caughtUp = false; S.token = null; S.stream = null; S.outbox = [];
    if (S.fatal) { setStatus('offline', S.fatal); note(S.fatal, true); return; }
    setStatus('reconnecting', why);
    attempt = wasLive ? 1 : attempt + 1;
    if (!S.reconnectNow) {
      const delay = Math.min(4000, 200 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random() / 2);
      await Promise.race([sleep(delay), new Promise((r) => { wake = r; })]);
      wake = null;
    }
    S.reconnectNow = false;
  }
}

// ---------------------------------------------------------------- UI
const $ = (id) => document.getElementById(id);
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function color(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 42%)`;
}
const initials = (name) => (name.match(/[\p{L}\p{N}]/gu) || ['?']).slice(0, 2).join('');
const avatar = (name, idle) => h('span', { class: 'avatar' + (idle ? ' idle' : ''), style: `background:${color(name)}`, title: name, 'data-user': name }, initials(name));
const clock = (ms) => ms ? new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';

function note(text, bad) {
  const el = h('div', { class: 'toast' + (bad ? ' bad' : '') }, text);
  $('toasts').append(el);
  setTimeout(() => el.remove(), 5000);
}

function log(who, what) {
  if (!S.caughtUp) return;
  S.activity.unshift([who, what, Date.now()]);
  S.activity.length = Math.min(S.activity.length, 30);
}

function updateUnsent() {
  const n = S.pending.length + S.comments.filter((c) => c.pending).length;
  $('unsent').hidden = n === 0;
  $('unsent').textContent = `${n} unacknowledged`;
}

// Rendering replaces the rows: never between a button's press and its
// release (the click would be lost), so a render waits for the release.
let scheduled = false, pressed = false, heldBack = false;
function invalidate() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    if (pressed) heldBack = true; else render();
  });
}
addEventListener('pointerdown', () => { pressed = true; }, true);
for (const end of ['pointerup', 'pointercancel']) {
  addEventListener(end, () => { pressed = false; if (heldBack) { heldBack = false; invalidate(); } }, true);
}

function render() {
  const focused = document.activeElement;
  const keepFocus = focused && focused.dataset && focused.dataset.keep;
  const selection = keepFocus ? [focused.selectionStart, focused.selectionEnd, focused.selectionDirection] : null;
  const paths = [...S.files.keys()].sort();
  if (!S.selected || !S.files.has(S.selected)) S.selected = paths[0] || null;
  const me = S.user;
  // header
  const people = [...S.people.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  $('avatars').replaceChildren(...people.map(([name, p]) => avatar(name, p.status === 2)));
  updateUnsent();
  // files
  $('files').replaceChildren(...paths.map((path) => {
    const n = S.comments.filter((c) => c.path === path).length;
    return h('li', { class: 'file' + (path === S.selected ? ' selected' : ''), 'data-path': path, onclick: () => { S.selected = path; S.editing = S.commenting = null; invalidate(); } },
      h('span', { class: 'name', title: path }, path),
      n ? h('span', { class: 'badge comments', title: `${n} comments` }, `● ${n}`) : null,
      h('span', { class: 'badge' }, String(S.files.get(path).length)));
  }));
  // participants
  $('people').replaceChildren(...people.map(([name, p]) => h('li', { class: 'person', 'data-user': name },
    avatar(name), h('span', {}, name + (name === me ? ' (you)' : '')), h('span', { class: 'role' }, ROLE[p.role] || ''),
    h('span', { class: 'where' }, p.cursor ? `${p.cursor.file_path}:${p.cursor.line + 1}` : PRESENCE[p.status] || ''))));
  $('activity').replaceChildren(...S.activity.map(([who, what, at]) => h('li', { title: clock(at) }, h('b', {}, who), ' ', what)));
  // the file
  const path = S.selected;
  $('empty').hidden = !!path;
  $('empty-session').textContent = S.session;
  $('file-title').textContent = path || '';
  const lines = path ? S.files.get(path) : [];
  const fileComments = S.comments.filter((c) => c.path === path);
  $('file-meta').textContent = path ? `${lines.length} lines · ${fileComments.length} comments · version ${S.version}` : '';
  const cursors = new Map();
  for (const [name, p] of people) {
    if (name !== me && p.cursor && p.cursor.file_path === path) cursors.set(p.cursor.line, [...(cursors.get(p.cursor.line) || []), name]);
  }
  const canEdit = S.role === 1 && S.everCaughtUp, canComment = (S.role === 1 || S.role === 2) && S.everCaughtUp;
  const rows = [];
  lines.forEach((text, i) => {
    const here = fileComments.filter((c) => c.line === i);
    const editing = S.editing && S.editing.path === path && S.editing.line === i;
    const who = cursors.get(i) || [];
    const row = h('div', { class: 'row' + (S.myCursor && S.myCursor.file_path === path && S.myCursor.line === i ? ' mine' : ''), 'data-line': i },
      h('span', { class: 'mark' },
        here.length ? h('span', { class: 'has-comments', title: `${here.length} comments` }, '●') : null,
        canComment ? h('button', { class: 'add-comment', title: 'Comment on this line', onclick: () => openComposer(path, i) }, '+') : null),
      h('span', { class: 'ln', onclick: () => { moveCursor(path, i); invalidate(); } }, String(i + 1)),
      editing
        ? h('span', { class: 'line-editor' }, h('input', { value: S.draft, 'data-keep': 'edit', 'aria-label': `line ${i + 1}`,
          oninput: (e) => { S.draft = e.target.value; },
          onkeydown: (e) => { if (e.key === 'Enter') commitEdit(); else if (e.key === 'Escape') { S.editing = null; invalidate(); } } }),
          h('button', { class: 'save-line', onclick: commitEdit }, 'Save'))
        : h('span', { class: 'text', ondblclick: () => canEdit && openEditor(path, i), onclick: () => { moveCursor(path, i); invalidate(); } }, text),
      who.map((name) => h('span', { class: 'cursor', style: `background:${color(name)}`, title: name })),
      who.length ? h('span', { class: 'flag', style: `background:${color(who[0])}` }, who.join(', ')) : null,
      canEdit && !editing ? h('span', { class: 'tools' },
        h('button', { class: 'edit-line', title: 'Edit this line', onclick: () => openEditor(path, i) }, '✎ edit'),
        h('button', { class: 'insert-line', title: 'Insert a line below', onclick: () => insertBelow(path, i) }, '+ line'),
        h('button', { class: 'delete-line', title: 'Delete this line', onclick: () => deleteLine(path, i) }, '✕')) : null);
    rows.push(row);
    const composing = S.commenting && S.commenting.path === path && S.commenting.line === i;
    if (here.length || composing) {
      rows.push(h('div', { class: 'thread', 'data-line': i },
        here.map(commentView),
        composing ? h('div', { class: 'composer' },
          h('textarea', { 'data-keep': 'comment', placeholder: `Comment on line ${i + 1}…`, oninput: (e) => { S.draft = e.target.value; },
            onkeydown: (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) commitComment(); } }, S.draft),
          h('div', { class: 'actions' },
            h('button', { class: 'cancel', onclick: () => { S.commenting = null; invalidate(); } }, 'Cancel'),
            h('button', { class: 'primary submit', onclick: commitComment }, 'Comment'))) : null));
    }
  });
  $('code').replaceChildren(...rows);
  const general = S.comments.filter((c) => !c.path);
  $('general-comments').replaceChildren(...(general.length ? general.map(commentView) : [h('p', { class: 'hint' }, 'No comments on the review as a whole.')]));
  if (keepFocus) {
    const again = document.querySelector(`[data-keep="${keepFocus}"]`);
    if (again) { again.focus(); again.setSelectionRange(...selection); }
  }
}

function commentView(c) {
  return h('div', { class: 'comment' + (c.pending ? ' pending' : ''), 'data-id': c.id || '', 'data-line': c.line, 'data-path': c.path },
    h('span', { class: 'who', style: `color:${color(c.user)}` }, c.user),
    !c.path && c.line ? h('span', { class: 'line-ref' }, `line ${c.line + 1}`) : null,
    h('span', { class: 'when' }, c.pending ? 'sending…' : clock(c.at)), h('div', { class: 'body' }, c.text));
}

function openEditor(path, line) {
  S.editing = { path, line };
  S.draft = S.files.get(path)[line];
  S.commenting = null;
  moveCursor(path, line);
  invalidate();
  requestAnimationFrame(() => { const el = document.querySelector('[data-keep="edit"]'); if (el) { el.focus(); el.select(); } });
}

function openComposer(path, line) {
  S.commenting = { path, line };
  S.draft = '';
  S.editing = null;
  moveCursor(path, line);
  invalidate();
  requestAnimationFrame(() => { const el = document.querySelector('[data-keep="comment"]'); if (el) el.focus(); });
}

function guarded(f) {
  try { f(); } catch (e) { note(e.message, true); }
}

function commitEdit() {
  const at = S.editing;
  if (!at) return;
  S.editing = null;
  const text = S.draft.replace(/[\r\n]+/g, ' ');
  if (S.files.get(at.path)[at.line] !== text) guarded(() => localEdit({ path: at.path, kind: 'replace', line: at.line, text }));
  invalidate();
}

function insertBelow(path, line) {
  guarded(() => localEdit({ path, kind: 'insert', line: line + 1, text: '' }));
  openEditor(path, line + 1);
}

function deleteLine(path, line) {
  guarded(() => localEdit({ path, kind: 'delete', line }));
}

function commitComment() {
  const at = S.commenting, text = S.draft.trim();
  if (!at || !text) return;
  S.commenting = null;
  S.draft = '';
  const cs = S.nextCs++;
  S.comments.push({ path: at.path, line: at.line, text, user: S.user, cs, pending: true, at: Date.now() });
  if (S.caughtUp) queue({ comment: { line_number: at.line, text, file_path: at.path } }, cs);
  invalidate();
}

function start(session, user, auth) {
  Object.assign(S, { session, user, auth });
  localStorage.setItem('codereview.user', user);
  if (auth) sessionStorage.setItem('codereview.token', auth);
  const url = '/s/' + encodeURIComponent(session);
  if (location.pathname !== url) history.replaceState(null, '', url + location.search);
  document.title = `${session} · codereview`;
  $('session-name').textContent = session;
  $('me').replaceChildren(avatar(user), ' ', user);
  $('join-screen').hidden = true;
  $('review').hidden = false;
  render();
  connectionLoop();
}

function init() {
  const params = new URLSearchParams(location.search);
  const fromPath = location.pathname.startsWith('/s/') ? decodeURIComponent(location.pathname.slice(3)) : '';
  const session = fromPath || params.get('session') || '';
  const user = params.get('user') || localStorage.getItem('codereview.user') || '';
  const auth = sessionStorage.getItem('codereview.token') || '';
  $('join-session').value = session;
  $('join-user').value = user;
  $('join-token').value = auth;
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    start($('join-session').value.trim(), $('join-user').value.trim(), $('join-token').value.trim());
  });
  if (session && params.get('user')) start(session, user, auth);
  else $((session ? 'join-user' : 'join-session')).focus();
}
// For tests and curious people: the page's state, read-only by convention.
window.codereview = { state: S, documents: () => Object.fromEntries(S.files) };
init();
})();
