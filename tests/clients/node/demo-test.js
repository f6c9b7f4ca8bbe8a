#!/usr/bin/env node
// The demo page (GET /) of the edge-ws binary, run with its built-in configuration, in headless
// Chromium (Debian's /usr/bin/chromium driven by playwright-core), with two browser contexts
// signed in as alice and bob:
//   * a chat message reaches the other user; presence lists both; a typing indicator shows at
//     the other user only (the sender is excluded);
//   * an @mention becomes a notification in the other user's inbox, so does one sent through
//     the server HTTP API; mark-all-read clears the unread count;
//   * concurrent typing in the shared editor converges to the same text on both pages, with
//     every character typed;
//   * a reload recovers the chat history.
// Screenshots go to $ARTIFACTS (default tests/clients/logs).
//
// Usage: node demo-test.js http://127.0.0.1:PORT http://127.0.0.1:API_PORT API_KEY
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const [base, apiBase, apiKey] = process.argv.slice(2);
if (!base || !apiBase || !apiKey) {
  console.error('usage: demo-test.js http://HOST:PORT http://HOST:API_PORT API_KEY');
  process.exit(2);
}
const ARTIFACTS = process.env.ARTIFACTS || path.join(__dirname, '..', 'logs');
fs.mkdirSync(ARTIFACTS, { recursive: true });
const WAIT = 15000;

let passed = 0;
let failed = 0;
async function check(name, f) {
  const t0 = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.message ? e.message.split('\n')[0] : e}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function api(method, body) {
  const r = await fetch(`${apiBase}/api/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`api ${method}: ${r.status} ${text}`);
  return JSON.parse(text);
}

async function signIn(browser, user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`[${user}] page error: ${e.message}`));
  await page.goto(base + '/');
  await page.fill('#user', user);
  await page.click('#signin-button');
  await page.waitForFunction(() => document.getElementById('status').classList.contains('on'),
    null, { timeout: WAIT });
  // Joined: the history read and the subscription are answered, the document is open.
  await page.waitForFunction(() => window.demo.synced(), null, { timeout: WAIT });
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `demo-${name}.png`), fullPage: true });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
  let alice, bob;
  try {
    await check('both users sign in and see each other in the room', async () => {
      alice = await signIn(browser, 'alice');
      bob = await signIn(browser, 'bob');
      await alice.page.waitForFunction(() => document.getElementById('members').textContent.includes('bob'),
        null, { timeout: WAIT });
      await bob.page.waitForFunction(() => document.getElementById('members').textContent.includes('alice'),
        null, { timeout: WAIT });
    });

    await check('a chat message reaches the other user', async () => {
      await alice.page.fill('#text', 'hello from alice');
      await alice.page.click('#compose button');
      await bob.page.waitForFunction(
        () => window.demo.messages().some((m) => m.includes('hello from alice')), null, { timeout: WAIT });
      await alice.page.waitForFunction(
        () => window.demo.messages().some((m) => m.includes('hello from alice')), null, { timeout: WAIT });
    });

    await check('typing shows at the other user only', async () => {
      await bob.page.type('#text', 'typing…', { delay: 10 });
      await alice.page.waitForFunction(
        () => document.getElementById('typing').textContent.includes('bob is typing'), null, { timeout: WAIT });
      // Give the indicator time to come back to bob, were it not excluded.
      await bob.page.waitForTimeout(500);
      const own = await bob.page.textContent('#typing');
      assert(own === '', `bob sees his own typing indicator: ${JSON.stringify(own)}`);
      await bob.page.fill('#text', '');
    });

    await check('an @mention becomes a notification in the other inbox', async () => {
      await alice.page.fill('#text', 'look at this @bob');
      await alice.page.click('#compose button');
      await bob.page.waitForFunction(
        () => document.getElementById('notifications').textContent.includes('alice mentioned you'),
        null, { timeout: WAIT });
      const unread = Number(await bob.page.textContent('#unread'));
      assert(unread >= 1, `unread count ${unread}`);
    });

    await check('a notification sent through the HTTP API arrives at once', async () => {
      const r = await api('notify', { user: 'alice', type: 'system', title: 'Deploy finished', body: 'v2 is live' });
      assert(typeof r.id === 'number', `notify answered ${JSON.stringify(r)}`);
      await alice.page.waitForFunction(
        () => document.getElementById('notifications').textContent.includes('Deploy finished'),
        null, { timeout: WAIT });
      await alice.page.waitForFunction(() => Number(document.getElementById('unread').textContent) >= 1,
        null, { timeout: WAIT });
      await shot(alice.page, 'alice-inbox');
    });

    await check('mark all read clears the unread count, also in the store', async () => {
      await bob.page.click('#mark-read');
      await bob.page.waitForFunction(() => document.getElementById('unread').textContent === '0',
        null, { timeout: WAIT });
      const page = await api('notifications', { user: 'bob', unread: true });
      assert(page.unread === 0 && page.items.length === 0, `bob still has unread: ${JSON.stringify(page)}`);
    });

    await check('concurrent edits in the shared editor converge', async () => {
      // A shared line first, so the two type at its two ends.
      const seed = ' | the middle | ';
      await alice.page.click('#doc');
      await alice.page.keyboard.type(seed, { delay: 5 });
      await bob.page.waitForFunction((s) => window.demo.docText() === s, seed, { timeout: WAIT });
      const a = 'Alice writes this line. 😀';
      const b = 'Bob adds his own words;';
      await alice.page.click('#doc');
      await alice.page.keyboard.press('End');
      await bob.page.click('#doc');
      await bob.page.keyboard.press('Home');
      await Promise.all([
        alice.page.keyboard.type(a, { delay: 15 }),
        bob.page.keyboard.type(b, { delay: 15 }),
      ]);
      const settled = async (p) => p.waitForFunction(() => window.demo.synced(), null, { timeout: WAIT });
      await settled(alice.page);
      await settled(bob.page);
      // Both have every acknowledged op once the last broadcast lands.
      await alice.page.waitForFunction(
        (expect) => window.demo.docText().length === expect, seed.length + a.length + b.length, { timeout: WAIT });
      await bob.page.waitForFunction(
        (expect) => window.demo.docText().length === expect, seed.length + a.length + b.length, { timeout: WAIT });
      const ta = await alice.page.evaluate(() => window.demo.docText());
      const tb = await bob.page.evaluate(() => window.demo.docText());
      assert(ta === tb, `diverged:\n  alice ${JSON.stringify(ta)}\n  bob   ${JSON.stringify(tb)}`);
      const letters = (s) => [...s].sort().join('');
      assert(letters(ta) === letters(seed + a + b), `characters lost or doubled: ${JSON.stringify(ta)}`);
      // Each typed at their own end of the shared line: no interleaving.
      assert(ta === b + seed + a, `unexpected order: ${JSON.stringify(ta)}`);
      const shown = await bob.page.inputValue('#doc');
      assert(shown === tb, 'the textarea shows another text than the client state');
      await shot(bob.page, 'bob-editor');
    });

    await check('a reload recovers the chat history', async () => {
      await bob.page.reload();
      await bob.page.waitForFunction(() => window.demo && window.demo.synced(), null, { timeout: WAIT });
      await bob.page.waitForFunction(
        () => window.demo.messages().some((m) => m.includes('hello from alice')), null, { timeout: WAIT });
      const msgs = await bob.page.evaluate(() => window.demo.messages());
      const n = msgs.filter((m) => m.includes('hello from alice')).length;
      assert(n === 1, `the message shows ${n} times after the reload`);
      await shot(bob.page, 'bob-after-reload');
    });

    await check('a message published through the HTTP API shows in the room', async () => {
      const r = await api('publish', { channel: 'chat:lobby', data: { user: 'backend', text: 'maintenance at noon' } });
      assert(typeof r.offset === 'number', `publish answered ${JSON.stringify(r)}`);
      for (const u of [alice, bob]) {
        await u.page.waitForFunction(
          () => window.demo.messages().some((m) => m.includes('maintenance at noon')), null, { timeout: WAIT });
      }
      await shot(alice.page, 'alice-chat');
    });
  } finally {
    await browser.close();
  }
  console.log(`demo: ${passed} passed, ${failed} failed (screenshots in ${ARTIFACTS})`);
  process.exit(failed === 0 ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
