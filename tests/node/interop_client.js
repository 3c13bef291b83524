#!/usr/bin/env node
// The gRPC interop test cases, driven by Node @grpc/grpc-js against a server.
//
// Each case follows the official gRPC interop test descriptions
// (doc/interop-test-descriptions.md in the grpc repository). Prints
// `PASS name` or `FAIL name: reason` per case; exits 1 if any case failed.
//
//     node interop_client.js --server 127.0.0.1:50051 [--cases empty_unary,ping_pong]
//
// Dependencies come from scripts/setup-peers (npm ci in tests/node).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(
  ['grpc/testing/test.proto', 'grpc/health/v1/health.proto'],
  { includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const packages = grpc.loadPackageDefinition(definition);
const testing = packages.grpc.testing;
const healthPackage = packages.grpc.health.v1;
const Status = grpc.status;

// Generous per-call deadline so a misbehaving server fails a case instead of
// hanging the run (the timeout case sets its own).
const CALL_TIMEOUT_MS = 30000;
const TEST_STATUS_MESSAGE = 'test status message';
const SPECIAL_STATUS_MESSAGE = '\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \u{1F608}\t\n';
const ECHO_INITIAL_KEY = 'x-grpc-test-echo-initial';
const ECHO_INITIAL_VALUE = 'test_initial_metadata_value';
const ECHO_TRAILING_KEY = 'x-grpc-test-echo-trailing-bin';
const ECHO_TRAILING_VALUE = Buffer.from([0xab, 0xab, 0xab]);

class CaseFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CaseFailed(message);
}

function options(timeoutMs = CALL_TIMEOUT_MS) {
  return { deadline: new Date(Date.now() + timeoutMs) };
}

function payload(size) {
  return { type: 'COMPRESSABLE', body: Buffer.alloc(size) };
}

function checkPayload(got, size, what = 'response') {
  check(got, `${what}: no payload`);
  check(got.type === 'COMPRESSABLE', `${what}: payload type ${got.type}`);
  check(got.body.length === size, `${what}: payload of ${got.body.length} bytes, want ${size}`);
  check(got.body.every((b) => b === 0), `${what}: payload is not all zeros`);
}

function statusName(code) {
  return Object.keys(Status).find((name) => Status[name] === code) || String(code);
}

function checkError(error, code, message) {
  check(error, `call succeeded, want ${statusName(code)}`);
  check(error.code !== undefined, `not a gRPC error: ${error}`);
  check(error.code === code, `status ${statusName(error.code)} (${JSON.stringify(error.details)}), want ${statusName(code)}`);
  if (message !== undefined) {
    check(error.details === message, `status message ${JSON.stringify(error.details)}, want ${JSON.stringify(message)}`);
  }
}

/** A unary call: resolves { error, response, initial, status } once it is over. */
function unary(method, request, metadata = new grpc.Metadata(), callOptions = options()) {
  return new Promise((resolve) => {
    let initial = null;
    let result = null;
    let status = null;
    const finish = () => {
      if (result && status) resolve({ ...result, initial, status });
    };
    const call = method(request, metadata, callOptions, (error, response) => {
      result = { error, response };
      finish();
    });
    call.on('metadata', (md) => { initial = md; });
    call.on('status', (s) => { status = s; finish(); });
  });
}

/** Reads a streaming call one message at a time; the end and errors stick. */
class Reader {
  constructor(call) {
    this.items = [];
    this.waiters = [];
    this.terminal = null;
    this.terminalTaken = false;
    this.initial = new Promise((resolve) => call.on('metadata', resolve));
    this.status = new Promise((resolve) => call.on('status', resolve));
    call.on('data', (message) => this.push({ message }));
    call.on('end', () => this.finish({ end: true }));
    call.on('error', (error) => this.finish({ error }));
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  finish(item) {
    if (this.terminal) return;
    this.terminal = item;
    this.push(item);
  }

  /** The next message, or null at the end; rejects with the call's error. */
  async next() {
    let item;
    if (this.items.length) item = this.items.shift();
    else if (this.terminalTaken) item = this.terminal;
    else item = await new Promise((resolve) => this.waiters.push(resolve));
    if (item === this.terminal) this.terminalTaken = true;
    if (item.error) throw item.error;
    return item.end ? null : item.message;
  }

  /** All remaining messages; rejects with the call's error. */
  async rest() {
    const messages = [];
    for (let m = await this.next(); m !== null; m = await this.next()) messages.push(m);
    return messages;
  }
}

async function expectStreamError(reader, code, message) {
  let error = null;
  try {
    const messages = await reader.rest();
    check(false, `call succeeded with ${messages.length} messages, want ${statusName(code)}`);
  } catch (e) {
    if (e instanceof CaseFailed) throw e;
    error = e;
  }
  checkError(error, code, message);
}

const cases = {
  async empty_unary(stub) {
    const { error, response } = await unary(stub.EmptyCall.bind(stub), {});
    check(!error, `unexpected error ${error && error.message}`);
    check(response && Object.keys(response).length === 0, `response ${JSON.stringify(response)} is not an Empty`);
  },

  async large_unary(stub) {
    const request = { response_type: 'COMPRESSABLE', response_size: 314159, payload: payload(271828) };
    const { error, response } = await unary(stub.UnaryCall.bind(stub), request);
    check(!error, `unexpected error ${error && error.message}`);
    checkPayload(response.payload, 314159);
  },

  async client_streaming(stub) {
    const response = await new Promise((resolve, reject) => {
      const call = stub.StreamingInputCall(new grpc.Metadata(), options(), (error, r) => (error ? reject(error) : resolve(r)));
      for (const size of [27182, 8, 1828, 45904]) call.write({ payload: payload(size) });
      call.end();
    });
    check(response.aggregated_payload_size === 74922, `aggregated_payload_size ${response.aggregated_payload_size}, want 74922`);
  },

  async server_streaming(stub) {
    const sizes = [31415, 9, 2653, 58979];
    const request = { response_type: 'COMPRESSABLE', response_parameters: sizes.map((size) => ({ size })) };
    const reader = new Reader(stub.StreamingOutputCall(request, new grpc.Metadata(), options()));
    const responses = await reader.rest();
    check(responses.length === sizes.length, `${responses.length} responses, want ${sizes.length}`);
    responses.forEach((r, i) => checkPayload(r.payload, sizes[i], `response ${i}`));
    const status = await reader.status;
    check(status.code === Status.OK, `status ${statusName(status.code)}`);
  },

  async ping_pong(stub) {
    const requestSizes = [27182, 8, 1828, 45904];
    const responseSizes = [31415, 9, 2653, 58979];
    const call = stub.FullDuplexCall(new grpc.Metadata(), options());
    const reader = new Reader(call);
    try {
      for (let i = 0; i < requestSizes.length; i++) {
        call.write({
          response_type: 'COMPRESSABLE',
          response_parameters: [{ size: responseSizes[i] }],
          payload: payload(requestSizes[i]),
        });
        const response = await reader.next();
        check(response !== null, `stream ended before response ${i}`);
        checkPayload(response.payload, responseSizes[i], `response ${i}`);
      }
    } finally {
      call.end();
    }
    check((await reader.next()) === null, 'a response after the last request');
    const status = await reader.status;
    check(status.code === Status.OK, `status ${statusName(status.code)} (${status.details})`);
  },

  async empty_stream(stub) {
    const call = stub.FullDuplexCall(new grpc.Metadata(), options());
    const reader = new Reader(call);
    call.end();
    const responses = await reader.rest();
    check(responses.length === 0, `${responses.length} responses, want none`);
    const status = await reader.status;
    check(status.code === Status.OK, `status ${statusName(status.code)} (${status.details})`);
  },

  async status_code_and_message(stub) {
    const responseStatus = { code: 2, message: TEST_STATUS_MESSAGE };
    const { error } = await unary(stub.UnaryCall.bind(stub), { response_status: responseStatus });
    checkError(error, Status.UNKNOWN, TEST_STATUS_MESSAGE);

    const call = stub.FullDuplexCall(new grpc.Metadata(), options());
    const reader = new Reader(call);
    call.write({ response_status: responseStatus });
    call.end();
    await expectStreamError(reader, Status.UNKNOWN, TEST_STATUS_MESSAGE);
  },

  async special_status_message(stub) {
    const request = { response_status: { code: 2, message: SPECIAL_STATUS_MESSAGE } };
    const { error } = await unary(stub.UnaryCall.bind(stub), request);
    checkError(error, Status.UNKNOWN, SPECIAL_STATUS_MESSAGE);
  },

  async custom_metadata(stub) {
    const metadata = () => {
      const md = new grpc.Metadata();
      md.set(ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE);
      md.set(ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE);
      return md;
    };
    const checkEchoed = (initial, trailing, what) => {
      const initialValues = initial ? initial.get(ECHO_INITIAL_KEY) : [];
      check(
        initialValues.length === 1 && initialValues[0] === ECHO_INITIAL_VALUE,
        `${what}: initial metadata ${JSON.stringify(initial && initial.getMap())} lacks ${ECHO_INITIAL_KEY}=${ECHO_INITIAL_VALUE}`,
      );
      const trailingValues = trailing ? trailing.get(ECHO_TRAILING_KEY) : [];
      check(
        trailingValues.length === 1 && Buffer.isBuffer(trailingValues[0]) && trailingValues[0].equals(ECHO_TRAILING_VALUE),
        `${what}: trailing metadata ${JSON.stringify(trailing && trailing.toJSON())} lacks ${ECHO_TRAILING_KEY}=ababab`,
      );
    };

    const request = { response_type: 'COMPRESSABLE', response_size: 314159, payload: payload(271828) };
    const { error, response, initial, status } = await unary(stub.UnaryCall.bind(stub), request, metadata());
    check(!error, `UnaryCall: unexpected error ${error && error.message}`);
    checkPayload(response.payload, 314159, 'UnaryCall');
    checkEchoed(initial, status.metadata, 'UnaryCall');

    const call = stub.FullDuplexCall(metadata(), options());
    const reader = new Reader(call);
    call.write({ response_type: 'COMPRESSABLE', response_parameters: [{ size: 314159 }], payload: payload(271828) });
    call.end();
    const responses = await reader.rest();
    check(responses.length === 1, `FullDuplexCall: ${responses.length} responses, want 1`);
    checkPayload(responses[0].payload, 314159, 'FullDuplexCall');
    const streamStatus = await reader.status;
    checkEchoed(await reader.initial, streamStatus.metadata, 'FullDuplexCall');
  },

  async unimplemented_method(stub) {
    const { error } = await unary(stub.UnimplementedCall.bind(stub), {});
    checkError(error, Status.UNIMPLEMENTED);
  },

  async unimplemented_service(stub, address) {
    const other = new testing.UnimplementedService(address, grpc.credentials.createInsecure());
    try {
      const { error } = await unary(other.UnimplementedCall.bind(other), {});
      checkError(error, Status.UNIMPLEMENTED);
    } finally {
      other.close();
    }
  },

  async timeout_on_sleeping_server(stub) {
    const call = stub.FullDuplexCall(new grpc.Metadata(), options(1));
    const reader = new Reader(call);
    call.write({ payload: payload(27182) });
    try {
      await expectStreamError(reader, Status.DEADLINE_EXCEEDED);
    } finally {
      call.end();
    }
  },

  async cancel_after_begin(stub) {
    const error = await new Promise((resolve) => {
      const call = stub.StreamingInputCall(new grpc.Metadata(), options(), (e) => resolve(e));
      call.cancel();
    });
    checkError(error, Status.CANCELLED);
  },

  async cancel_after_first_response(stub) {
    const call = stub.FullDuplexCall(new grpc.Metadata(), options());
    const reader = new Reader(call);
    call.write({ response_type: 'COMPRESSABLE', response_parameters: [{ size: 31415 }], payload: payload(27182) });
    const response = await reader.next();
    check(response !== null, 'stream ended before the first response');
    checkPayload(response.payload, 31415);
    call.cancel();
    await expectStreamError(reader, Status.CANCELLED);
  },

  async health(stub, address) {
    const client = new healthPackage.Health(address, grpc.credentials.createInsecure());
    try {
      const { error, response } = await unary(client.Check.bind(client), { service: '' });
      check(!error, `unexpected error ${error && error.message}`);
      check(response.status === 'SERVING', `status ${response.status}, want SERVING`);
    } finally {
      client.close();
    }
  },
};

function parseArgs(argv) {
  const usage = 'usage: interop_client.js --server HOST:PORT [--cases a,b,c|all]';
  const args = { server: null, cases: 'all' };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = inline !== undefined ? inline : argv[++i];
    if (flag === '--server') args.server = value;
    else if (flag === '--cases') args.cases = value;
    else {
      console.error(`${usage}\nunknown argument ${argv[i]}`);
      process.exit(2);
    }
    if (value === undefined) {
      console.error(`${usage}\n${flag} needs a value`);
      process.exit(2);
    }
  }
  if (!args.server) {
    console.error(`${usage}\n--server is required`);
    process.exit(2);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const names = args.cases === 'all' ? Object.keys(cases) : args.cases.split(',').filter(Boolean);
  const unknown = names.filter((name) => !(name in cases));
  if (unknown.length) {
    console.error(`unknown case(s) ${unknown.join(', ')}; known: ${Object.keys(cases).join(', ')}`);
    return 2;
  }
  const stub = new testing.TestService(args.server, grpc.credentials.createInsecure());
  let failed = 0;
  for (const name of names) {
    try {
      await cases[name](stub, args.server);
      console.log(`PASS ${name}`);
    } catch (error) {
      failed += 1;
      if (error instanceof CaseFailed) {
        console.log(`FAIL ${name}: ${error.message}`);
      } else if (error && error.code !== undefined && error.details !== undefined) {
        console.log(`FAIL ${name}: unexpected status ${statusName(error.code)} (${JSON.stringify(error.details)})`);
      } else {
        console.log(`FAIL ${name}: ${error && error.stack ? error.stack : error}`);
      }
    }
  }
  stub.close();
  return failed ? 1 : 0;
}

// Exit explicitly rather than when the event loop drains: grpc-js 1.14 can
// leak the HTTP/2 stream of a call cancelled right after it started on a ready
// channel (ResolvingCall.getConfig creates the child call in a promise callback
// without checking whether the call already ended), so cancel_after_begin
// leaves a stream open that only the server's deadline (30 s) would end.
function exit(code) {
  process.stdout.write('', () => process.exit(code));
}

main().then(exit, (error) => {
  console.error(error);
  exit(1);
});
