#!/usr/bin/env node
// Real-client check: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core;
// no browser download) against the edge-ws echo server.
//
// Usage: node chromium-client.js ws://127.0.0.1:PORT/
//
// In a blank page served from a loopback HTTP server (an about:blank or data: page has an opaque
// origin, and Chromium's Local Network Access checks block its connections to 127.0.0.1 with
// net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS), `new WebSocket(url)` echoes text, binary, 1 MiB, empty and
// UTF-8-heavy messages; asserts that permessage-deflate was negotiated (Chromium offers
// `permessage-deflate; client_max_window_bits` by default, so the server must accept that
// offer); closes with 1000 and asserts a clean close. Prints `chromium: N passed, M failed`;
// exits 1 on any failure. CHROMIUM=/path overrides the browser.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const NAME = (process.argv[2] || '').startsWith('wss:') ? 'chromium-wss' : 'chromium';
const payloads = require(path.join(__dirname, '..', 'payloads.json'));

// Runs inside the page. Returns [[check, error-or-null], ...] plus what the browser saw.
async function pageChecks({ url, utf8, MIB }) {
  const results = [];
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const inbox = [];
  const waiters = [];
  let closeEvent = null;
  const closed = new Promise((resolve) => {
    ws.onclose = (e) => {
      closeEvent = { code: e.code, reason: e.reason, wasClean: e.wasClean };
      resolve(closeEvent);
      for (const w of waiters.splice(0)) w.reject(new Error(`connection closed (${e.code})`));
    };
  });
  ws.onmessage = (e) => {
    const w = waiters.shift();
    if (w) w.resolve(e.data);
    else inbox.push(e.data);
  };
  const timeout = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms));
  const next = () =>
    inbox.length
      ? Promise.resolve(inbox.shift())
      : closeEvent
        ? Promise.reject(new Error(`connection closed (${closeEvent.code})`))
        : Promise.race([new Promise((resolve, reject) => waiters.push({ resolve, reject })), timeout(30000, 'echo')]);
  const sameBytes = (a, b) => {
    if (a.byteLength !== b.byteLength) return false;
    const x = new Uint8Array(a);
    const y = new Uint8Array(b);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  };
  async function echo(msg) {
    ws.send(msg);
    const got = await next();
    if (typeof msg === 'string') {
      if (typeof got !== 'string') throw new Error('sent text, got binary');
      if (got !== msg) throw new Error(`text echo differs (${msg.length} chars sent, ${got.length} received)`);
    } else {
      if (!(got instanceof ArrayBuffer)) throw new Error('sent binary, got text');
      if (!sameBytes(got, msg.buffer)) throw new Error(`binary echo differs (${msg.byteLength} bytes sent, ${got.byteLength} received)`);
    }
  }
  const randomBytes = (n) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
    return b;
  };

  try {
    await Promise.race([
      new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error('WebSocket error before open'));
      }),
      timeout(10000, 'open'),
    ]);
  } catch (e) {
    return { results: [['connect', e.message]], extensions: ws.extensions };
  }
  const checks = [
    ['permessage-deflate negotiated', async () => {
      if (!ws.extensions.includes('permessage-deflate')) throw new Error(`ws.extensions = ${JSON.stringify(ws.extensions)}`);
    }],
    ['text echo', () => echo('Hello, edge-ws! '.repeat(20))],
    ['binary echo', () => echo(Uint8Array.from({ length: 2048 }, (_, i) => i & 255))],
    ['1 MiB echo (binary, text)', async () => {
      await echo(randomBytes(MIB)); // incompressible
      await echo('edge-ws '.repeat(MIB / 8)); // compressible
    }],
    ['empty echo (text, binary)', async () => {
      await echo('');
      await echo(new Uint8Array(0));
    }],
    ['UTF-8-heavy text echo', () => echo(utf8)],
    ['close 1000 completed', async () => {
      ws.close(1000, 'done');
      const c = await Promise.race([closed, timeout(10000, 'close')]);
      if (c.code !== 1000) throw new Error(`close code ${c.code}`);
      if (!c.wasClean) throw new Error('close was not clean');
      if (ws.readyState !== WebSocket.CLOSED) throw new Error(`readyState ${ws.readyState}`);
    }],
  ];
  for (const [name, fn] of checks) {
    try {
      await fn();
      results.push([name, null]);
    } catch (e) {
      results.push([name, String(e && e.message ? e.message : e)]);
    }
  }
  return { results, extensions: ws.extensions };
}

(async () => {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node chromium-client.js ws://HOST:PORT/');
    process.exit(2);
  }
  // The page's origin: a loopback HTTP server that serves an empty document.
  const pageServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>edge-ws client check</title>');
  });
  await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
  const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edge-ws-chromium-'));
  let context;
  let results;
  try {
    // launchPersistentContext: the fresh profile directory is Chromium's --user-data-dir.
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        // wss:// to the test server: trust exactly its certificate's key (CHROMIUM_SPKI, the
        // base64 SHA-256 of its SubjectPublicKeyInfo), nothing else.
        ...(process.env.CHROMIUM_SPKI
          ? [`--ignore-certificate-errors-spki-list=${process.env.CHROMIUM_SPKI}`]
          : []),
      ],
      timeout: 60000,
    });
    const page = context.pages()[0] || (await context.newPage());
    const consoleErrors = [];
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    await page.goto(pageUrl);
    const out = await page.evaluate(pageChecks, {
      url,
      utf8: payloads.utf8.repeat(payloads.utf8_repeat),
      MIB: 1 << 20,
    });
    console.log(`  (browser ${context.browser() ? context.browser().version() : 'chromium'}; Sec-WebSocket-Extensions: ${out.extensions})`);
    results = out.results;
    for (const e of consoleErrors) console.log(`  (console: ${e})`);
  } catch (e) {
    results = [['launch/run', String(e.message).split('\n')[0]]];
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
    pageServer.close();
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
