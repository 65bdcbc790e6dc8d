// The demo app (script-tag build) with users chatting; the screenshot goes to docs/demo.png.
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, setHidden, until } from './browser';
import { SCREENSHOT } from './paths';
import { startServer, type RunningServer } from './server';

let browser: Browser;
let server: RunningServer;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  server = await startServer({ env: { PUBSUB_SERVER__PRESENCE_GRACE_MS: '500' } });
  browser = await launchBrowser();
});

afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.stop();
});

async function demo(user: string, query: Record<string, string> = {}): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 }, deviceScaleFactor: 1 });
  contexts.push(context);
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${server.origin}/demo/index.html?${new URLSearchParams({ user, ...query })}`);
  await until(page, `window.demo && window.demo.client.isConnected()`).catch((e) => {
    throw new Error(`${user}'s demo did not connect: ${e.message} ${errors.join('; ')}`);
  });
  return page;
}

const say = async (page: Page, text: string) => {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
};
const messageCount = (page: Page, n: number) => until(page, `document.querySelectorAll('#messages li').length == ${n}`);
const personStatus = (page: Page, user: string, status: string) =>
  until(page, `document.querySelector('#people li[data-user="${user}"]')?.dataset.status == '${status}'`);

describe('demo app', () => {
  it('two users chat; presence and own tabs show live; screenshot', async () => {
    // dave was here earlier and left: OFFLINE with a "last seen" time.
    const dave = await demo('dave');
    await dave.close();
    await new Promise((r) => setTimeout(r, 1000));

    const carol = await demo('carol', { watch: 'alice,bob' });
    const bob = await demo('bob', { watch: 'alice,carol', chat: 'alice' });
    const alice = await demo('alice', { watch: 'bob,carol,dave', chat: 'bob' });
    const alice2 = await demo('alice', { watch: 'bob,carol,dave', chat: 'bob' });
    await until(alice, `document.getElementById('tab-log').textContent.includes('another tab opened')`);
    // alice's second tab goes to the background: the first becomes her active client again.
    await setHidden(alice2, true);
    await until(alice, `document.getElementById('my-tabs').textContent == '2 tabs · this tab is active'`);
    await setHidden(carol, true); // carol switched to another tab: AWAY

    await say(alice, 'Hey Bob! Lunch at 1?');
    await messageCount(bob, 1);
    await say(bob, 'Sure. The usual place?');
    await messageCount(alice, 2);
    await say(alice, 'Yes, see you there.');
    await messageCount(bob, 3);
    await messageCount(alice, 3);
    // alice's other tab shows the whole conversation: bob's messages reach every tab of alice,
    // and her own come over broadcast.
    await messageCount(alice2, 3);
    expect(await alice2.locator('#messages li').allInnerTexts()).toEqual([
      'Hey Bob! Lunch at 1?\nsent from another tab',
      'Sure. The usual place?',
      'Yes, see you there.\nsent from another tab',
    ]);
    await until(alice, `document.querySelectorAll('#messages li small')[1]?.textContent == 'delivered to 1 tab'`);

    await personStatus(alice, 'bob', 'ONLINE');
    await personStatus(alice, 'carol', 'AWAY');
    await personStatus(alice, 'dave', 'OFFLINE');
    await personStatus(bob, 'alice', 'ONLINE');
    expect(await alice.textContent('#my-status')).toBe('ONLINE');

    await alice.screenshot({ path: SCREENSHOT });
  });
});
