// The demo page in a real browser: Debian's chromium, headless, driven by
// playwright-core. Loads the page from a running imcloud (IMCLOUD_PAGE),
// waits for it to connect, clicks Send for a push by mid, to the room and to
// everyone, and sees each message appear; goes offline, pushes by mid, comes
// back and sees the message it missed; joins a room, sees its live count and
// a push to it, and leaves it. Saves a screenshot
// (IMCLOUD_SCREENSHOT). crates/imcloud/tests/javascript.rs runs it; by hand:
//   IMCLOUD_PAGE=http://127.0.0.1:3104/ node e2e/demo.e2e.mjs
import assert from 'node:assert/strict';

import { chromium } from 'playwright-core';

const pageUrl = process.env.IMCLOUD_PAGE ?? 'http://127.0.0.1:3104/';
const screenshot = process.env.IMCLOUD_SCREENSHOT ?? 'demo.png';
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in CI needs --no-sandbox; the rest keeps chromium off the
  // network this machine does not have.
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });

  await page.goto(`${pageUrl}?mid=4242&room=${encodeURIComponent('live://e2e')}`);
  await page.locator('#state[data-state="open"]').waitFor();
  assert.match(await page.locator('#who').textContent(), /mid 4242 · live:\/\/e2e/);

  for (const [target, message] of [
    ['mid', 'pushed to mid 4242'],
    ['room', 'pushed to live://e2e'],
    ['all', 'pushed to everyone'],
  ]) {
    await page.selectOption('#target', target);
    await page.fill('#message', message);
    await page.click('#send');
    await page.locator('#messages li .body', { hasText: message }).waitFor();
    await page.locator('#result', { hasText: 'sent:' }).waitFor();
    console.log(`ok: ${target} push shown`);
  }
  assert.equal(await page.locator('#messages li').count(), 3);

  // Offline: a push by mid is kept, and shown once the page is back.
  await page.click('#offline');
  await page.locator('#state[data-state="closed"]').waitFor();
  await page.selectOption('#target', 'mid');
  await page.fill('#message', 'sent while the page was offline');
  await page.click('#send');
  await page.locator('#result', { hasText: '"stored":1' }).waitFor();
  assert.equal(await page.locator('#messages li').count(), 3, 'nothing shown while offline');
  await page.click('#offline');
  const missed = page.locator('#messages li', { hasText: 'sent while the page was offline' });
  await missed.waitFor();
  assert.match(await missed.locator('.meta').textContent(), /#2 · sent while offline/);
  console.log('ok: a push sent while offline shown after coming back');
  assert.equal(await page.locator('#messages li').count(), 4, 'once');
  const online = Number(await page.locator('#online').textContent());
  assert.ok(online >= 1, `room online count ${online}`);

  // Rooms: join one, see its live count and a push to it, leave it.
  await page.fill('#join-room', 'group://e2e');
  await page.click('#join');
  await page.locator('#joined li[data-room="group://e2e"]', { hasText: 'online 1' }).waitFor();
  await page.locator('#joined li[data-room="live://e2e"]', { hasText: /online [1-9]/ }).waitFor();
  await page.selectOption('#target', 'room');
  await page.fill('#message', 'pushed to group://e2e');
  await page.click('#send');
  await page.locator('#messages li .body', { hasText: 'pushed to group://e2e' }).waitFor();
  await page.click('#leave');
  await page.locator('#result', { hasText: 'left group://e2e' }).waitFor();
  assert.equal(await page.locator('#joined li[data-room="group://e2e"]').count(), 0);
  console.log('ok: joined a room, saw its count and a push to it, left it');

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`ok: screenshot ${screenshot}`);
  assert.deepEqual(errors, [], 'the page logged errors');
} finally {
  await browser.close();
}
