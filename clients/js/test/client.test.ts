// The original API over a fake socket: sending, settling, retrying, subscribing, status.
import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import createClientDefault, { PubSubError, createClient } from '../src/index';
import { FakeWebSocket, presenceOf } from './fake-websocket';
import { connected, makeClient, rejection, tick, useFakeClock } from './helpers';

const vectors = JSON.parse(readFileSync(new URL('../../../docs/protocol-vectors.json', import.meta.url), 'utf8'));
const ID = /^[A-Za-z0-9]{10}-\d+$/;

useFakeClock();

describe('exports', () => {
  it('createClient is the default export and a named export', () => {
    expect(createClientDefault).toBe(createClient);
  });
});

describe('connecting', () => {
  it.each([
    ['ws://127.0.0.1:4001', 'alice', 'ws://127.0.0.1:4001/ws?userId=alice'],
    ['wss://pubsub.example.com:443', 44, 'wss://pubsub.example.com/ws?userId=44'],
    ['ws://127.0.0.1:4001/', 'bob', 'ws://127.0.0.1:4001/ws?userId=bob'],
    ['ws://127.0.0.1:4001/custom/path?app=1', 'bob', 'ws://127.0.0.1:4001/custom/path?app=1&userId=bob'],
    ['https://example.com', 'a b', 'wss://example.com/ws?userId=a+b'],
    ['http://example.com:8080/pubsub', 'x', 'ws://example.com:8080/pubsub?userId=x'],
  ])('endPoint %s, user %s → %s', async (endPoint, userId, url) => {
    makeClient({ endPoint, userId });
    await tick();
    expect(FakeWebSocket.last().url).toBe(url);
  });

  it('throws at once for an endPoint that is not a URL', () => {
    expect(() => createClient({ endPoint: 'ws://[oops', userId: 'a', WebSocket: FakeWebSocket })).toThrow();
  });

  it('a WebSocket constructor that refuses the URL stops the client (OFFLINE)', async () => {
    const statuses: string[] = [];
    const client = makeClient({
      WebSocket: class {
        constructor() {
          throw new Error('SecurityError');
        }
      } as any,
    });
    client.onStatusChange((e) => statuses.push(`${e.status}:${e.reason}`));
    await tick(60_000);
    expect(statuses).toEqual(['OFFLINE:Error: SecurityError']);
  });

  it('offers the pubsub.v1.json subprotocol', async () => {
    makeClient();
    await tick();
    expect(FakeWebSocket.last().protocols).toBe('pubsub.v1.json');
  });

  it('passes a token, and calls a token function again on every reconnect', async () => {
    let n = 0;
    const token = vi.fn(async () => `t${++n}`);
    makeClient({ token, userId: undefined });
    await tick();
    expect(FakeWebSocket.last().url).toBe('ws://127.0.0.1:4001/ws?token=t1');
    FakeWebSocket.last().open().serverClose(1006);
    await tick(250);
    expect(FakeWebSocket.last().url).toBe('ws://127.0.0.1:4001/ws?token=t2');
    expect(token).toHaveBeenCalledTimes(2);
  });

  it('starts CONNECTING and is ONLINE after welcome (no presence in welcome)', async () => {
    const client = makeClient();
    expect(client.getStatus()).toBe('CONNECTING');
    expect(client.isConnected()).toBe(false);
    await tick();
    FakeWebSocket.last().open().welcome();
    expect(client.getStatus()).toBe('ONLINE');
    expect(client.isConnected()).toBe(true);
    expect(client.getClientId()).toBe('node-1');
  });

  it('takes its status from welcome.presence', async () => {
    const { client } = await connected({}, { presence: presenceOf('alice', 'AWAY', 3) });
    expect(client.getStatus()).toBe('AWAY');
    expect(client.isConnected()).toBe(true);
    expect(client.getPresence()).toMatchObject({ user: 'alice', status: 'AWAY', version: 3 });
  });
});

describe('sending', () => {
  it('broadcast sends the canonical frame with a prefix-counter id and resolves with the ack', async () => {
    const { client, ws } = await connected();
    const canonical = vectors.clientToServer.find((v: any) => v.name == 'broadcast').frame;
    const done = client.broadcast(canonical.action);
    const sent = ws.lastFrame();
    expect(sent.id).toMatch(ID);
    expect(sent).toEqual({ ...canonical, id: sent.id });
    ws.receive({ kind: 'ack', id: sent.id, result: { delivered: 2 } });
    await expect(done).resolves.toEqual({ delivered: 2 });
  });

  it('ids count up within a client and two clients use different prefixes', async () => {
    const a = await connected();
    a.client.broadcast({ type: 'X' }).catch(() => {});
    a.client.broadcast({ type: 'X' }).catch(() => {});
    const b = await connected();
    b.client.broadcast({ type: 'X' }).catch(() => {});
    const [first, second] = a.ws.frames().map((f) => f.id.split('-'));
    const [other] = b.ws.frames().map((f) => f.id.split('-'));
    expect(first![0]).toBe(second![0]);
    expect(Number(second![1])).toBe(Number(first![1]) + 1);
    expect(other![0]).not.toBe(first![0]);
  });

  it('sendToUser resolves with the per-recipient result', async () => {
    const { client, ws } = await connected();
    const done = client.sendToUser({ type: 'CHAT_MESSAGE', message: 'Hey dudes!' }, [44, 12]);
    const sent = ws.lastFrame();
    expect(sent).toMatchObject({ kind: 'sendToUser', to: [44, 12], action: { type: 'CHAT_MESSAGE' } });
    const result = { recipients: { '44': { online: true, clients: 2 }, '12': { online: false, clients: 0 } } };
    ws.receive({ kind: 'ack', id: sent.id, result });
    await expect(done).resolves.toEqual(result);
  });

  it('sendToServer resolves with the handler response, null included', async () => {
    const { client, ws } = await connected();
    const stats = client.sendToServer({ type: 'GET_STATS' });
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { users: 3 } });
    await expect(stats).resolves.toEqual({ users: 3 });
    const nothing = client.sendToServer({ type: 'DO_IT' });
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: null });
    await expect(nothing).resolves.toBeNull();
  });

  it('answers may arrive in any order', async () => {
    const { client, ws } = await connected();
    const slow = client.sendToServer({ type: 'SLOW' });
    const fast = client.broadcast({ type: 'FAST' });
    const [s, f] = ws.frames();
    ws.receive({ kind: 'ack', id: f.id, result: { delivered: 0 } });
    await expect(fast).resolves.toEqual({ delivered: 0 });
    ws.receive({ kind: 'ack', id: s.id, result: 'done' });
    await expect(slow).resolves.toBe('done');
  });

  it('an error frame rejects with { error, action, retry } (an Error)', async () => {
    const { client, ws } = await connected();
    const action = { type: 'PAY', amount: 5 };
    const done = client.sendToServer(action);
    ws.receive({
      kind: 'error',
      id: ws.lastFrame().id,
      code: 2001,
      name: 'handler_error',
      message: 'insufficient funds',
      retryable: false,
      data: { balance: 3 },
    });
    const e = await rejection(done);
    expect(e).toBeInstanceOf(PubSubError);
    expect(e).toBeInstanceOf(Error);
    expect(e.error).toEqual({ code: 2001, name: 'handler_error', message: 'insufficient funds', retryable: false, data: { balance: 3 } });
    expect(e.action).toBe(action);
    expect(typeof e.retry).toBe('function');
    const { error, action: a, retry } = e; // the original package's destructuring still works
    expect([error.code, a.type, typeof retry]).toEqual([2001, 'PAY', 'function']);
  });

  it('refuses a frame over maxMessageBytes locally with 3004 and stays connected', async () => {
    const { client, ws } = await connected({}, {
      limits: { maxMessageBytes: 1000, maxRecipients: 100, maxIdBytes: 128, maxRequestsPerSec: 1000 },
    });
    const before = ws.sent.length;
    const e = await rejection(client.broadcast({ type: 'BIG', text: 'é'.repeat(600) }));
    expect(e.error).toMatchObject({ code: 3004, name: 'message_too_big', retryable: false });
    expect(ws.sent.length).toBe(before);
    expect(client.isConnected()).toBe(true);
    client.broadcast({ type: 'SMALL', text: 'é'.repeat(100) }).catch(() => {}); // closed after the test
    expect(ws.lastFrame().action.type).toBe('SMALL');
  });

  it('settles exactly once: later answers for the same id are ignored', async () => {
    const { client, ws } = await connected();
    const done = client.broadcast({ type: 'X' });
    const id = ws.lastFrame().id;
    ws.receive({ kind: 'ack', id, result: { delivered: 1 } });
    ws.receive({ kind: 'error', id, code: 2003, name: 'internal_error', message: 'x', retryable: true });
    ws.receive({ kind: 'ack', id, result: { delivered: 9 } });
    await expect(done).resolves.toEqual({ delivered: 1 });
  });

  it('ignores answers to ids it never sent and errors without id', async () => {
    const { client, ws } = await connected();
    ws.receive({ kind: 'ack', id: 'nope-1', result: 1 });
    ws.receive({ kind: 'error', code: 1000, name: 'malformed_frame', message: 'x', retryable: false });
    expect(client.getStatus()).toBe('ONLINE');
  });

  it('retry() sends the same frame with the same id', async () => {
    const { client, ws } = await connected();
    const action = { type: 'SLOW_JOB' };
    const first = client.sendToServer(action);
    const sent = ws.lastFrame();
    ws.receive({ kind: 'error', id: sent.id, code: 2002, name: 'handler_timeout', message: 'slow', retryable: true });
    const e = await rejection(first);
    expect(e.error.retryable).toBe(true);
    const again = e.retry();
    expect(ws.lastFrame()).toEqual(sent);
    // Calling retry() while that attempt is open joins it instead of sending a third copy.
    expect(e.retry()).toBe(again);
    expect(ws.framesOfKind('sendToServer')).toHaveLength(2);
    ws.receive({ kind: 'ack', id: sent.id, result: 'ok' });
    await expect(again).resolves.toBe('ok');
  });

  it('a request in flight when the connection drops rejects with 3000 and retries with its id after reconnecting', async () => {
    const { client, ws } = await connected();
    const done = client.sendToUser({ type: 'HI' }, 'bob');
    const sent = ws.lastFrame();
    ws.serverClose(1006);
    const e = await rejection(done);
    expect(e.error).toMatchObject({ code: 3000, name: 'disconnected', retryable: true });
    await tick(250);
    const ws2 = FakeWebSocket.last();
    expect(ws2).not.toBe(ws);
    ws2.open().welcome();
    const again = e.retry();
    expect(ws2.lastFrame()).toEqual(sent);
    ws2.receive({ kind: 'ack', id: sent.id, result: { recipients: {} } });
    await expect(again).resolves.toEqual({ recipients: {} });
  });

  it('times out with 3001; a late ack is ignored; retry keeps the id', async () => {
    const { client, ws } = await connected({ requestTimeout: 1000 });
    const done = client.sendToServer({ type: 'X' });
    const sent = ws.lastFrame();
    await tick(999);
    let settled = false;
    done.then(
      () => (settled = true),
      () => (settled = true),
    );
    await tick(0);
    expect(settled).toBe(false);
    await tick(1);
    const e = await rejection(done);
    expect(e.error).toMatchObject({ code: 3001, name: 'request_timeout', retryable: true });
    ws.receive({ kind: 'ack', id: sent.id, result: 'late' }); // nothing pending: ignored
    const again = e.retry();
    expect(ws.lastFrame().id).toBe(sent.id);
    ws.receive({ kind: 'ack', id: sent.id, result: 'now' });
    await expect(again).resolves.toBe('now');
  });

  it('the default request timeout outlasts the server handler timeout (30 s)', async () => {
    const { client, ws } = await connected();
    const done = client.sendToServer({ type: 'X' });
    await tick(30_500);
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 2002, name: 'handler_timeout', message: 'm', retryable: true });
    expect((await rejection(done)).error.code).toBe(2002);
  });

  it('rejects with 3002 not_connected while disconnected, sending nothing', async () => {
    const client = makeClient();
    await tick();
    const ws = FakeWebSocket.last().open(); // open, but no welcome yet
    const e = await rejection(client.broadcast({ type: 'X' }));
    expect(e.error).toMatchObject({ code: 3002, name: 'not_connected', retryable: true });
    expect(ws.sent).toEqual([]);
    // retry() once connected sends it
    ws.welcome();
    const again = e.retry();
    expect(ws.lastFrame()).toMatchObject({ kind: 'broadcast', action: { type: 'X' } });
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { delivered: 0 } });
    await expect(again).resolves.toEqual({ delivered: 0 });
  });

  it('queueWhileOffline: requests wait for the connection and go out in order', async () => {
    const client = makeClient({ queueWhileOffline: true });
    const a = client.broadcast({ type: 'A' });
    const b = client.sendToServer({ type: 'B' });
    await tick(60_000); // queued requests have no timeout while they wait
    const ws = FakeWebSocket.last().open();
    expect(ws.sent).toEqual([]);
    ws.welcome();
    expect(ws.frames().map((f) => f.action.type)).toEqual(['A', 'B']);
    const [fa, fb] = ws.frames();
    ws.receive({ kind: 'ack', id: fb.id, result: 2 });
    ws.receive({ kind: 'ack', id: fa.id, result: { delivered: 0 } });
    await expect(a).resolves.toEqual({ delivered: 0 });
    await expect(b).resolves.toBe(2);
  });

  it('queueWhileOffline: what was sent still fails on a drop (3000), what was queued waits', async () => {
    const { client, ws } = await connected({ queueWhileOffline: true });
    const inFlight = client.broadcast({ type: 'SENT' });
    ws.serverClose(1012);
    const queued = client.broadcast({ type: 'QUEUED' });
    expect((await rejection(inFlight)).error.code).toBe(3000);
    await tick(250);
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    expect(ws2.lastFrame().action.type).toBe('QUEUED');
    ws2.receive({ kind: 'ack', id: ws2.lastFrame().id, result: { delivered: 1 } });
    await expect(queued).resolves.toEqual({ delivered: 1 });
  });

  it('queueWhileOffline: queued requests fail with 3002 when the server says stop', async () => {
    const client = makeClient({ queueWhileOffline: true });
    const queued = client.broadcast({ type: 'A' });
    await tick();
    FakeWebSocket.last().open().serverClose(4401, 'bad token');
    expect((await rejection(queued)).error.code).toBe(3002);
    expect(client.getStatus()).toBe('OFFLINE');
  });

  it('close() rejects everything with 3003, closes with 1000 and does not reconnect', async () => {
    const { client, ws } = await connected({ queueWhileOffline: true });
    const inFlight = client.broadcast({ type: 'A' });
    client.close();
    expect((await rejection(inFlight)).error).toMatchObject({ code: 3003, name: 'client_closed', retryable: false });
    // Nothing would ever send a request made after close(), so it is not queued.
    expect((await rejection(client.broadcast({ type: 'B' }))).error.code).toBe(3003);
    client.close(); // idempotent
    expect(ws.closedWith).toEqual({ code: 1000, reason: undefined });
    expect(client.getStatus()).toBe('OFFLINE');
    await tick(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('connect() after close() starts again', async () => {
    const { client } = await connected({ queueWhileOffline: true });
    client.close();
    client.connect();
    expect(client.getStatus()).toBe('CONNECTING');
    const queued = client.broadcast({ type: 'C' });
    await tick();
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    ws2.receive({ kind: 'ack', id: ws2.lastFrame().id, result: { delivered: 0 } });
    await expect(queued).resolves.toEqual({ delivered: 0 });
    expect(client.getStatus()).toBe('ONLINE');
  });
});

describe('subscribe', () => {
  it('delivers actions with their metadata; "*" receives everything; unsubscribe stops delivery', async () => {
    const { client, ws } = await connected();
    const got: any[] = [];
    const all: string[] = [];
    const off = client.subscribe('SHORTLIST_UPDATE', ({ state }, meta) => got.push([state, meta]));
    client.subscribe('*', (action) => all.push(action.type));
    const from = { user: 'alice', client: 'node-2' };
    ws.receive({ kind: 'message', id: 'p-1', via: 'broadcast', from, action: { type: 'SHORTLIST_UPDATE', state: [1] } });
    ws.receive({ kind: 'message', id: 'p-2', via: 'topic', topic: 'room:1', from, action: { type: 'OTHER' } });
    off();
    off();
    ws.receive({ kind: 'message', id: 'p-3', via: 'broadcast', from, action: { type: 'SHORTLIST_UPDATE', state: [2] } });
    expect(got).toEqual([[[1], { id: 'p-1', via: 'broadcast', from, topic: undefined }]]);
    expect(all).toEqual(['SHORTLIST_UPDATE', 'OTHER', 'SHORTLIST_UPDATE']);
  });

  it('the same function subscribed twice is two subscriptions', async () => {
    const { client, ws } = await connected();
    const cb = vi.fn();
    const off1 = client.subscribe('X', cb);
    client.subscribe('X', cb);
    off1();
    ws.receive({ kind: 'message', id: 'p-1', via: 'user', action: { type: 'X' } });
    expect(cb).toHaveBeenCalledTimes(1);
  });

  it('a throwing listener does not stop the others; its error is rethrown later', async () => {
    const { client, ws } = await connected();
    const after = vi.fn();
    client.subscribe('X', () => {
      throw new Error('app bug');
    });
    client.subscribe('X', after);
    ws.receive({ kind: 'message', id: 'p-1', via: 'server', action: { type: 'X' } });
    expect(after).toHaveBeenCalledTimes(1);
    expect(() => vi.runOnlyPendingTimers()).toThrow('app bug');
  });

  it('messages whose action is not an action are ignored; unknown via values are delivered', async () => {
    const { client, ws } = await connected();
    const cb = vi.fn();
    client.subscribe('*', cb);
    ws.receive({ kind: 'message', id: 'p-1', via: 'user', action: ['X'] });
    ws.receive({ kind: 'message', id: 'p-2', via: 'carrier-pigeon', action: { type: 'X' } });
    expect(cb).toHaveBeenCalledTimes(1);
    expect(cb.mock.calls[0]![1].via).toBe('carrier-pigeon');
  });

  it('understands every server frame of the vectors and ignores unknown kinds', async () => {
    const { client, ws } = await connected({}, { presence: presenceOf('alice', 'ONLINE', 1) });
    const seen: string[] = [];
    client.subscribe('*', (a) => seen.push(a.type));
    for (const v of vectors.serverToClient) ws.receive(v.frame);
    expect(seen).toEqual([
      'SHORTLIST_UPDATE',
      'CHAT_MESSAGE',
      'ANNOUNCEMENT',
      'PRICE',
      '@pubsub/STATUS_CHANGE', // as the client's own status event (ONLINE → AWAY)
      '@pubsub/CLIENT_CONNECTED',
      '@pubsub/CLIENT_DISCONNECTED',
      '@pubsub/ACTIVE_CLIENT_CHANGE',
      // PRESENCE_CHANGE for bob: nobody watches bob, so it is not news
    ]);
    expect(ws.framesOfKind('pong')).toEqual([{ kind: 'pong' }]); // the server's ping, answered
    expect(client.getStatus()).toBe('AWAY');
  });
});

describe('status', () => {
  it('onStatusChange, STATUS_CHANGE and @pubsub/STATUS_CHANGE all get { status, previousStatus }', async () => {
    const client = makeClient();
    const a: any[] = [];
    const b: any[] = [];
    const c: any[] = [];
    client.onStatusChange((e) => a.push([e.previousStatus, e.status]));
    client.subscribe('STATUS_CHANGE', ({ status, previousStatus }) => b.push([previousStatus, status]));
    client.subscribe('@pubsub/STATUS_CHANGE', (e, meta) => c.push([e.type, meta.via]));
    await tick();
    const ws = FakeWebSocket.last().open();
    ws.welcome({ presence: presenceOf('alice', 'ONLINE', 2) });
    ws.receive({ kind: 'event', action: { ...presenceOf('alice', 'AWAY', 3), previousStatus: 'ONLINE', type: '@pubsub/STATUS_CHANGE' } });
    ws.serverClose(1001);
    client.close();
    const expected = [
      ['CONNECTING', 'ONLINE'],
      ['ONLINE', 'AWAY'],
      ['AWAY', 'CONNECTING'],
      ['CONNECTING', 'OFFLINE'],
    ];
    expect(a).toEqual(expected);
    expect(b).toEqual(expected);
    expect(c).toEqual(expected.map(() => ['@pubsub/STATUS_CHANGE', 'event']));
  });

  it('the status event carries the server presence fields, and the close code when a close caused it', async () => {
    const { client, ws } = await connected({}, { presence: presenceOf('alice', 'ONLINE', 2) });
    const events: any[] = [];
    client.onStatusChange((e) => events.push(e));
    ws.receive({ kind: 'event', action: { ...presenceOf('alice', 'AWAY', 3), type: '@pubsub/STATUS_CHANGE' } });
    ws.serverClose(1012, 'restart');
    expect(events[0]).toMatchObject({ type: '@pubsub/STATUS_CHANGE', status: 'AWAY', previousStatus: 'ONLINE', user: 'alice', version: 3, awaySinceTs: 1795630500000 });
    expect(events[1]).toMatchObject({ status: 'CONNECTING', previousStatus: 'AWAY', code: 1012, reason: 'restart' });
  });

  it('ignores a stale STATUS_CHANGE (older version)', async () => {
    const { client, ws } = await connected({}, { presence: presenceOf('alice', 'ONLINE', 5) });
    ws.receive({ kind: 'event', action: { ...presenceOf('alice', 'AWAY', 4), type: '@pubsub/STATUS_CHANGE' } });
    expect(client.getStatus()).toBe('ONLINE');
  });

  it('own CLIENT_CONNECTED / ACTIVE_CLIENT_CHANGE events keep getPresence() current and reach subscribers', async () => {
    const { client, ws } = await connected({}, { presence: presenceOf('alice', 'ONLINE', 1) });
    const got = vi.fn();
    client.subscribe('@pubsub/CLIENT_CONNECTED', got);
    ws.receive({ kind: 'event', action: { type: '@pubsub/CLIENT_CONNECTED', user: 'alice', client: 'node-9', clients: 2, version: 2 } });
    ws.receive({ kind: 'event', action: { type: '@pubsub/ACTIVE_CLIENT_CHANGE', user: 'alice', activeClient: 'node-9', previousActiveClient: 'alice-c1', version: 3 } });
    expect(got).toHaveBeenCalledWith(expect.objectContaining({ client: 'node-9', clients: 2 }), { via: 'event' });
    expect(client.getPresence()).toEqual({ ...presenceOf('alice', 'ONLINE', 3), clients: 2, activeClient: 'node-9' });
  });
});
