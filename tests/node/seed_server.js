// The article's server (TypeScript on @grpc/grpc-js), transcribed to plain
// JavaScript with @grpc/proto-loader and the article's original proto
// (tests/seed/codereview.proto). Its logic is kept as the article wrote it —
// broadcast to the others, a 1000-message history replayed to joiners, a
// 30 s keepalive, the version counter it calls "OT" — so that
// `codereview load` can be shown to work against "any server of the
// article's proto". Only what cannot run as written is adapted: oneofs are
// proto-loader's (`message.payload === 'edit'`), and the article's
// `status: 'ERROR'` (a value its enum lacks) is sent as the last enum value.
// Prints {"msg":"listening","addr":"127.0.0.1:PORT"} on stderr when ready.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(path.join(__dirname, '..', 'seed', 'codereview.proto'), {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const pkg = grpc.loadPackageDefinition(definition).codereview.v1;

class CodeReviewService {
  constructor() { this.sessions = new Map(); }

  collaborativeSession(stream) {
    let currentSessionId = null;
    let userId = null;
    stream.on('data', (message) => {
      try {
        if (!currentSessionId) {
          currentSessionId = message.session_id;
          userId = message.user_id;
          this.joinSession(currentSessionId, userId, stream);
        }
        const session = this.sessions.get(currentSessionId);
        if (!session) { stream.destroy(new Error('Session not found')); return; }
        if (message.payload === 'edit') {
          message.edit = this.transformEdit(message.edit, session.documentVersion);
          session.documentVersion++;
        }
        this.broadcastToSession(currentSessionId, message, userId);
        session.messageBuffer.push(message);
        if (session.messageBuffer.length > 1000) session.messageBuffer.shift();
      } catch (error) {
        stream.write({ session_id: currentSessionId || '', timestamp: String(Date.now()), user_id: 'system',
          presence: { status: 'LEFT' } });
      }
    });
    stream.on('end', () => {
      if (currentSessionId && userId) this.leaveSession(currentSessionId, userId);
      stream.end();
    });
    stream.on('error', () => {
      if (currentSessionId && userId) this.leaveSession(currentSessionId, userId);
    });
    const keepalive = setInterval(() => {
      if (stream.destroyed || stream.cancelled) { clearInterval(keepalive); return; }
      stream.write({ session_id: currentSessionId || '', timestamp: String(Date.now()), user_id: 'system',
        presence: { status: 'ACTIVE' } });
    }, 30000);
    stream.on('close', () => clearInterval(keepalive));
  }

  joinSession(sessionId, userId, stream) {
    if (!this.sessions.has(sessionId)) {
      this.sessions.set(sessionId, { participants: new Map(), documentVersion: 0, messageBuffer: [] });
    }
    const session = this.sessions.get(sessionId);
    session.participants.set(userId, stream);
    session.messageBuffer.forEach((msg) => stream.write(msg));
    this.broadcastToSession(sessionId, { session_id: sessionId, timestamp: String(Date.now()), user_id: userId,
      presence: { status: 'JOINED' } }, userId);
  }

  leaveSession(sessionId, userId) {
    const session = this.sessions.get(sessionId);
    if (!session) return;
    session.participants.delete(userId);
    this.broadcastToSession(sessionId, { session_id: sessionId, timestamp: String(Date.now()), user_id: userId,
      presence: { status: 'LEFT' } }, userId);
    if (session.participants.size === 0) this.sessions.delete(sessionId);
  }

  broadcastToSession(sessionId, message, excludeUserId) {
    const session = this.sessions.get(sessionId);
    if (!session) return;
    session.participants.forEach((stream, userId) => {
      if (userId !== excludeUserId && !stream.destroyed) {
        try { stream.write(message); } catch (error) { session.participants.delete(userId); }
      }
    });
  }

  transformEdit(edit, currentVersion) {
    return { ...edit, version: currentVersion + 1 };
  }
}

const service = new CodeReviewService();
const server = new grpc.Server();
server.addService(pkg.CodeReviewService.service, {
  collaborativeSession: (stream) => service.collaborativeSession(stream),
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, port) => {
  if (error) { console.error(JSON.stringify({ msg: 'bind failed', error: String(error) })); process.exit(1); }
  console.error(JSON.stringify({ msg: 'listening', addr: `127.0.0.1:${port}` }));
});
