// The original API in real Chromium against the real server: broadcast, sendToUser, sendToServer,
// retries, heartbeats.
import type { Browser, BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, openTab, sleep, until } from './browser';
import { startServer, type RunningServer } from './server';

declare const t: any; // the page's harness (page/harness.js), inside page.evaluate

let browser: Browser;
let server: RunningServer;
const contexts: BrowserContext[] = [];
const newContext = async () => {
  const c = await browser.newContext();
  contexts.push(c);
  return c;
};

beforeAll(async () => {
  // A short heartbeat, so the tests also show the client answering pings (the server closes
  // silent clients after interval + timeout) and not mistaking a quiet server for a dead one.
  server = await startServer({
    args: ['--handler', 'echo'],
    env: { PUBSUB_SERVER__HEARTBEAT_INTERVAL_MS: '1000', PUBSUB_SERVER__HEARTBEAT_TIMEOUT_MS: '1500' },
  });
  browser = await launchBrowser();
});

afterAll(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
  await server?.stop();
});

describe('messaging in a real browser', () => {
  it('two pages of the same user: broadcast reaches the other page and not the sender', async () => {
    const ctx = await newContext();
    const a1 = await openTab(ctx, server.origin, 'alice-b');
    const a2 = await openTab(ctx, server.origin, 'alice-b');
    const sent = await a1.evaluate(() => t.outcome(t.client.broadcast({ type: 'SHORTLIST_UPDATE', state: { items: [3, 7] } })));
    expect(sent).toEqual({ ok: true, value: { delivered: 1 } });
    await until(a2, `t.of('SHORTLIST_UPDATE').length == 1`);
    const [got] = await a2.evaluate(() => t.of('SHORTLIST_UPDATE'));
    const senderClient = await a1.evaluate(() => t.client.getClientId());
    expect(got.action).toEqual({ type: 'SHORTLIST_UPDATE', state: { items: [3, 7] } });
    expect(got.meta).toMatchObject({ via: 'broadcast', from: { user: 'alice-b', client: senderClient } });
    expect(got.meta.id).toMatch(/^[A-Za-z0-9]{10}-\d+$/);
    await sleep(300);
    expect(await a1.evaluate(() => t.of('SHORTLIST_UPDATE').length)).toBe(0);
  });

  it('two users: sendToUser both ways, with per-recipient results', async () => {
    const alice = await newContext();
    const bob = await newContext();
    const a1 = await openTab(alice, server.origin, 'alice-u');
    const a2 = await openTab(alice, server.origin, 'alice-u');
    const b = await openTab(bob, server.origin, 'bob-u');

    const toBob = await a1.evaluate(() => t.outcome(t.client.sendToUser({ type: 'CHAT_MESSAGE', message: 'Hey Bob' }, 'bob-u')));
    expect(toBob).toEqual({ ok: true, value: { recipients: { 'bob-u': { online: true, clients: 1 } } } });
    await until(b, `t.of('CHAT_MESSAGE').length == 1`);
    const [atBob] = await b.evaluate(() => t.of('CHAT_MESSAGE'));
    expect(atBob.action).toEqual({ type: 'CHAT_MESSAGE', message: 'Hey Bob' });
    expect(atBob.meta).toMatchObject({ via: 'user', from: { user: 'alice-u' } });

    const toAlice = await b.evaluate(() =>
      t.outcome(t.client.sendToUser({ type: 'CHAT_MESSAGE', message: 'Hi both tabs' }, ['alice-u', 'nobody-u'])),
    );
    expect(toAlice).toEqual({
      ok: true,
      value: { recipients: { 'alice-u': { online: true, clients: 2 }, 'nobody-u': { online: false, clients: 0 } } },
    });
    for (const page of [a1, a2]) {
      await until(page, `t.of('CHAT_MESSAGE').length == 1`);
      const [got] = await page.evaluate(() => t.of('CHAT_MESSAGE'));
      expect(got.meta).toMatchObject({ via: 'user', from: { user: 'bob-u' } });
    }
  });

  it('sendToServer resolves with the handler response (echo handler)', async () => {
    const page = await openTab(await newContext(), server.origin, 'carol-s');
    const answer = await page.evaluate(() => t.outcome(t.client.sendToServer({ type: 'GET_STATS', n: 1 })));
    expect(answer).toEqual({ ok: true, value: { type: 'GET_STATS', n: 1 } });
  });

  it('sendToServer rejects with { error, action, retry } from a server without handler (2000)', async () => {
    const bare = await startServer();
    try {
      const page = await openTab(await newContext(), bare.origin, 'carol-s');
      const answer = await page.evaluate(() => t.outcome(t.client.sendToServer({ type: 'GET_STATS' })));
      expect(answer).toMatchObject({
        ok: false,
        isError: true,
        hasRetry: true,
        action: { type: 'GET_STATS' },
        error: { code: 2000, name: 'no_handler', retryable: false },
      });
      // A remembered non-retryable outcome: retry() gets the same answer.
      const again = await page.evaluate(() => t.outcome((window as any).lastError.retry()));
      expect(again).toMatchObject({ ok: false, error: { code: 2000 } });
    } finally {
      await bare.stop();
    }
  });

  it('reports its acks, so the server keeps almost nothing in its retry window (received, 2.2.1)', async () => {
    const own = await startServer({ args: ['--handler', 'echo'] });
    try {
      const page = await openTab(await newContext(), own.origin, 'gina-w');
      const answers = await page.evaluate(async () => {
        const out = [];
        for (let i = 0; i < 100; i++) out.push(await t.client.sendToServer({ type: 'SAVE', i }));
        return out;
      });
      expect(answers.map((a: any) => a.i)).toEqual([...Array(100).keys()]);
      const stats = await (await fetch(`${own.origin}/stats`)).json();
      // Kept without reports: 100 outcomes of ~140 budgeted bytes each. Reported: only the last.
      expect(stats.retryWindowBytes).toBeGreaterThan(0);
      expect(stats.retryWindowBytes).toBeLessThan(400);
    } finally {
      await own.stop();
    }
  });

  it('a reserved type is refused by the server with 1004', async () => {
    const page = await openTab(await newContext(), server.origin, 'carol-r');
    const answer = await page.evaluate(() => t.outcome(t.client.broadcast({ type: '@pubsub/STATUS_CHANGE' })));
    expect(answer).toMatchObject({ ok: false, error: { code: 1004, name: 'reserved_type' } });
  });

  it('retry() reuses the message id: the recipient gets the message once', async () => {
    const dave = await openTab(await newContext(), server.origin, 'dave-r');
    const page = await openTab(await newContext(), server.origin, 'erin-r');
    // Made while the client is closed: rejected at once with 3003, nothing sent.
    const early = await page.evaluate(() => {
      t.client.close();
      return t.outcome(t.client.sendToUser({ type: 'ONCE' }, 'dave-r'));
    });
    expect(early).toMatchObject({ ok: false, error: { code: 3003, name: 'client_closed' }, hasRetry: true });
    await page.evaluate(() => t.client.connect());
    await until(page, 't.client.isConnected()');
    const first = await page.evaluate(() => t.outcome((window as any).lastError.retry()));
    const second = await page.evaluate(() => t.outcome((window as any).lastError.retry()));
    expect(first).toEqual({ ok: true, value: { recipients: { 'dave-r': { online: true, clients: 1 } } } });
    // Once acked, the id is never sent again (it was reported `received`): the client answers.
    expect(second).toEqual(first);
    await until(dave, `t.of('ONCE').length >= 1`);
    await sleep(300);
    expect(await dave.evaluate(() => t.of('ONCE').length)).toBe(1);
  });

  it('stays connected across heartbeats (pings answered, quiet server not taken for dead)', async () => {
    const page = await openTab(await newContext(), server.origin, 'frank-h');
    await sleep(6000); // six heartbeat intervals, more than twice the 2.5 s either side tolerates
    expect(await page.evaluate(() => t.statuses)).toEqual(['ONLINE']);
    expect(await page.evaluate(() => t.client.isConnected())).toBe(true);
  });

  it('a frozen server (SIGSTOP) is detected by its silence; the page reconnects when it thaws', async () => {
    const page = await openTab(await newContext(), server.origin, 'gina-f');
    const frozenAt = Date.now();
    server.signal('SIGSTOP'); // the TCP connection stays up; only the frames stop
    try {
      await until(page, `t.client.getStatus() == 'CONNECTING'`, 10_000);
      // heartbeatMs + heartbeatTimeoutMs = 2.5 s after the last frame (a ping ≤ 1 s before the freeze)
      expect(Date.now() - frozenAt).toBeGreaterThanOrEqual(1400);
      expect(await page.evaluate(() => t.closes)).toEqual([1006]);
    } finally {
      server.signal('SIGCONT');
    }
    await until(page, 't.client.isConnected()', 20_000);
  });
});
