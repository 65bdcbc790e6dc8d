// Topics from real pages: join, publish with and without echo, leave.
import type { Browser, BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, openTab, sleep, until } from './browser';
import { startServer, type RunningServer } from './server';

declare const t: any; // the page's harness (page/harness.js), inside page.evaluate

let browser: Browser;
let server: RunningServer;
let context: BrowserContext;

beforeAll(async () => {
  server = await startServer();
  browser = await launchBrowser();
  context = await browser.newContext();
});

afterAll(async () => {
  await context?.close();
  await browser?.close();
  await server?.stop();
});

describe('topics in a real browser', () => {
  it('join, publish (echo off and on), publish without joining, leave', async () => {
    const alice = await openTab(context, server.origin, 'alice-t');
    const bob = await openTab(context, server.origin, 'bob-t');
    const carol = await openTab(context, server.origin, 'carol-t');
    const topic = 'product:1234';

    expect(await alice.evaluate((tp) => t.outcome(t.client.join(tp)), topic)).toEqual({ ok: true, value: { topic, members: 1 } });
    expect(await bob.evaluate((tp) => t.outcome(t.client.join(tp)), topic)).toEqual({ ok: true, value: { topic, members: 2 } });

    const quiet = await alice.evaluate((tp) => t.outcome(t.client.publish(tp, { type: 'PRICE', value: 12.5 })), topic);
    expect(quiet).toEqual({ ok: true, value: { delivered: 1 } });
    await until(bob, `t.of('PRICE').length == 1`);
    const [got] = await bob.evaluate(() => t.of('PRICE'));
    expect(got.action).toEqual({ type: 'PRICE', value: 12.5 });
    expect(got.meta).toMatchObject({ via: 'topic', topic, from: { user: 'alice-t' } });

    const loud = await alice.evaluate((tp) => t.outcome(t.client.publish(tp, { type: 'PRICE', value: 13 }, { echo: true })), topic);
    expect(loud).toEqual({ ok: true, value: { delivered: 2 } });
    await until(alice, `t.of('PRICE').length == 1`);
    expect(await alice.evaluate(() => t.of('PRICE')[0].action.value)).toBe(13);

    const outsider = await carol.evaluate((tp) => t.outcome(t.client.publish(tp, { type: 'PRICE', value: 14 })), topic);
    expect(outsider).toEqual({ ok: true, value: { delivered: 2 } });
    await until(bob, `t.of('PRICE').length == 3`);

    expect(await bob.evaluate((tp) => t.outcome(t.client.leave(tp)), topic)).toEqual({ ok: true, value: { topic, left: true } });
    await alice.evaluate((tp) => t.client.publish(tp, { type: 'PRICE', value: 15 }, { echo: true }), topic);
    await until(alice, `t.of('PRICE').length == 3`);
    await sleep(300);
    expect(await bob.evaluate(() => t.of('PRICE').length)).toBe(3);
  });

  it('an invalid topic name is refused with 1300', async () => {
    const page = await openTab(context, server.origin, 'dave-t');
    const answer = await page.evaluate(() => t.outcome(t.client.join('room 42')));
    expect(answer).toMatchObject({ ok: false, error: { code: 1300, name: 'invalid_topic', retryable: false } });
  });
});
