// Reconnecting: backoff with full jitter and a cap, close-code advice, heartbeat, token refresh.
import { describe, expect, it, vi } from 'vitest';
import { BASE_MS, CAP_MS, backoffDelay, shouldStop } from '../src/backoff';
import { FakeWebSocket } from './fake-websocket';
import { connected, makeClient, tick, useFakeClock } from './helpers';

useFakeClock();

describe('backoffDelay', () => {
  it('is uniform in [0, min(cap, base·2^attempt)) (full jitter)', () => {
    expect(BASE_MS).toBe(250);
    expect(CAP_MS).toBe(30_000);
    const top = (attempt: number) => backoffDelay(attempt, BASE_MS, CAP_MS, () => 0.999999);
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(top)).toEqual([249, 499, 999, 1999, 3999, 7999, 15999, 29999]);
    expect(top(8)).toBe(29999);
    expect(top(5000)).toBe(29999); // 2^5000 is Infinity: still capped
    expect(backoffDelay(6, BASE_MS, CAP_MS, () => 0)).toBe(0);
    expect(backoffDelay(3, BASE_MS, CAP_MS, () => 0.5)).toBe(1000);
  });

  it('spreads delays over the whole window', () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(3));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(2000);
    // Every quarter of the window is used: a fixed or "equal jitter" delay would fail this.
    for (let q = 0; q < 4; q++) expect(delays.some((d) => d >= q * 500 && d < (q + 1) * 500)).toBe(true);
  });
});

describe('close-code advice (protocol section 7)', () => {
  const stop = [1000, 4400, 4401, 4403, 4429, 4450, 4499];
  const reconnect = [1001, 1002, 1005, 1006, 1007, 1009, 1011, 1012, 1013, 4000, 4399, 4500, 4504, 4507];
  it.each(stop)('%i means stop', (code) => expect(shouldStop(code)).toBe(true));
  it.each(reconnect)('%i means reconnect', (code) => expect(shouldStop(code)).toBe(false));

  it.each(stop)('after close %i the client stays OFFLINE and opens no new socket', async (code) => {
    const { client, ws } = await connected();
    ws.serverClose(code, 'why');
    expect(client.getStatus()).toBe('OFFLINE');
    await tick(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it.each(reconnect)('after close %i the client reconnects by itself', async (code) => {
    const { client, ws } = await connected();
    ws.serverClose(code);
    expect(client.getStatus()).toBe('CONNECTING');
    await tick(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last().open().welcome();
    expect(client.getStatus()).toBe('ONLINE');
  });
});

describe('reconnecting', () => {
  it('waits a jittered, doubling, capped delay between failed attempts and starts over after a welcome', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.999999);
    makeClient();
    await tick();
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      FakeWebSocket.last().serverClose(1006);
      const before = FakeWebSocket.instances.length;
      let waited = 0;
      while (FakeWebSocket.instances.length == before) {
        await tick(1);
        waited++;
      }
      waits.push(waited);
    }
    expect(waits).toEqual([249, 499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
    FakeWebSocket.last().open().welcome();
    FakeWebSocket.last().serverClose(1006);
    await tick(248);
    expect(FakeWebSocket.instances).toHaveLength(11);
    await tick(1);
    expect(FakeWebSocket.instances).toHaveLength(12);
  });

  it('gives up after maxAttempts failures in a row', async () => {
    const client = makeClient({ reconnect: { maxAttempts: 2, baseMs: 10 } });
    await tick();
    FakeWebSocket.last().serverClose(1006);
    await tick(10);
    FakeWebSocket.last().serverClose(1006);
    await tick(20);
    expect(client.getStatus()).toBe('CONNECTING');
    FakeWebSocket.last().serverClose(1006);
    expect(client.getStatus()).toBe('OFFLINE');
    await tick(60_000);
    expect(FakeWebSocket.instances).toHaveLength(3);
  });

  it('reconnect: false never reconnects', async () => {
    const { client, ws } = await connected({ reconnect: false });
    ws.serverClose(1012);
    expect(client.getStatus()).toBe('OFFLINE');
    await tick(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('a token source gets one fresh try after a stop code, then stops', async () => {
    let n = 0;
    const client = makeClient({ userId: undefined, token: () => `t${++n}` });
    await tick();
    FakeWebSocket.last().open().serverClose(4401, 'token expired');
    expect(client.getStatus()).toBe('CONNECTING');
    await tick(0);
    expect(FakeWebSocket.last().url).toContain('token=t2');
    FakeWebSocket.last().open().serverClose(4401, 'token expired');
    expect(client.getStatus()).toBe('OFFLINE');
    await tick(60_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('the fresh-token try is earned again by a successful connection', async () => {
    let n = 0;
    const client = makeClient({ userId: undefined, token: () => `t${++n}` });
    await tick();
    FakeWebSocket.last().open().serverClose(4401);
    await tick(0);
    FakeWebSocket.last().open().welcome();
    FakeWebSocket.last().serverClose(4401);
    expect(client.getStatus()).toBe('CONNECTING');
    await tick(0);
    expect(FakeWebSocket.instances).toHaveLength(3);
  });

  it('a kick (1000) is not retried even with a token source', async () => {
    const client = makeClient({ userId: undefined, token: async () => 't' });
    await tick();
    FakeWebSocket.last().open().welcome();
    FakeWebSocket.last().serverClose(1000);
    expect(client.getStatus()).toBe('OFFLINE');
  });

  it('a failing token source counts as a failed attempt and is retried with backoff', async () => {
    // Full jitter can draw a delay of 0 ms (one draw in 250 at the first
    // attempt), which would retry within the first tick: draw half the window.
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    let calls = 0;
    const client = makeClient({
      userId: undefined,
      token: async () => {
        if (++calls == 1) throw new Error('auth service down');
        return 'ok';
      },
    });
    await tick();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(client.getStatus()).toBe('CONNECTING');
    await tick(250);
    expect(FakeWebSocket.last().url).toContain('token=ok');
  });
});

describe('heartbeat', () => {
  it('answers the server ping with pong', async () => {
    const { ws } = await connected();
    ws.receive({ kind: 'ping' });
    expect(ws.lastFrame()).toEqual({ kind: 'pong' });
  });

  it('treats heartbeatMs + heartbeatTimeoutMs of silence as a dead connection', async () => {
    const { client, ws } = await connected({}, { heartbeatMs: 1000, heartbeatTimeoutMs: 500 });
    await tick(1400);
    ws.receive({ kind: 'ping' }); // any frame restarts the clock
    await tick(1400);
    expect(client.getStatus()).toBe('ONLINE');
    await tick(100);
    expect(client.getStatus()).toBe('CONNECTING');
    expect(ws.closedWith).toBeDefined();
    await tick(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('gives up on a socket that opens but never says welcome (connectTimeout)', async () => {
    const client = makeClient({ connectTimeout: 2000 });
    await tick();
    FakeWebSocket.last().open();
    await tick(2000);
    expect(client.getStatus()).toBe('CONNECTING');
    await tick(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('ignores events of a socket it already gave up on', async () => {
    const { client, ws } = await connected({}, { heartbeatMs: 100, heartbeatTimeoutMs: 100 });
    await tick(200);
    ws.receive({ kind: 'message', id: 'x', via: 'user', action: { type: 'LATE' } });
    ws.serverClose(1006);
    await tick(250);
    FakeWebSocket.last().open().welcome();
    expect(client.getStatus()).toBe('ONLINE');
    expect(FakeWebSocket.instances).toHaveLength(2);
  });
});
