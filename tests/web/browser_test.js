// The review page in a real Chromium (Debian's, driven by playwright-core;
// never a browser download), against a real server, with a real
// `codereview join` in the same session. Started by tests/web/browser.rs,
// which owns the server and the proxy in front of it, and cuts or restores
// the proxy when this script asks on stdout ("proxy cut" / "proxy restore",
// answered "done" on stdin).
//
// Two pages through the proxy (alice opens /s/<session>?user=alice, bob picks
// the session and his name in the form on GET /) and carol's `join` directly:
// edits from each reach the others and all three documents converge with
// the server's snapshot; a comment typed in one page appears in the other at
// its line; cursors show; cutting the proxy shows "reconnecting…", an edit
// made meanwhile waits, and after the restore the pages resume (not a
// snapshot) with nothing lost. Then an independent gRPC-Web client from npm
// (@connectrpc/connect-web) runs in a page of another origin (allowed by
// --web-origin) against GetSnapshot and WatchSession. A screenshot goes to
// the output directory. Exits 0 on success; failures throw.
'use strict';
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const readline = require('node:readline');
const { chromium } = require('playwright-core');

const arg = (name) => {
  const i = process.argv.indexOf('--' + name);
  if (i < 0) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
};
const BIN = arg('bin'), PAGE_URL = arg('page-url'), DIRECT = arg('direct-url');
const CLIENT_PORT = Number(arg('client-port')), DESCRIPTORS = arg('descriptors'), OUT = arg('out');
const SESSION = 'browser-e2e';
const STEP = 15000;
const started = Date.now();
const say = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);

// ---------------------------------------------------------------- the harness's proxy
const input = readline.createInterface({ input: process.stdin });
const answers = [];
let waiting = null;
input.on('line', (line) => { if (waiting) { const w = waiting; waiting = null; w(line); } else answers.push(line); });
function proxy(command) {
  console.log(`proxy ${command}`);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to proxy ${command}`)), STEP);
    const done = (line) => { clearTimeout(timer); assert.equal(line, 'done'); resolve(); };
    if (answers.length) done(answers.shift()); else waiting = done;
  });
}

// ---------------------------------------------------------------- carol, a `codereview join`
function startJoin() {
  const child = spawn(BIN, ['join', '--json', '--addr', DIRECT, '--session', SESSION, '--user', 'carol'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  const listeners = new Set();
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let json;
    try { json = JSON.parse(line); } catch { return; }
    lines.push(json);
    for (const l of listeners) l(json);
  });
  return {
    child, lines,
    send(command) { child.stdin.write(command + '\n'); },
    wait(what, want) {
      const found = lines.find(want);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { listeners.delete(l); reject(new Error(`join: timed out waiting for ${what}`)); }, STEP);
        const l = (json) => { if (want(json)) { clearTimeout(timer); listeners.delete(l); resolve(json); } };
        listeners.add(l);
      });
    },
    async document() {
      const before = lines.length;
      this.send('show');
      const doc = await this.wait('a document', (j) => j.type === 'document' && lines.indexOf(j) >= before);
      return doc.files;
    },
  };
}

function snapshotFiles() {
  const out = execFileSync(BIN, ['snapshot', '--addr', DIRECT, '--session', SESSION, '--json'], { encoding: 'utf8' });
  const snap = JSON.parse(out);
  return { files: snap.files, snap };
}

async function eventually(what, check, limit = STEP) {
  const deadline = Date.now() + limit;
  let last;
  for (;;) {
    try { const v = await check(); if (v !== undefined && v !== false) return v; } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---------------------------------------------------------------- the pages
const documents = (page) => page.evaluate(() => window.codereview.documents());
const state = (page, key) => page.evaluate((k) => JSON.parse(JSON.stringify(window.codereview.state[k])), key);
const status = (page) => page.locator('#status').getAttribute('data-state');

async function openPage(context, user, viaForm = false) {
  const page = await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => { throw new Error(`${user}'s page: ${e.message}`); });
  page.on('console', (m) => say(`${user}'s console:`, m.text()));
  // What the page tells its user (errors, resyncs), for the log.
  await page.exposeFunction('reportToast', (text) => say(`${user}'s page says:`, text));
  await page.addInitScript(() => new MutationObserver((changes) => {
    for (const c of changes) for (const n of c.addedNodes) if (n.classList && n.classList.contains('toast')) window.reportToast(n.textContent);
  }).observe(document, { childList: true, subtree: true }));
  if (viaForm) {
    // GET /: pick a session and a name.
    await page.goto(`${PAGE_URL}/`);
    assert.equal(await page.locator('#join-screen h1').textContent(), 'Join a review');
    await page.locator('#join-session').fill(SESSION);
    await page.locator('#join-user').fill(user);
    await page.locator('#join-form button[type="submit"]').click();
  } else {
    await page.goto(`${PAGE_URL}/s/${SESSION}?user=${user}`);
  }
  await page.waitForSelector('#status[data-state="connected"]', { timeout: STEP });
  assert.equal(await page.locator('#join-screen').isVisible(), false);
  return { page, requests, user };
}

async function row(page, line) {
  const r = page.locator(`#code .row[data-line="${line}"]`);
  await r.hover();
  return r;
}

async function editLine(page, line, text) {
  await (await row(page, line)).locator('.edit-line').click();
  const input = page.locator('.line-editor input');
  await input.fill(text);
  await input.press('Enter');
}

async function insertBelow(page, line, text) {
  await (await row(page, line)).locator('.insert-line').click();
  const input = page.locator('.line-editor input');
  await input.fill(text);
  await input.press('Enter');
}

async function comment(page, line, text) {
  await (await row(page, line)).locator('.add-comment').click();
  await page.locator('.composer textarea').fill(text);
  await page.locator('.composer .submit').click();
}

async function converged(pages, join) {
  return eventually('all documents to converge with the snapshot', async () => {
    const { files } = snapshotFiles();
    for (const p of pages) assert.deepEqual(await documents(p.page), files, `${p.user}'s page`);
    assert.deepEqual(await join.document(), files, "carol's join");
    return files;
  });
}

// ---------------------------------------------------------------- the npm gRPC-Web client's origin
function clientOrigin() {
  const root = path.join(__dirname, 'node_modules');
  const types = { '.js': 'text/javascript', '.html': 'text/html', '.bin': 'application/octet-stream' };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let file;
    if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
    if (url.pathname === '/client.html') file = path.join(__dirname, 'connect_client.html');
    else if (url.pathname === '/descriptors.bin') file = DESCRIPTORS;
    else if (url.pathname.startsWith('/node_modules/')) file = path.join(root, path.normalize(url.pathname.slice(14)));
    if (!file || !file.startsWith(__dirname) && file !== DESCRIPTORS || !fs.existsSync(file)) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(CLIENT_PORT, '127.0.0.1', () => resolve(server)));
}

// ---------------------------------------------------------------- the test
async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const main = ['fn main() {', '    let total = 1 + 2;', '    println!("{total}");', '}', ''].join('\n');
  const lib = Array.from({ length: 12 }, (_, i) => `pub const N${i}: u32 = ${i};`).join('\n');
  fs.writeFileSync(path.join(OUT, 'main.rs'), main);
  fs.writeFileSync(path.join(OUT, 'lib.rs'), lib);
  execFileSync(BIN, ['upload', '--addr', DIRECT, '--session', SESSION, 'main.rs', 'lib.rs'], { cwd: OUT, stdio: 'inherit' });

  const join = startJoin();
  await join.wait('catch-up', (j) => j.type === 'notice' && j.kind === 'caught_up');

  const browser = await chromium.launch({
    executablePath: arg('chromium'),
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    say('browser', browser.version());
    const alice = await openPage(await browser.newContext({ viewport: { width: 1280, height: 800 } }), 'alice');
    const bob = await openPage(await browser.newContext({ viewport: { width: 1280, height: 800 } }), 'bob', true);
    const pages = [alice, bob];
    say('pages connected');

    // The page as a reviewer sees it, through the DOM.
    await alice.page.locator('.file[data-path="main.rs"]').click();
    await bob.page.locator('.file[data-path="main.rs"]').click();
    assert.deepEqual(await alice.page.locator('#files .file .name').allTextContents(), ['lib.rs', 'main.rs']);
    assert.equal(await alice.page.locator('#file-title').textContent(), 'main.rs');
    assert.deepEqual(await alice.page.locator('#code .row .ln').allTextContents(), ['1', '2', '3', '4']);
    assert.equal(await alice.page.locator('#code .row[data-line="1"] .text').textContent(), '    let total = 1 + 2;');
    assert.equal(await alice.page.locator('#status').textContent(), 'connected');
    await eventually('everyone in the presence bar', async () => {
      const users = await alice.page.locator('#avatars .avatar').evaluateAll((els) => els.map((e) => e.dataset.user));
      assert.deepEqual(users, ['alice', 'bob', 'carol']);
      return true;
    });

    // Edits from each participant reach the others.
    await editLine(alice.page, 1, '    let total = 40 + 2;');
    await insertBelow(bob.page, 2, '    // bob: print it twice?');
    join.send('edit main.rs 0 fn main() -> () {');
    let files = await converged(pages, join);
    assert.deepEqual(files['main.rs'], ['fn main() -> () {', '    let total = 40 + 2;', '    println!("{total}");', '    // bob: print it twice?', '}']);
    say('edits converged');

    // Concurrent edits from both pages and the join, each made on a
    // document the others are changing.
    // (Each page acts on lines the other's action does not move: a click on
    // a row that moves under the pointer is another action.)
    await Promise.all([
      editLine(alice.page, 2, '    println!("alice {total}");'),
      insertBelow(bob.page, 3, '    println!("{}", total * 2);'),
    ]);
    join.send('insert main.rs 0 // carol was here');
    files = await converged(pages, join);
    assert.deepEqual(files['main.rs'], ['// carol was here', 'fn main() -> () {', '    let total = 40 + 2;',
      '    println!("alice {total}");', '    // bob: print it twice?', '    println!("{}", total * 2);', '}']);
    say('concurrent edits converged');

    // A comment typed in one page appears in the other, at its line.
    const lineOfPrint = files['main.rs'].findIndex((l) => l.includes('println'));
    await comment(alice.page, lineOfPrint, 'Prefer a named argument here.');
    const seen = bob.page.locator(`#code .thread[data-line="${lineOfPrint}"] .comment:not(.pending)`);
    await seen.waitFor({ timeout: STEP });
    assert.equal(await seen.locator('.body').textContent(), 'Prefer a named argument here.');
    assert.equal(await seen.locator('.who').textContent(), 'alice');
    assert.equal(await bob.page.locator(`#code .row[data-line="${lineOfPrint}"] .has-comments`).count(), 1);
    await carolSeesComment(join, 'Prefer a named argument here.', lineOfPrint);
    say('comment seen at line', lineOfPrint);

    // A cursor: bob clicks a line, alice sees his flag there.
    await bob.page.locator('#code .row[data-line="4"] .ln').click();
    await alice.page.mouse.move(1, 1); // a hovered row shows its tools instead of flags
    await alice.page.locator('#code .row[data-line="4"] .flag', { hasText: 'bob' }).waitFor({ timeout: STEP });

    // The network drops: both pages say so, an edit typed meanwhile waits,
    // and after the restore they resume with nothing lost.
    const catchupsBefore = (await state(alice.page, 'catchups')).length;
    await proxy('cut');
    for (const p of pages) {
      await p.page.waitForSelector('#status[data-state="reconnecting"]', { timeout: STEP });
      assert.equal(await p.page.locator('#status').textContent(), 'reconnecting…');
    }
    await editLine(alice.page, 2, '    let total = 40 + 2; // typed offline');
    const sent = join.lines.length;
    join.send('insert lib.rs 0 // carol, while alice was away');
    await join.wait("carol's insert acknowledged", (j) => j.type === 'ack' && j.client_sequence > 0 && join.lines.indexOf(j) >= sent);
    assert.equal((await state(alice.page, 'pending')).length, 1, 'the offline edit waits for the server');
    await proxy('restore');
    for (const p of pages) await p.page.waitForSelector('#status[data-state="connected"]', { timeout: STEP });
    files = await converged(pages, join);
    assert.equal(files['main.rs'][2], '    let total = 40 + 2; // typed offline');
    assert.equal(files['lib.rs'][0], '// carol, while alice was away');
    const catchups = await state(alice.page, 'catchups');
    assert.ok(catchups.length > catchupsBefore, 'alice reconnected');
    assert.equal(catchups[catchups.length - 1], 'resume', 'alice resumed after the last sequence she saw');
    assert.equal((await state(alice.page, 'pending')).length, 0);
    const comments = snapshotFiles().snap.comments;
    assert.equal(comments.length, 1, 'the comment was applied once');
    say('resumed after the cut');

    // The page talks to its own origin only.
    for (const p of pages) {
      const foreign = p.requests.filter((u) => !u.startsWith(PAGE_URL + '/'));
      assert.deepEqual(foreign, [], `${p.user}'s page requested another origin`);
    }

    await alice.page.screenshot({ path: path.join(OUT, 'page.png') });

    // An independent gRPC-Web client from npm, in a page of another origin.
    const origin = await clientOrigin();
    try {
      const client = await (await browser.newContext()).newPage();
      client.on('console', (m) => say('client page:', m.text()));
      await client.goto(`http://127.0.0.1:${CLIENT_PORT}/client.html#${encodeURIComponent(JSON.stringify({ server: DIRECT, session: SESSION }))}`);
      const ready = await client.waitForFunction(() => window.result && window.result.watching && window.result, null, { timeout: STEP });
      const early = await ready.jsonValue();
      assert.equal(early.error, undefined, early.error);
      assert.deepEqual(early.snapshot, files, 'GetSnapshot through connect-web');
      assert.deepEqual(early.kinds.slice(0, 2), ['joined', 'snapshot'], 'WatchSession with want_snapshot: Joined, then the snapshot');
      assert.deepEqual(early.snapshotFiles, files, 'the snapshot WatchSession starts with');
      join.send('edit lib.rs 1 // watched through connect-web');
      const watched = await client.waitForFunction(() => window.result.edits.length > 0 && window.result, null, { timeout: STEP });
      const result = await watched.jsonValue();
      assert.deepEqual(result.edits[0], { user: 'carol', file: 'lib.rs', line: 1, content: '// watched through connect-web' });
    } finally {
      origin.close();
    }
    say('connect-web client done');
    join.send('quit');
    await new Promise((resolve) => join.child.on('exit', resolve));
    console.log(JSON.stringify({ ok: true, files: snapshotFiles().files, screenshot: path.join(OUT, 'page.png') }));
  } catch (e) {
    // What each page showed when it failed, beside the log.
    for (const [i, context] of browser.contexts().entries()) {
      for (const [j, page] of context.pages().entries()) {
        await page.screenshot({ path: path.join(OUT, `failed-${i}-${j}.png`) }).catch(() => {});
      }
    }
    throw e;
  } finally {
    await browser.close();
    join.child.kill();
  }
}

async function carolSeesComment(join, text, line) {
  const event = await join.wait('the comment event', (j) => JSON.stringify(j).includes(text));
  assert.ok(JSON.stringify(event).includes(String(line)), JSON.stringify(event));
}

main().then(() => process.exit(0), (e) => { console.error(e && e.stack || e); process.exit(1); });
