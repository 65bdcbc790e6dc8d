import { afterEach, beforeEach, vi } from 'vitest';
import createClient from '../src/index';
import type { Client, ClientOptions } from '../src/types';
import { FakeWebSocket } from './fake-websocket';

/** Fake timers for every test in the file, and no client left running between tests. */
export function useFakeClock(): void {
  beforeEach(() => {
    vi.useFakeTimers();
    FakeWebSocket.reset();
    made.length = 0;
  });
  afterEach(() => {
    for (const c of made) c.close();
    vi.clearAllTimers();
    vi.useRealTimers();
    vi.restoreAllMocks();
  });
}

const made: Client[] = [];

/** Lets the client's async connect step (token source) run. */
export const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

export function makeClient(options: Partial<ClientOptions> = {}): Client {
  const client = createClient({
    endPoint: 'ws://127.0.0.1:4001',
    userId: 'alice',
    WebSocket: FakeWebSocket,
    trackActivity: false,
    ...options,
  });
  made.push(client);
  return client;
}

/** A client that has received `welcome`. */
export async function connected(options: Partial<ClientOptions> = {}, welcome: Record<string, unknown> = {}) {
  const client = makeClient(options);
  await tick();
  const ws = FakeWebSocket.last().open();
  ws.welcome(welcome);
  return { client, ws };
}

/** The promise's rejection reason (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<any> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error('expected the promise to reject');
}
