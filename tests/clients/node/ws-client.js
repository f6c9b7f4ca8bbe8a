#!/usr/bin/env node
// Real-client check: Node `ws` 8 against the edge-ws echo server.
//
// Usage: node ws-client.js ws://127.0.0.1:PORT/
//        NODE_EXTRA_CA_CERTS=ca.pem node ws-client.js wss://localhost:PORT/   (TLS)
//
// Echoes text, binary, 1 MiB, empty and UTF-8-heavy messages, asserts that permessage-deflate
// was negotiated (perMessageDeflate on, as ws offers by default), closes with 1000 and asserts
// the closing handshake completed. Prints `node-ws: N passed, M failed`; exits 1 on any failure.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const WebSocket = require('ws');

const NAME = (process.argv[2] || '').startsWith('wss:') ? 'node-ws-wss' : 'node-ws';
const payloads = require(path.join(__dirname, '..', 'payloads.json'));
const UTF8 = payloads.utf8.repeat(payloads.utf8_repeat);
const MIB = 1 << 20;

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function main(url) {
  const ws = new WebSocket(url, { perMessageDeflate: true, maxPayload: 64 * MIB });
  const inbox = [];
  const waiters = [];
  let closed = null;
  const closedP = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      closed = { code, reason: reason.toString() };
      resolve(closed);
      for (const w of waiters.splice(0)) w.reject(new Error(`connection closed (${code})`));
    });
  });
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    const w = waiters.shift();
    if (w) w.resolve(m);
    else inbox.push(m);
  });
  ws.on('error', () => {}); // surfaces as 'close' (1006) or a failed open

  const next = () =>
    inbox.length
      ? Promise.resolve(inbox.shift())
      : closed
        ? Promise.reject(new Error(`connection closed (${closed.code})`))
        : new Promise((resolve, reject) => waiters.push({ resolve, reject }));

  async function echo(msg) {
    const binary = typeof msg !== 'string';
    ws.send(msg, { binary });
    const got = await withTimeout(next(), 30000, 'echo');
    assert.equal(got.isBinary, binary, `sent ${binary ? 'binary' : 'text'}, got the other`);
    if (binary) assert.ok(Buffer.from(msg).equals(got.data), `binary echo differs (${msg.length} bytes sent, ${got.data.length} received)`);
    else assert.equal(got.data.toString('utf8'), msg, 'text echo differs');
  }

  const checks = [
    ['permessage-deflate negotiated', async () => {
      assert.match(ws.extensions, /^permessage-deflate/, `ws.extensions = ${JSON.stringify(ws.extensions)}`);
    }],
    ['text echo', () => echo('Hello, edge-ws! '.repeat(20))],
    ['binary echo', () => echo(Buffer.from(Array.from({ length: 2048 }, (_, i) => i & 255)))],
    ['1 MiB echo (binary, text)', async () => {
      await echo(crypto.randomBytes(MIB)); // incompressible
      await echo('edge-ws '.repeat(MIB / 8)); // compressible
    }],
    ['empty echo (text, binary)', async () => {
      await echo('');
      await echo(Buffer.alloc(0));
    }],
    ['UTF-8-heavy text echo', () => echo(UTF8)],
    ['close 1000 completed', async () => {
      ws.close(1000, 'done');
      const c = await withTimeout(closedP, 10000, 'close');
      assert.equal(c.code, 1000, `server answered close code ${c.code}`);
      assert.equal(ws.readyState, WebSocket.CLOSED);
    }],
  ];

  return new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('close', (code) => reject(new Error(`connect failed (close ${code})`)));
    ws.once('error', reject);
  }).then(async () => {
    const results = [];
    for (const [name, fn] of checks) {
      try {
        await fn();
        results.push([name, null]);
      } catch (e) {
        results.push([name, e.message.split('\n')[0]]);
      }
    }
    return results;
  });
}

(async () => {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node ws-client.js ws://HOST:PORT/');
    process.exit(2);
  }
  let results;
  try {
    results = await withTimeout(main(url), 120000, 'whole run');
  } catch (e) {
    results = [['connect', e.message]];
  }
  let failed = 0;
  for (const [name, err] of results) {
    if (err === null) console.log(`  ok    ${name}`);
    else {
      failed += 1;
      console.log(`  FAIL  ${name}: ${err}`);
    }
  }
  console.log(`${NAME}: ${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
