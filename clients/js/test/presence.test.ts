// Other users' presence: queries, watches, stale events, and watches re-established after reconnects.
import { describe, expect, it, vi } from 'vitest';
import { FakeWebSocket, presenceOf } from './fake-websocket';
import { connected, rejection, tick, useFakeClock } from './helpers';

useFakeClock();

const change = (user: string, status: string, version: number) => ({
  kind: 'event',
  action: { type: '@pubsub/PRESENCE_CHANGE', ...presenceOf(user, status, version) },
});

async function watching(users: string[], welcome: Record<string, unknown> = {}) {
  const { client, ws } = await connected({}, welcome);
  const cb = vi.fn();
  const events = vi.fn();
  client.subscribe('@pubsub/PRESENCE_CHANGE', events);
  const done = client.watch(users, cb);
  const frame = ws.lastFrame();
  const snapshot = Object.fromEntries(users.map((u) => [u, presenceOf(u, 'ONLINE', 5)]));
  ws.receive({ kind: 'ack', id: frame.id, result: { users: snapshot } });
  await expect(done).resolves.toEqual(snapshot);
  return { client, ws, cb, events, frame };
}

async function reconnect(ws: FakeWebSocket, welcome: Record<string, unknown> = {}) {
  ws.serverClose(1012);
  await tick(250);
  const next = FakeWebSocket.last();
  next.open().welcome(welcome);
  return next;
}

describe('presence()', () => {
  it('asks once and resolves with the users map', async () => {
    const { client, ws } = await connected();
    const done = client.presence(['bob', 44]);
    const frame = ws.lastFrame();
    expect(frame).toEqual({ kind: 'presence', id: frame.id, users: ['bob', '44'] });
    const users = { bob: presenceOf('bob', 'AWAY', 7), '44': presenceOf('44', 'OFFLINE', 0) };
    ws.receive({ kind: 'ack', id: frame.id, result: { users } });
    await expect(done).resolves.toEqual(users);
  });

  it('retry() of a failed query resolves the same way', async () => {
    const { client, ws } = await connected();
    const done = client.presence('bob');
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 1006, name: 'rate_limited', message: 'slow down', retryable: true });
    const again = (await rejection(done)).retry();
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { users: { bob: presenceOf('bob', 'ONLINE', 1) } } });
    await expect(again).resolves.toEqual({ bob: presenceOf('bob', 'ONLINE', 1) });
  });
});

describe('watch()', () => {
  it('sends watch, resolves with the snapshot and calls back with each user', async () => {
    const { frame, cb } = await watching(['bob', 'carol']);
    expect(frame).toEqual({ kind: 'watch', id: frame.id, users: ['bob', 'carol'] });
    expect(cb.mock.calls.map(([p]) => p.user)).toEqual(['bob', 'carol']);
  });

  it('a second watch of a watched user still gets its first presence, and both get changes', async () => {
    const { client, ws, cb } = await watching(['bob']);
    const second = vi.fn();
    const done = client.watch('bob', second);
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { users: { bob: presenceOf('bob', 'ONLINE', 5) } } });
    await done;
    expect(cb).toHaveBeenCalledTimes(1); // nothing new for the first one
    expect(second.mock.calls.map(([p]) => p.version)).toEqual([5]);
    ws.receive(change('bob', 'AWAY', 6));
    expect(cb).toHaveBeenCalledTimes(2);
    expect(second).toHaveBeenCalledTimes(2);
  });

  it('delivers newer PRESENCE_CHANGE events and drops stale and duplicate ones', async () => {
    const { ws, cb, events } = await watching(['bob']);
    cb.mockClear();
    ws.receive(change('bob', 'AWAY', 6));
    ws.receive(change('bob', 'AWAY', 6)); // duplicate
    ws.receive(change('bob', 'ONLINE', 4)); // older than what is known
    ws.receive(change('bob', 'OFFLINE', 8));
    expect(cb.mock.calls.map(([p]) => [p.status, p.version])).toEqual([
      ['AWAY', 6],
      ['OFFLINE', 8],
    ]);
    expect(cb.mock.calls[0]![0]).not.toHaveProperty('type'); // the callback gets the presence itself
    expect(events.mock.calls.map(([a, meta]) => [a.type, a.status, meta.via])).toEqual([
      ['@pubsub/PRESENCE_CHANGE', 'AWAY', 'event'],
      ['@pubsub/PRESENCE_CHANGE', 'OFFLINE', 'event'],
    ]);
  });

  it('ignores events about users it does not watch', async () => {
    const { ws, cb, events } = await watching(['bob']);
    cb.mockClear();
    ws.receive(change('mallory', 'AWAY', 9));
    expect(cb).not.toHaveBeenCalled();
    expect(events).not.toHaveBeenCalled();
  });

  it('watches again after a reconnect and reports what changed meanwhile', async () => {
    const { ws, cb, events } = await watching(['bob', 'carol']);
    cb.mockClear();
    const ws2 = await reconnect(ws);
    const rewatch = ws2.lastFrame();
    expect(rewatch).toEqual({ kind: 'watch', id: rewatch.id, users: ['bob', 'carol'] });
    ws2.receive({
      kind: 'ack',
      id: rewatch.id,
      result: { users: { bob: presenceOf('bob', 'ONLINE', 5), carol: presenceOf('carol', 'OFFLINE', 9) } },
    });
    // bob is unchanged (same version): nothing. carol went OFFLINE while we were away.
    expect(cb.mock.calls.map(([p]) => [p.user, p.status])).toEqual([['carol', 'OFFLINE']]);
    expect(events.mock.calls.map(([a]) => [a.user, a.status])).toEqual([['carol', 'OFFLINE']]);
  });

  it('after a server restart (versions start again) the new snapshot is the baseline', async () => {
    const { ws, cb } = await watching(['bob']);
    cb.mockClear();
    const ws2 = await reconnect(ws);
    ws2.receive({ kind: 'ack', id: ws2.lastFrame().id, result: { users: { bob: presenceOf('bob', 'ONLINE', 2) } } });
    ws2.receive(change('bob', 'AWAY', 3));
    expect(cb.mock.calls.map(([p]) => [p.status, p.version])).toEqual([
      ['ONLINE', 2],
      ['AWAY', 3],
    ]);
  });

  it('splits a re-watch into requests of at most maxRecipients users', async () => {
    const { ws } = await watching(['a', 'b', 'c'], { limits: { maxRecipients: 2 } });
    const ws2 = await reconnect(ws, { limits: { maxRecipients: 2 } });
    expect(ws2.framesOfKind('watch').map((f) => f.users)).toEqual([['a', 'b'], ['c']]);
  });

  it('a refused watch registers nothing and is not repeated after reconnects', async () => {
    const { client, ws } = await connected();
    const cb = vi.fn();
    const done = client.watch('secret', cb);
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 1100, name: 'forbidden', message: 'no', retryable: false });
    expect((await rejection(done)).error.code).toBe(1100);
    ws.receive(change('secret', 'AWAY', 3));
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('watch')).toEqual([]);
    expect(cb).not.toHaveBeenCalled();
  });
});

describe('unwatch()', () => {
  it('sends unwatch; later events and reconnects leave the user alone', async () => {
    const { client, ws, cb } = await watching(['bob', 'carol']);
    cb.mockClear();
    const done = client.unwatch('carol');
    const frame = ws.lastFrame();
    expect(frame).toEqual({ kind: 'unwatch', id: frame.id, users: ['carol'] });
    ws.receive({ kind: 'ack', id: frame.id, result: { watching: 1 } });
    await expect(done).resolves.toEqual({ watching: 1 });
    ws.receive(change('carol', 'AWAY', 7));
    expect(cb).not.toHaveBeenCalled();
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('watch').map((f) => f.users)).toEqual([['bob']]);
  });

  it('while disconnected it only forgets (the watch ended with the connection)', async () => {
    const { client, ws } = await watching(['bob', 'carol']);
    ws.serverClose(1006);
    await expect(client.unwatch(['bob'])).resolves.toEqual({ watching: 1 });
    await tick(250);
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    expect(ws2.frames()).toEqual([{ kind: 'watch', id: expect.any(String), users: ['carol'] }]);
  });
});
