// The codec against the shared protocol vectors (docs/protocol-vectors.json), read from the repository
// at test time so a change to the protocol shows up here.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as codec from '../src/codec';

const vectors = JSON.parse(readFileSync(new URL('../../../docs/protocol-vectors.json', import.meta.url), 'utf8'));

/** Builds a frame the way the client does, from the parts a caller provides. */
function build(frame: any): codec.ClientFrame {
  switch (frame.kind) {
    case 'broadcast':
      return codec.broadcast(frame.id, frame.action);
    case 'sendToUser':
      return codec.sendToUser(frame.id, frame.to, frame.action);
    case 'sendToServer':
      return codec.sendToServer(frame.id, frame.action);
    case 'publish':
      return codec.publish(frame.id, frame.topic, frame.action, frame.echo);
    case 'join':
    case 'leave':
      return codec.topicFrame(frame.kind, frame.id, frame.topic);
    case 'presence':
    case 'watch':
    case 'unwatch':
      return codec.usersFrame(frame.kind, frame.id, frame.users);
    case 'activity':
      return codec.activity(frame.active, frame.id);
    case 'ping':
      return codec.ping(frame.id);
    case 'pong':
      return codec.pong();
  }
  throw new Error(`no encoder for a canonical ${frame.kind} frame`);
}

describe('protocol vectors', () => {
  it('are version 1 over pubsub.v1.json', () => {
    expect(vectors.protocol).toBe(1);
    expect(vectors.subprotocol).toBe(codec.SUBPROTOCOL);
  });

  const canonical = vectors.clientToServer.filter((v: any) => v.canonical);
  it('have canonical client frames', () => expect(canonical.length).toBeGreaterThan(10));

  for (const v of canonical) {
    it(`encodes "${v.name}" exactly as the canonical frame`, () => {
      expect(JSON.parse(codec.encode(build(v.frame)))).toEqual(v.frame);
    });
  }

  it('publish without echo says so explicitly (the server defaults to false too)', () => {
    expect(codec.publish('q-1', 'room:42', { type: 'TYPING' })).toEqual({
      kind: 'publish',
      id: 'q-1',
      topic: 'room:42',
      action: { type: 'TYPING' },
      echo: false,
    });
  });

  for (const v of vectors.serverToClient) {
    it(`decodes server frame "${v.name}"`, () => {
      const text = JSON.stringify(v.frame);
      expect(codec.decode(text)).toEqual(v.frame);
    });
  }
});

describe('decode', () => {
  it.each([
    ['invalid JSON', '{"kind":'],
    ['an array', '["welcome"]'],
    ['a string', '"welcome"'],
    ['null', 'null'],
    ['a number', '7'],
    ['an object without kind', '{"id":"x"}'],
    ['a numeric kind', '{"kind":5}'],
  ])('ignores %s', (_name, text) => {
    expect(codec.decode(text)).toBeUndefined();
  });

  it('ignores binary messages', () => {
    expect(codec.decode(new ArrayBuffer(4))).toBeUndefined();
  });
});

describe('isAction', () => {
  it('accepts objects with a non-empty string type only', () => {
    expect(codec.isAction({ type: 'X', a: 1 })).toBe(true);
    expect(codec.isAction({ type: '' })).toBe(false);
    expect(codec.isAction({ type: 5 })).toBe(false);
    expect(codec.isAction(['X'])).toBe(false);
    expect(codec.isAction(null)).toBe(false);
  });
});
