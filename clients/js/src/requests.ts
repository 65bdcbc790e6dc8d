// Request tracking (docs/protocol.md 2.1–2.2.1): ids, settle-exactly-once, timeouts, retries, the
// offline queue, and telling the server which acks arrived.
import { CLIENT_CLOSED, DISCONNECTED, NOT_CONNECTED, PubSubError, REQUEST_TIMEOUT, errorInfo } from './errors';
import { MAX_RECEIVED, remembered, type ClientFrame, type RequestFrame } from './codec';
import type { Action, ErrorInfo } from './types';

export interface RequestOptions {
  /** Writes a frame to the socket if there is a usable connection; false otherwise. */
  transmit(frame: ClientFrame): boolean;
  timeoutMs: number;
  /** For a request that cannot be sent now: null to queue it, or the error to reject it with. */
  whenOffline(): ErrorInfo | null;
  /** The error to reject a frame with because it is too large to send, or null. */
  oversize(frame: ClientFrame): ErrorInfo | null;
}

/** What every attempt with one id shares. */
interface Line {
  /**
   * The attempt that was acked, once one is: what a later retry() returns. Its id gets reported,
   * and the server takes a resend of a reported id for a new request.
   */
  acked?: Promise<any>;
}

interface Pending {
  id: string;
  frame: RequestFrame;
  line: Line;
  action: Action | undefined;
  done: ((result: any) => unknown) | undefined;
  promise: Promise<any>;
  resolve(value: unknown): void;
  reject(reason: unknown): void;
  sent?: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

const ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A random prefix per client instance: ids must be unique per *user* for the retry window, and
 * two tabs of one user each count from 1, so the prefix is what keeps them apart.
 */
export function randomPrefix(length = 10): string {
  const bytes = new Uint8Array(length);
  const c = globalThis.crypto;
  if (c && c.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < length; i++) bytes[i] = Math.random() * 256;
  let out = '';
  for (const b of bytes) out += ID_CHARS[b % 62];
  return out;
}

/** Most acked ids kept waiting to be reported. */
export const MAX_UNREPORTED = 1024;

export function createRequests(options: RequestOptions, prefix = randomPrefix()) {
  let counter = 0;
  // Both queued (not yet sent) and in-flight requests, in the order they were made, so the
  // queue drains in order after a reconnect.
  const pending = new Map<string, Pending>();
  // Acked ids not yet reported in a `received`, oldest first. Bounded: an application that gets a
  // burst of acks and then stops sending must not grow it; the oldest have left the server's
  // window (a few hundred outcomes per user) long before they would be reported.
  const unreported: string[] = [];

  const nextId = (): string => `${prefix}-${++counter}`;

  const settle = (p: Pending, result: unknown, error?: ErrorInfo): void => {
    // A late ack after a timeout, or a second outcome for one id, finds nothing here: exactly once.
    if (pending.get(p.id) != p) return;
    pending.delete(p.id);
    clearTimeout(p.timer);
    if (!error) {
      // Only acks: after an error the application may still retry() with this id.
      if (remembered(p.frame)) {
        if (unreported.push(p.id) > MAX_UNREPORTED) unreported.shift();
        p.line.acked = p.promise;
      }
      // An ack whose result does not have the expected shape must not throw into the socket handler.
      try {
        return p.resolve(p.done ? p.done(result) : result);
      } catch (e) {
        return p.reject(e);
      }
    }
    const retry = () => p.line.acked || attempt(p.id, p.frame, p.action, p.done, p.line);
    p.reject(new PubSubError(error, p.action, retry));
  };

  const send = (p: Pending): boolean => {
    // Added as the frame is written rather than stored in it: a queued frame reports what arrived
    // while it waited, and a retry keeps its id without reporting anything twice.
    const received = unreported.slice(0, MAX_RECEIVED);
    const reporting = received.length ? { ...p.frame, received } : p.frame;
    // A report must not make a frame too big to send (the server would close the connection):
    // the ids wait for a smaller one.
    const frame = reporting != p.frame && options.oversize(reporting) ? p.frame : reporting;
    if (!options.transmit(frame)) return false;
    if (frame != p.frame) unreported.splice(0, received.length);
    p.sent = true;
    if (options.timeoutMs > 0) p.timer = setTimeout(() => settle(p, undefined, REQUEST_TIMEOUT), options.timeoutMs);
    return true;
  };

  function attempt<R>(
    id: string,
    frame: RequestFrame,
    action?: Action,
    done?: (result: any) => R,
    line: Line = {},
  ): Promise<R> {
    // retry() while an attempt with this id is still open joins it rather than racing it.
    const open = pending.get(id);
    if (open) return open.promise;
    const p = { id, frame, line, action, done } as Pending;
    p.promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    pending.set(id, p);
    const tooBig = options.oversize(frame);
    if (tooBig) {
      settle(p, undefined, tooBig);
      return p.promise;
    }
    const offline = !send(p) && options.whenOffline();
    if (offline) settle(p, undefined, offline);
    return p.promise;
  }

  return {
    nextId,

    /**
     * Sends `frame` (whose `id` is already set) and settles on its answer. `done` maps the ack's
     * result and runs on every success, including a later `retry()`, so side effects of a
     * request (remembering a joined topic) follow the request, not the first call.
     */
    request: <R = unknown>(frame: RequestFrame, action?: Action, done?: (result: any) => R) =>
      attempt(frame.id, frame, action, done),

    /** Routes an `ack` or `error` frame with an id; anything else is ignored. */
    answer(frame: { kind: string; id?: string; result?: unknown } & Partial<ErrorInfo>): void {
      const p = frame.id != null ? pending.get(frame.id) : undefined;
      if (!p) return;
      if (frame.kind == 'ack') settle(p, frame.result);
      else settle(p, undefined, errorInfo(frame as ErrorInfo));
    },

    /** The connection is usable again: send what waited, in order. */
    flush(): void {
      for (const p of [...pending.values()]) if (!p.sent) send(p);
    },

    /**
     * The connection is gone. What was sent can no longer be answered (3000, retryable: the
     * retry window makes a retry safe). What was never sent stays queued, unless `stopped`:
     * then nothing will send it and it fails too.
     */
    disconnected(stopped: boolean): void {
      for (const p of [...pending.values()]) {
        if (p.sent) settle(p, undefined, DISCONNECTED);
        else if (stopped) settle(p, undefined, NOT_CONNECTED);
      }
    },

    /** The application closed the client. Unreported acks are dropped: reporting is best effort. */
    closed(): void {
      for (const p of [...pending.values()]) settle(p, undefined, CLIENT_CLOSED);
      unreported.length = 0;
    },
  };
}
