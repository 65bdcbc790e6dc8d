// Topics: join/leave/publish, and joins re-established after reconnects.
import { describe, expect, it, vi } from 'vitest';
import { FakeWebSocket } from './fake-websocket';
import { connected, rejection, tick, useFakeClock } from './helpers';

useFakeClock();

async function reconnect(ws: FakeWebSocket) {
  ws.serverClose(1006);
  await tick(250);
  const next = FakeWebSocket.last();
  next.open().welcome();
  return next;
}

describe('topics', () => {
  it('join resolves with the member count and is repeated after every reconnect', async () => {
    const { client, ws } = await connected();
    const done = client.join('product:1234');
    const frame = ws.lastFrame();
    expect(frame).toEqual({ kind: 'join', id: frame.id, topic: 'product:1234' });
    ws.receive({ kind: 'ack', id: frame.id, result: { topic: 'product:1234', members: 3 } });
    await expect(done).resolves.toEqual({ topic: 'product:1234', members: 3 });
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('join').map((f) => f.topic)).toEqual(['product:1234']);
    const ws3 = await reconnect(ws2);
    expect(ws3.framesOfKind('join').map((f) => f.topic)).toEqual(['product:1234']);
  });

  it('leave sends leave and stops the re-joins', async () => {
    const { client, ws } = await connected();
    const joined = client.join('room:1');
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { topic: 'room:1', members: 1 } });
    await joined;
    const left = client.leave('room:1');
    const frame = ws.lastFrame();
    expect(frame).toEqual({ kind: 'leave', id: frame.id, topic: 'room:1' });
    ws.receive({ kind: 'ack', id: frame.id, result: { topic: 'room:1', left: true } });
    await expect(left).resolves.toEqual({ topic: 'room:1', left: true });
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('join')).toEqual([]);
  });

  it('leave right after join (before its ack) wins', async () => {
    const { client, ws } = await connected();
    const joined = client.join('room:1');
    const joinFrame = ws.lastFrame();
    const left = client.leave('room:1');
    const leaveFrame = ws.lastFrame();
    ws.receive({ kind: 'ack', id: joinFrame.id, result: { topic: 'room:1', members: 1 } });
    ws.receive({ kind: 'ack', id: leaveFrame.id, result: { topic: 'room:1', left: true } });
    await Promise.all([joined, left]);
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('join')).toEqual([]);
  });

  it('leave while disconnected resolves without a frame and the topic is not re-joined', async () => {
    const { client, ws } = await connected();
    const joined = client.join('room:1');
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { topic: 'room:1', members: 1 } });
    await joined;
    ws.serverClose(1006);
    await expect(client.leave('room:1')).resolves.toEqual({ topic: 'room:1', left: true });
    await expect(client.leave('room:2')).resolves.toEqual({ topic: 'room:2', left: false });
    await tick(250);
    const ws2 = FakeWebSocket.last().open();
    ws2.welcome();
    expect(ws2.sent).toEqual([]);
  });

  it('a refused join is not re-joined; a join that succeeds on retry() is', async () => {
    const { client, ws } = await connected();
    const bad = client.join('room 42');
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 1300, name: 'invalid_topic', message: 'bad', retryable: false });
    expect((await rejection(bad)).error.code).toBe(1300);
    const limited = client.join('room:7');
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 1006, name: 'rate_limited', message: 'later', retryable: true });
    const again = (await rejection(limited)).retry();
    ws.receive({ kind: 'ack', id: ws.lastFrame().id, result: { topic: 'room:7', members: 2 } });
    await again;
    const ws2 = await reconnect(ws);
    expect(ws2.framesOfKind('join').map((f) => f.topic)).toEqual(['room:7']);
  });

  it('publish sends echo explicitly and resolves with the delivered count', async () => {
    const { client, ws } = await connected();
    const quiet = client.publish('room:42', { type: 'TYPING' });
    const q = ws.lastFrame();
    expect(q).toEqual({ kind: 'publish', id: q.id, topic: 'room:42', action: { type: 'TYPING' }, echo: false });
    const loud = client.publish('product:1234', { type: 'PRICE', value: 12.5 }, { echo: true });
    expect(ws.lastFrame()).toMatchObject({ kind: 'publish', echo: true });
    ws.receive({ kind: 'ack', id: q.id, result: { delivered: 4 } });
    await expect(quiet).resolves.toEqual({ delivered: 4 });
    ws.receive({ kind: 'error', id: ws.lastFrame().id, code: 1100, name: 'forbidden', message: 'no', retryable: false });
    const e = await rejection(loud);
    expect(e.action).toEqual({ type: 'PRICE', value: 12.5 });
  });

  it('topic messages reach subscribers with metadata.topic', async () => {
    const { client, ws } = await connected();
    const cb = vi.fn();
    client.subscribe('PRICE', cb);
    const from = { user: 'bob', client: 'node-21' };
    ws.receive({ kind: 'message', id: 'q7-3', via: 'topic', topic: 'product:1234', from, action: { type: 'PRICE', value: 12.5 } });
    expect(cb).toHaveBeenCalledWith({ type: 'PRICE', value: 12.5 }, { id: 'q7-3', via: 'topic', topic: 'product:1234', from });
  });
});
