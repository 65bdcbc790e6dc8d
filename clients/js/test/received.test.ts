// `received` (docs/protocol.md 2.2.1): request frames tell the server which acks arrived, so it
// can forget those outcomes early.
import { describe, expect, it } from 'vitest';
import { FakeWebSocket } from './fake-websocket';
import { connected, makeClient, rejection, tick, useFakeClock } from './helpers';

useFakeClock();

const ack = (ws: FakeWebSocket, frame: { id: string }, result: unknown = { delivered: 0 }) =>
  ws.receive({ kind: 'ack', id: frame.id, result });

/** Sends a broadcast, acks it and returns its id. */
async function acked(client: Awaited<ReturnType<typeof connected>>['client'], ws: FakeWebSocket): Promise<string> {
  const done = client.broadcast({ type: 'X' });
  const frame = ws.lastFrame();
  ack(ws, frame);
  await done;
  return frame.id;
}

describe('received', () => {
  it('the next request after an ack reports its id, and only that one', async () => {
    const { client, ws } = await connected();
    const a = await acked(client, ws);
    client.sendToServer({ type: 'B' }).catch(() => {});
    expect(ws.lastFrame()).toMatchObject({ kind: 'sendToServer', action: { type: 'B' }, received: [a] });
    client.publish('room:1', { type: 'C' }).catch(() => {});
    expect('received' in ws.lastFrame()).toBe(false);
  });

  it('with nothing to report the frame has no received key, byte for byte as before', async () => {
    const { client, ws } = await connected();
    client.broadcast({ type: 'A' }).catch(() => {});
    const { id } = ws.lastFrame();
    expect(ws.sent[0]).toBe(JSON.stringify({ kind: 'broadcast', id, action: { type: 'A' } }));
  });

  it('reports acks of every request the server remembers, in the order they arrived', async () => {
    const { client, ws } = await connected();
    const made = [
      client.broadcast({ type: 'A' }),
      client.sendToUser({ type: 'B' }, 'bob'),
      client.sendToServer({ type: 'C' }),
      client.publish('room:1', { type: 'D' }),
    ];
    const [a, b, c, d] = ws.frames();
    for (const f of [c, a, d, b]) ack(ws, f);
    await Promise.all(made);
    client.broadcast({ type: 'E' }).catch(() => {});
    expect(ws.lastFrame().received).toEqual([c.id, a.id, d.id, b.id]);
  });

  it('errors are never reported, even non-retryable ones; an id is reported once a retry of it is acked', async () => {
    const { client, ws } = await connected();
    const refused = client.sendToServer({ type: 'PAY' });
    const refusedFrame = ws.lastFrame();
    ws.receive({ kind: 'error', id: refusedFrame.id, code: 2001, name: 'handler_error', message: 'no', retryable: false });
    const slow = client.sendToServer({ type: 'SLOW' });
    const slowFrame = ws.lastFrame();
    ws.receive({ kind: 'error', id: slowFrame.id, code: 2002, name: 'handler_timeout', message: 'slow', retryable: true });
    await rejection(refused);
    const e = await rejection(slow);
    client.broadcast({ type: 'NEXT' }).catch(() => {});
    expect('received' in ws.lastFrame()).toBe(false);
    const again = e.retry();
    expect(ws.lastFrame()).toEqual(slowFrame);
    ack(ws, slowFrame, 'ok');
    await again;
    client.broadcast({ type: 'AFTER' }).catch(() => {});
    expect(ws.lastFrame().received).toEqual([slowFrame.id]);
  });

  it('a late ack after a timeout is not reported (the application may still retry)', async () => {
    const { client, ws } = await connected({ requestTimeout: 1000 });
    const done = client.sendToServer({ type: 'X' });
    const frame = ws.lastFrame();
    const failed = rejection(done);
    await tick(1000);
    expect((await failed).error.code).toBe(3001);
    ack(ws, frame, 'late');
    client.broadcast({ type: 'NEXT' }).catch(() => {});
    expect('received' in ws.lastFrame()).toBe(false);
  });

  it('at most 64 ids per frame, oldest first; the rest go on the next frame', async () => {
    const { client, ws } = await connected();
    const made = Array.from({ length: 70 }, (_, i) => client.broadcast({ type: 'N', i }));
    const ids = ws.frames().map((f) => f.id);
    for (const f of ws.frames()) ack(ws, f);
    await Promise.all(made);
    client.broadcast({ type: 'FIRST' }).catch(() => {});
    const first = ws.lastFrame();
    client.broadcast({ type: 'SECOND' }).catch(() => {});
    const second = ws.lastFrame();
    client.broadcast({ type: 'THIRD' }).catch(() => {});
    expect(first.received).toEqual(ids.slice(0, 64));
    expect(second.received).toEqual(ids.slice(64));
    expect('received' in ws.lastFrame()).toBe(false);
  });

  it('activity, ping and pong never carry it; the next request does', async () => {
    const { client, ws } = await connected();
    const a = await acked(client, ws);
    client.setActive(false);
    ws.receive({ kind: 'ping' });
    expect(ws.framesOfKind('activity')).toEqual([{ kind: 'activity', active: false }]);
    expect(ws.framesOfKind('pong')).toEqual([{ kind: 'pong' }]);
    client.join('room:1').catch(() => {});
    expect(ws.lastFrame()).toMatchObject({ kind: 'join', received: [a] });
  });

  it('acks of join, leave, presence and watch are not reported (the server remembers none of them)', async () => {
    const { client, ws } = await connected();
    const made = [client.join('room:1'), client.leave('room:1'), client.presence('bob'), client.watch('carol')];
    const [join, leave, presence, watch] = ws.frames();
    ack(ws, join, { topic: 'room:1', members: 1 });
    ack(ws, leave, { topic: 'room:1', left: true });
    ack(ws, presence, { users: {} });
    ack(ws, watch, { users: {} });
    await Promise.all(made);
    client.broadcast({ type: 'X' }).catch(() => {});
    expect('received' in ws.lastFrame()).toBe(false);
  });

  it('a retry keeps its id and reports only what is new', async () => {
    const { client, ws } = await connected();
    const a = await acked(client, ws);
    const job = client.sendToServer({ type: 'JOB' });
    const first = ws.lastFrame();
    expect(first.received).toEqual([a]);
    ws.receive({ kind: 'error', id: first.id, code: 2003, name: 'internal_error', message: 'x', retryable: true });
    const e = await rejection(job);
    const b = await acked(client, ws);
    e.retry().catch(() => {});
    const { received, ...rest } = ws.lastFrame();
    const { received: _, ...original } = first;
    expect(rest).toEqual(original);
    expect(received).toEqual([b]);
  });

  it('an acked id is never sent again: retry() of an older failure returns the ack', async () => {
    const { client, ws } = await connected();
    const done = client.sendToUser({ type: 'HI' }, 'bob');
    const frame = ws.lastFrame();
    ws.receive({ kind: 'error', id: frame.id, code: 2003, name: 'internal_error', message: 'x', retryable: true });
    const e = await rejection(done);
    const again = e.retry();
    ack(ws, frame, { recipients: {} });
    await expect(again).resolves.toEqual({ recipients: {} });
    const sent = ws.sent.length;
    await expect(e.retry()).resolves.toEqual({ recipients: {} });
    expect(ws.sent.length).toBe(sent);
  });

  it('a queued frame reports at the moment it is written, on the new connection', async () => {
    const { client, ws } = await connected({ queueWhileOffline: true });
    const a = await acked(client, ws);
    ws.serverClose(1006);
    const b = client.broadcast({ type: 'B' });
    client.broadcast({ type: 'C' }).catch(() => {});
    await tick(250);
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    const [fb, fc] = ws2.frames();
    expect(fb).toMatchObject({ action: { type: 'B' }, received: [a] });
    expect('received' in fc).toBe(false);
    ack(ws2, fb);
    await b;
  });

  it('never makes a frame too big to send: the ids wait for a smaller frame', async () => {
    const limit = 1000;
    const { client, ws } = await connected({}, {
      limits: { maxMessageBytes: limit, maxRecipients: 100, maxIdBytes: 128, maxRequestsPerSec: 1000 },
    });
    const a = await acked(client, ws);
    // The next id has as many characters as `a` (counter 2 after 1).
    const next = a.replace(/\d+$/, '2');
    const bare = (text: string) => JSON.stringify({ kind: 'broadcast', id: next, action: { type: 'BIG', text } });
    const text = 'x'.repeat(limit - bare('').length);
    expect(bare(text).length).toBe(limit);
    client.broadcast({ type: 'BIG', text }).catch(() => {});
    expect(ws.lastFrame()).toEqual({ kind: 'broadcast', id: next, action: { type: 'BIG', text } });
    client.broadcast({ type: 'SMALL' }).catch(() => {});
    expect(ws.lastFrame().received).toEqual([a]);
    expect(client.isConnected()).toBe(true);
  });

  it('keeps at most 1024 ids waiting, dropping the oldest', async () => {
    const { client, ws } = await connected();
    const made = Array.from({ length: 1030 }, (_, i) => client.broadcast({ type: 'A', i }));
    const frames = ws.frames();
    for (const f of frames) ack(ws, f);
    await Promise.all(made);
    const reported: string[] = [];
    for (let i = 0; i < 17; i++) {
      client.broadcast({ type: 'B' }).catch(() => {});
      reported.push(...(ws.lastFrame().received ?? []));
    }
    expect(reported).toEqual(frames.slice(6).map((f) => f.id));
  });

  it('close() drops what was not reported yet', async () => {
    const { client, ws } = await connected({ queueWhileOffline: true });
    await acked(client, ws);
    client.close();
    client.connect();
    await tick();
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    client.broadcast({ type: 'X' }).catch(() => {});
    expect('received' in ws2.lastFrame()).toBe(false);
  });

  it('a frame that could not be written keeps the ids for the next one', async () => {
    const client = makeClient();
    await tick();
    const ws = FakeWebSocket.last().open();
    ws.welcome();
    const a = await acked(client, ws);
    ws.readyState = 3; // closing: the client has not been told yet
    await rejection(client.broadcast({ type: 'LOST' }));
    ws.readyState = 1;
    client.broadcast({ type: 'NEXT' }).catch(() => {});
    expect(ws.lastFrame()).toMatchObject({ action: { type: 'NEXT' }, received: [a] });
  });
});
