// Multi-tab presence from real pages: visibility, idle timer, closing, reloading, watching.
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, openTab, sleep, until } from './browser';
import { startServer, type RunningServer } from './server';

declare const t: any; // the page's harness (page/harness.js), inside page.evaluate

const GRACE_MS = 1500;
let browser: Browser;
let server: RunningServer;
const contexts: BrowserContext[] = [];
const newContext = async () => {
  const c = await browser.newContext();
  contexts.push(c);
  return c;
};

beforeAll(async () => {
  server = await startServer({ env: { PUBSUB_SERVER__PRESENCE_GRACE_MS: String(GRACE_MS) } });
  browser = await launchBrowser();
});

afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.stop();
});

/** A watcher page for `watcher` that watches `user` and has seen them ONLINE. */
async function watcher(watcherId: string, user: string): Promise<Page> {
  const page = await openTab(await newContext(), server.origin, watcherId);
  const watched = await page.evaluate((u) => t.watch([u]), user);
  expect(watched, `watch failed: ${JSON.stringify(watched)}`).toMatchObject({ ok: true, value: { [user]: { user, status: 'ONLINE' } } });
  return page;
}

const seesStatus = (page: Page, user: string, status: string, timeout = 8000) =>
  until(page, `t.lastStatusOf(${JSON.stringify(user)}) == ${JSON.stringify(status)}`, timeout);

describe('presence in a real browser', () => {
  it('welcome carries the presence: a fresh page is ONLINE with itself as the active client', async () => {
    const page = await openTab(await newContext(), server.origin, 'pat-w');
    const [status, presence, clientId] = await page.evaluate(() => [t.client.getStatus(), t.client.getPresence(), t.client.getClientId()]);
    expect(status).toBe('ONLINE');
    expect(presence).toMatchObject({ user: 'pat-w', status: 'ONLINE', clients: 1, activeClient: clientId });
  });

  it('presence() answers at once; unknown users are OFFLINE with version 0', async () => {
    await openTab(await newContext(), server.origin, 'quinn-q');
    const asker = await openTab(await newContext(), server.origin, 'asker-q');
    const answer = await asker.evaluate(() => t.outcome(t.client.presence(['quinn-q', 'ghost-q'])));
    expect(answer).toMatchObject({
      ok: true,
      value: { 'quinn-q': { status: 'ONLINE', clients: 1 }, 'ghost-q': { status: 'OFFLINE', version: 0 } },
    });
  });

  it('a page hidden → the other user, watching, sees AWAY; shown again → ONLINE', async () => {
    const alice = await openTab(await newContext(), server.origin, 'alice-h');
    const bob = await watcher('bob-h', 'alice-h');
    await alice.evaluate(() => t.setHidden(true));
    await seesStatus(bob, 'alice-h', 'AWAY');
    await until(alice, `t.client.getStatus() == 'AWAY'`);
    const events = await bob.evaluate(() => t.of('@pubsub/PRESENCE_CHANGE').map((r: any) => [r.action.user, r.action.status, r.meta.via]));
    expect(events).toEqual([['alice-h', 'AWAY', 'event']]);
    await alice.evaluate(() => t.setHidden(false));
    await seesStatus(bob, 'alice-h', 'ONLINE');
    await until(alice, `t.client.getStatus() == 'ONLINE'`);
    expect(await alice.evaluate(() => t.statuses)).toEqual(['ONLINE', 'AWAY', 'ONLINE']);
  });

  it('one of two tabs hidden keeps the user ONLINE; both hidden → AWAY', async () => {
    const ctx = await newContext();
    const tab1 = await openTab(ctx, server.origin, 'alice-2');
    const tab2 = await openTab(ctx, server.origin, 'alice-2');
    const bob = await watcher('bob-2', 'alice-2');
    await tab1.evaluate(() => t.setHidden(true));
    await sleep(800);
    expect(await bob.evaluate(() => t.statusesOf('alice-2'))).toEqual(['ONLINE']);
    expect(await tab1.evaluate(() => t.client.getStatus())).toBe('ONLINE'); // the user's status, not the tab's
    await tab2.evaluate(() => t.setHidden(true));
    await seesStatus(bob, 'alice-2', 'AWAY');
    await until(tab1, `t.client.getStatus() == 'AWAY'`);
    await until(tab2, `t.client.getStatus() == 'AWAY'`);
  });

  it('no input for idleTimeout → AWAY; real mouse input → ONLINE again', async () => {
    const alice = await openTab(await newContext(), server.origin, 'alice-i', { idle: '1500' });
    const bob = await openTab(await newContext(), server.origin, 'bob-i');
    expect(await bob.evaluate(() => t.watch(['alice-i']))).toMatchObject({ ok: true });
    await seesStatus(bob, 'alice-i', 'AWAY');
    await alice.mouse.move(20, 20);
    await alice.mouse.move(60, 40);
    await seesStatus(bob, 'alice-i', 'ONLINE');
  });

  it('a page closed → OFFLINE after the grace period, stamped with the time of the disconnect', async () => {
    const alice = await openTab(await newContext(), server.origin, 'alice-c');
    const bob = await watcher('bob-c', 'alice-c');
    const closedAt = Date.now();
    await alice.close();
    await seesStatus(bob, 'alice-c', 'OFFLINE', GRACE_MS + 8000);
    const seen = await bob.evaluate(() => t.presence['alice-c']);
    expect(seen.map((p: any) => p.status)).toEqual(['ONLINE', 'OFFLINE']);
    const offline = seen[1];
    expect(offline.at - closedAt).toBeGreaterThanOrEqual(GRACE_MS - 100);
    expect(offline.at - closedAt).toBeLessThan(GRACE_MS + 5000);
    expect(offline).toMatchObject({ previousStatus: 'ONLINE', clients: 0, activeClient: null, onlineSinceTs: null });
    expect(Math.abs(offline.lastOnlineTs - closedAt)).toBeLessThan(1000);
    expect(offline.version).toBeGreaterThan(seen[0].version);
  });

  it('a reload → the watcher sees no OFFLINE', async () => {
    const alice = await openTab(await newContext(), server.origin, 'alice-r');
    const bob = await watcher('bob-r', 'alice-r');
    await alice.reload();
    await until(alice, 't.client.isConnected()');
    await sleep(GRACE_MS + 1000);
    expect(await bob.evaluate(() => t.statusesOf('alice-r'))).not.toContain('OFFLINE');
    // The watch is still alive (so the silence above means something): a change still arrives.
    await alice.evaluate(() => t.setHidden(true));
    await seesStatus(bob, 'alice-r', 'AWAY');
    expect(await bob.evaluate(() => t.statusesOf('alice-r'))).toEqual(['ONLINE', 'AWAY']);
  });

  it("own tabs: another tab connecting and leaving is reported to this one", async () => {
    const ctx = await newContext();
    const tab1 = await openTab(ctx, server.origin, 'alice-t');
    const tab2 = await openTab(ctx, server.origin, 'alice-t');
    const tab2Id = await tab2.evaluate(() => t.client.getClientId());
    await until(tab1, `t.of('@pubsub/CLIENT_CONNECTED').length == 1`);
    expect(await tab1.evaluate(() => t.of('@pubsub/CLIENT_CONNECTED')[0].action)).toMatchObject({ user: 'alice-t', client: tab2Id, clients: 2 });
    expect(await tab1.evaluate(() => t.client.getPresence().clients)).toBe(2);
    await tab2.close();
    await until(tab1, `t.of('@pubsub/CLIENT_DISCONNECTED').length == 1`);
    expect(await tab1.evaluate(() => t.of('@pubsub/CLIENT_DISCONNECTED')[0].action)).toMatchObject({ client: tab2Id, clients: 1 });
    expect(await tab1.evaluate(() => t.client.getPresence().clients)).toBe(1);
  });
});
