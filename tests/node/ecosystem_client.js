#!/usr/bin/env node
// Every RPC kind of codereview.v1 with gzip compression, driven by Node
// @grpc/grpc-js: the client is created with the channel option
// 'grpc.default_compression_algorithm': 2 (gzip), so grpc-js compresses what
// it sends (and, as always, accepts gzip back). tests/ecosystem.rs runs one
// case per process behind a proxy that counts the bytes each way.
//
//     node ecosystem_client.js --server 127.0.0.1:50051 --session S --case upload --lines 17000
//
// Cases (upload first: the others read the file it uploads): upload (client
// streaming), snapshot (unary), watch (server streaming), session
// (bidirectional: join with want_snapshot, then a --edit-bytes line and its
// Ack). Prints `PASS case` or `FAIL case: reason`; exits 1 on failure.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(['codereview/v1/codereview.proto'], {
  includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const pb = grpc.loadPackageDefinition(definition).codereview.v1;

const GZIP = 2; // grpc-js: 0 identity, 1 deflate, 2 gzip
const TIMEOUT_MS = 60000;
const FILE = 'big.rs';
const CHUNK = 256 * 1024;

class CaseFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CaseFailed(message);
}

function deadline() {
  return { deadline: new Date(Date.now() + TIMEOUT_MS) };
}

function pad(n, width) {
  return String(n).padStart(width, '0');
}

// The same text as tests/python/ecosystem_client.py's big_file.
function bigFile(lines) {
  const out = [];
  for (let i = 0; i < lines; i++) {
    out.push(`    let v${pad(i, 5)} = review(&v${pad(Math.floor(i / 2), 5)}, ${String(i % 97).padStart(2, ' ')}); // line ${i}\n`);
  }
  return Buffer.from(out.join(''));
}

function checkFile(files, lines) {
  check(files.length === 1, `${files.length} files, want 1`);
  check(files[0].file_path === FILE, `file ${files[0].file_path}`);
  check(files[0].lines.length === lines, `${files[0].lines.length} lines, want ${lines}`);
  const expected = bigFile(lines).toString().split('\n');
  for (const at of [1, Math.floor(lines / 2), lines - 1]) {
    check(files[0].lines[at] === expected[at], `line ${at} is ${JSON.stringify(files[0].lines[at])}`);
  }
}

function upload(client, args) {
  return new Promise((resolve, reject) => {
    const content = bigFile(args.lines);
    const call = client.UploadFiles(deadline(), (error, summary) => {
      if (error) return reject(error);
      try {
        check(summary.files === 1 && summary.lines === args.lines, `summary ${JSON.stringify(summary)}`);
        check(Number(summary.bytes) === content.length, `summary ${JSON.stringify(summary)}`);
        resolve();
      } catch (failure) {
        reject(failure);
      }
    });
    for (let at = 0; at < content.length; at += CHUNK) {
      call.write({ session_id: args.session, file_path: FILE, content: content.subarray(at, at + CHUNK) });
    }
    call.end();
  });
}

function snapshot(client, args) {
  return new Promise((resolve, reject) => {
    client.GetSnapshot({ session_id: args.session }, deadline(), (error, response) => {
      if (error) return reject(error);
      try {
        checkFile(response.files, args.lines);
        resolve();
      } catch (failure) {
        reject(failure);
      }
    });
  });
}

function watch(client, args) {
  return new Promise((resolve, reject) => {
    const call = client.WatchSession({ session_id: args.session, want_snapshot: true }, deadline());
    let done = false;
    call.on('data', (message) => {
      if (done || message.payload !== 'snapshot') return;
      done = true;
      try {
        checkFile(message.snapshot.files, args.lines);
        resolve();
      } catch (failure) {
        reject(failure);
      }
      call.cancel();
    });
    call.on('error', (error) => {
      if (!done) reject(error);
    });
    call.on('end', () => {
      if (!done) reject(new CaseFailed('the stream ended without a snapshot'));
    });
  });
}

function session(client, args) {
  return new Promise((resolve, reject) => {
    const user = 'node-gzip';
    const call = client.CollaborativeSession(deadline());
    let gotSnapshot = false;
    let acked = false;
    call.on('data', (message) => {
      try {
        if (message.payload === 'snapshot' && !gotSnapshot) {
          checkFile(message.snapshot.files, args.lines);
          gotSnapshot = true;
          call.write({
            session_id: args.session, user_id: user, client_sequence: 1,
            edit: { file_path: FILE, line_number: 0, content: 'x'.repeat(args.editBytes), op: 'REPLACE' },
          });
        } else if (message.payload === 'error') {
          throw new CaseFailed(`error ${JSON.stringify(message.error)}`);
        } else if (message.payload === 'ack' && Number(message.ack.client_sequence) === 1) {
          check(gotSnapshot, 'ack before the snapshot');
          acked = true;
          call.end();
        }
      } catch (failure) {
        call.cancel();
        reject(failure);
      }
    });
    call.on('error', reject);
    call.on('end', () => (acked ? resolve() : reject(new CaseFailed('the stream ended before the ack'))));
    call.write({ session_id: args.session, user_id: user, join: { want_snapshot: true } });
  });
}

const CASES = { upload, snapshot, watch, session };

function parseArgs(argv) {
  const args = { lines: 17000, editBytes: 60000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--server') args.server = value;
    else if (flag === '--session') args.session = value;
    else if (flag === '--case') args.case = value;
    else if (flag === '--lines') args.lines = Number(value);
    else if (flag === '--edit-bytes') args.editBytes = Number(value);
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!args.server || !args.session || !CASES[args.case]) {
    throw new Error('usage: ecosystem_client.js --server ADDR --session S --case upload|snapshot|watch|session');
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = new pb.CodeReviewService(args.server, grpc.credentials.createInsecure(), {
    'grpc.default_compression_algorithm': GZIP,
  });
  try {
    await CASES[args.case](client, args);
    console.log(`PASS ${args.case}`);
    return 0;
  } catch (failure) {
    const detail = failure.code !== undefined ? `${failure.code} ${JSON.stringify(failure.details)}` : failure.stack || failure;
    console.log(`FAIL ${args.case}: ${detail}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => process.exit(code));
