// The server killed and started again on the same port: pages reconnect by themselves, and
// their watches and topic memberships come back without the application doing anything.
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, openTab, until } from './browser';
import { startServer, type RunningServer } from './server';

declare const t: any; // the page's harness (page/harness.js), inside page.evaluate

let browser: Browser;
let server: RunningServer;
const contexts: BrowserContext[] = [];
let alice: Page;
let bob: Page;
let carol: Page; // queueWhileOffline
let watchedBeforeRestart = false;
let joinedBeforeRestart = false;

beforeAll(async () => {
  server = await startServer({ env: { PUBSUB_SERVER__PRESENCE_GRACE_MS: '1000' } });
  browser = await launchBrowser();
  for (let i = 0; i < 3; i++) contexts.push(await browser.newContext());
  alice = await openTab(contexts[0]!, server.origin, 'alice-x');
  bob = await openTab(contexts[1]!, server.origin, 'bob-x');
  carol = await openTab(contexts[2]!, server.origin, 'carol-x', { queue: '1' });
  // Set up before the restart; whether the server supports them is asserted in the tests below.
  watchedBeforeRestart = (await bob.evaluate(() => t.watch(['alice-x']))).ok;
  joinedBeforeRestart = (await bob.evaluate(() => t.outcome(t.client.join('room:restart')))).ok;
});

afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.stop();
});

describe('server restart', () => {
  it('pages notice the crash and reconnect by themselves when the server is back', async () => {
    const port = server.port;
    await server.kill(); // SIGKILL: no close frames, like a crash
    await until(alice, `t.client.getStatus() == 'CONNECTING'`);
    await until(bob, `t.client.getStatus() == 'CONNECTING'`);
    await server.restart();
    expect(server.port).toBe(port);
    await until(alice, 't.client.isConnected()', 20_000);
    await until(bob, 't.client.isConnected()', 20_000);
    expect(await alice.evaluate(() => t.statuses.slice(-2))).toEqual(['CONNECTING', 'ONLINE']);
    expect(await alice.evaluate(() => t.closes)).toEqual([1006]); // dropped without a close frame
    const sent = await alice.evaluate(() => t.outcome(t.client.sendToUser({ type: 'AFTER_RESTART' }, 'bob-x')));
    expect(sent).toEqual({ ok: true, value: { recipients: { 'bob-x': { online: true, clients: 1 } } } });
    await until(bob, `t.of('AFTER_RESTART').length == 1`);
  });

  it('watches resume: a change after the restart reaches the watcher', async () => {
    expect(watchedBeforeRestart, 'watch before the restart failed').toBe(true);
    await alice.evaluate(() => t.setHidden(true));
    await until(bob, `t.lastStatusOf('alice-x') == 'AWAY'`);
    await alice.evaluate(() => t.setHidden(false));
    await until(bob, `t.lastStatusOf('alice-x') == 'ONLINE'`);
  });

  it('topic memberships are re-joined', async () => {
    expect(joinedBeforeRestart, 'join before the restart failed').toBe(true);
    const sent = await alice.evaluate(() => t.outcome(t.client.publish('room:restart', { type: 'TICK' })));
    expect(sent).toEqual({ ok: true, value: { delivered: 1 } });
    await until(bob, `t.of('TICK').length == 1`);
    expect(await bob.evaluate(() => t.of('TICK')[0].meta.topic)).toBe('room:restart');
  });

  it('a graceful restart (SIGTERM) closes with 1012 service_restart, and pages come back too', async () => {
    await server.stop();
    await until(alice, `t.client.getStatus() == 'CONNECTING'`);
    expect(await alice.evaluate(() => t.closes.slice(-1))).toEqual([1012]);
    // queueWhileOffline: a message written during the outage waits and goes out after reconnecting
    // (to carol herself, so no other page's reconnect timing matters).
    await until(carol, `t.client.getStatus() == 'CONNECTING'`);
    await carol.evaluate(() => {
      (window as any).queued = t.outcome(t.client.sendToUser({ type: 'WRITTEN_OFFLINE' }, 'carol-x'));
    });
    await server.restart();
    expect(await carol.evaluate(() => (window as any).queued)).toEqual({
      ok: true,
      value: { recipients: { 'carol-x': { online: true, clients: 1 } } },
    });
    await until(carol, `t.of('WRITTEN_OFFLINE').length == 1`);
    await until(alice, 't.client.isConnected()', 20_000);
    await until(bob, 't.client.isConnected()', 20_000);
    // and the watch came back once more
    await alice.evaluate(() => t.setHidden(true));
    await until(bob, `t.lastStatusOf('alice-x') == 'AWAY'`);
  });
});
