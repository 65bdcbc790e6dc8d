// Wire format of protocol v1 (docs/protocol.md section 2): one JSON object per text message.
import { messageTooBig } from './errors';
import type { Action, ErrorInfo, Meta, Presence, UserId } from './types';

export const SUBPROTOCOL = 'pubsub.v1.json';
/** Types with this prefix are system events; the server refuses them in requests. */
export const SYSTEM_PREFIX = '@pubsub/';

/**
 * A frame that expects an answer (2.1). Only these may report earlier acks in `received`
 * (2.2.1): the server ignores it on `activity`, `ping` and `pong`, so they have no such field.
 */
export type RequestFrame = (
  | { kind: 'broadcast'; id: string; action: Action }
  | { kind: 'sendToUser'; id: string; to: UserId | UserId[]; action: Action }
  | { kind: 'sendToServer'; id: string; action: Action }
  | { kind: 'publish'; id: string; topic: string; action: Action; echo: boolean }
  | { kind: 'join' | 'leave'; id: string; topic: string }
  | { kind: 'presence' | 'watch' | 'unwatch'; id: string; users: UserId[] }
) & { received?: string[] };

export type ClientFrame =
  | RequestFrame
  | { kind: 'activity'; id?: string; active: boolean }
  | { kind: 'ping'; id?: string }
  | { kind: 'pong' };

/** The server refuses a `received` longer than this (1002 invalid_field) and forgets nothing in it. */
export const MAX_RECEIVED = 64;

/**
 * Whether the server remembers this request's outcome for its retry window (2.2), which is what
 * reporting its ack lets it forget. The other requests are processed again on a resend, so
 * their ids would only take room in `received`.
 */
export const remembered = (frame: RequestFrame): boolean =>
  frame.kind == 'broadcast' || frame.kind == 'sendToUser' || frame.kind == 'sendToServer' || frame.kind == 'publish';

export interface Welcome {
  kind: 'welcome';
  protocol: number;
  client: string;
  user: string;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  limits?: { maxRecipients?: number; [limit: string]: number | undefined };
  presence?: Presence;
}

export type ServerFrame =
  | Welcome
  | ({ kind: 'message'; action: Action } & Meta)
  | { kind: 'event'; action: Action }
  | { kind: 'ack'; id: string; result: unknown }
  | ({ kind: 'error'; id?: string } & ErrorInfo)
  | { kind: 'ping' | 'pong'; id?: string }
  // Newer servers may send kinds this client does not know; they must be ignored.
  | { kind: string; [field: string]: unknown };

export const broadcast = (id: string, action: Action): RequestFrame => ({ kind: 'broadcast', id, action });

// `to` is passed as given: the server normalises numbers and duplicates (vectors
// "sendToUser to one user by number" and "with duplicates"), so the client need not.
export const sendToUser = (id: string, to: UserId | UserId[], action: Action): RequestFrame => ({
  kind: 'sendToUser',
  id,
  to,
  action,
});

export const sendToServer = (id: string, action: Action): RequestFrame => ({ kind: 'sendToServer', id, action });

export const publish = (id: string, topic: string, action: Action, echo = false): RequestFrame => ({
  kind: 'publish',
  id,
  topic,
  action,
  echo,
});

export const topicFrame = (kind: 'join' | 'leave', id: string, topic: string): RequestFrame => ({ kind, id, topic });

export const usersFrame = (kind: 'presence' | 'watch' | 'unwatch', id: string, users: UserId[]): RequestFrame => ({
  kind,
  id,
  users,
});

export const activity = (active: boolean, id?: string): ClientFrame =>
  id ? { kind: 'activity', id, active } : { kind: 'activity', active };

export const ping = (id?: string): ClientFrame => (id ? { kind: 'ping', id } : { kind: 'ping' });

export const pong = (): ClientFrame => ({ kind: 'pong' });

export const encode = (frame: ClientFrame): string => JSON.stringify(frame);

/**
 * The error for a frame larger than the server's `maxMessageBytes` (which would close the whole
 * connection with 1009), or null. UTF-8 takes at most 3 bytes per UTF-16 unit, so only frames
 * near the limit are measured exactly.
 */
export function oversize(frame: ClientFrame, limit: number | undefined): ErrorInfo | null {
  if (!limit) return null;
  const text = encode(frame);
  if (text.length * 3 <= limit) return null;
  const bytes = new TextEncoder().encode(text).length;
  return bytes > limit ? messageTooBig(bytes, limit) : null;
}

/** A server frame, or undefined for anything that is not a JSON object with a string `kind`. */
export function decode(data: unknown): ServerFrame | undefined {
  if (typeof data != 'string') return; // pubsub.v1.json never sends binary messages
  try {
    const frame = JSON.parse(data);
    if (frame && typeof frame == 'object' && typeof frame.kind == 'string') return frame;
  } catch {
    // A broken frame must not take the client down; there is nothing to answer.
  }
}

/** True for a JSON object with a non-empty string `type`, the only thing delivered to subscribers. */
export const isAction = (value: unknown): value is Action =>
  !!value && typeof value == 'object' && typeof (value as Action).type == 'string' && !!(value as Action).type;
