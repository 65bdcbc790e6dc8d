/** A user id. Numbers are carried as their decimal string: user 44 and user "44" are the same. */
export type UserId = string | number;

/** The application's message: any JSON object with a non-empty string `type`. */
export interface Action {
  type: string;
  [field: string]: unknown;
}

/** What `getStatus()` returns: the user's presence while connected, CONNECTING or OFFLINE otherwise. */
export type Status = 'CONNECTING' | 'ONLINE' | 'AWAY' | 'OFFLINE';

/** A user's presence status as the server computes it from all of their clients. */
export type PresenceStatus = 'ONLINE' | 'AWAY' | 'OFFLINE';

/** A user's presence (protocol section 5). */
export interface Presence {
  user: string;
  status: PresenceStatus;
  previousStatus: PresenceStatus | null;
  onlineSinceTs: number | null;
  awaySinceTs: number | null;
  lastOnlineTs: number | null;
  activeClient: string | null;
  clients: number;
  /** Increases with every change; compare versions to drop stale news. */
  version: number;
}

/** How a delivered action reached this client: the second argument of every subscriber. */
export interface Meta {
  /** The sender's message id (absent for system events). */
  id?: string;
  /** `broadcast`, `user`, `topic` or `server` for messages; `event` for system events. */
  via: string;
  /** The sending user and client, stamped by the server (absent when the server sent it). */
  from?: { user: string; client: string };
  /** The topic, for messages published to a topic. */
  topic?: string;
}

export type Listener<A = any> = (action: A, meta: Meta) => void;

/** An error as the protocol describes it (section 8); codes 3000–3999 are raised by this client. */
export interface ErrorInfo {
  code: number;
  name: string;
  message: string;
  retryable: boolean;
  data?: unknown;
}

/**
 * The local status event, delivered to `onStatusChange`, `subscribe('STATUS_CHANGE')` and
 * `subscribe('@pubsub/STATUS_CHANGE')` each time `getStatus()` changes.
 */
export interface StatusChange extends Partial<Omit<Presence, 'status' | 'previousStatus'>> {
  type: '@pubsub/STATUS_CHANGE';
  status: Status;
  previousStatus: Status;
  /** The close code, when the change was caused by the connection closing. */
  code?: number;
  /** The close reason sent by the server, if any. */
  reason?: string;
}

export interface ReconnectOptions {
  /** Base of the exponential backoff, ms (default 250). */
  baseMs?: number;
  /** Longest delay between two attempts, ms (default 30000). */
  capMs?: number;
  /** Give up (status OFFLINE) after this many failed attempts in a row (default: never). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** `wss://host:443`, `ws://127.0.0.1:4001/ws`, or a path relative to the page (`/ws`). A URL without a path gets `/ws`. */
  endPoint: string;
  /** The user id, sent as `?userId=` (the server's dev auth mode). */
  userId?: UserId;
  /** A token sent as `?token=`, or a function returning one; the function is called before every (re)connect. */
  token?: string | (() => string | null | undefined | Promise<string | null | undefined>);
  /** Reject a request that has no answer this long after it was sent, ms (default 35000; 0 = never). */
  requestTimeout?: number;
  /** `false` disables reconnecting; an object tunes the backoff. */
  reconnect?: boolean | ReconnectOptions;
  /** Keep requests made while disconnected until the connection is back, instead of rejecting them with 3002 (default false). */
  queueWhileOffline?: boolean;
  /** Without input for this long a visible tab counts as idle, ms (default 60000; 0 = never idle). */
  idleTimeout?: number;
  /** Report this tab's activity from Page Visibility, focus and input (default true). */
  trackActivity?: boolean;
  /** Longest wait for the server's `welcome` after opening a socket, ms (default 10000). */
  connectTimeout?: number;
  /** WebSocket implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: unknown }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface SendToUserResult {
  recipients: Record<string, { online: boolean; clients: number }>;
}

export interface Client {
  /** Deliver to this user's other tabs (never back to this one). */
  broadcast(action: Action): Promise<{ delivered: number }>;
  /** Deliver to every client of each recipient; resolves with a result per distinct recipient. */
  sendToUser(action: Action, to: UserId | UserId[]): Promise<SendToUserResult>;
  /** Pass to the server's handler; resolves with its response. */
  sendToServer<R = unknown>(action: Action): Promise<R>;
  /** Listen to actions and system events of a type (`'*'` for all); returns the unsubscribe function. */
  subscribe<A = any>(type: string, callback: Listener<A>): () => void;
  /** The same as `subscribe('STATUS_CHANGE', callback)`. */
  onStatusChange(callback: Listener<StatusChange>): () => void;
  getStatus(): Status;
  /** True while ONLINE or AWAY. */
  isConnected(): boolean;
  /** This user's presence as last reported by the server (null while disconnected). */
  getPresence(): Presence | null;
  /** This connection's client id (null while disconnected). */
  getClientId(): string | null;

  /** Join a topic; re-joined automatically after reconnects until `leave`. */
  join(topic: string): Promise<{ topic: string; members: number }>;
  leave(topic: string): Promise<{ topic: string; left: boolean }>;
  /** Deliver to every client joined to the topic (this one too if `echo`). */
  publish(topic: string, action: Action, options?: { echo?: boolean }): Promise<{ delivered: number }>;

  /** The current presence of users, once. */
  presence(users: UserId | UserId[]): Promise<Record<string, Presence>>;
  /**
   * Follow users' presence: resolves with their current presence; `callback` gets each newer
   * presence (the first one, every change, and what changed while a reconnect was under way).
   * Watches are re-established after reconnects.
   */
  watch(users: UserId | UserId[], callback?: (presence: Presence) => void): Promise<Record<string, Presence>>;
  unwatch(users: UserId | UserId[]): Promise<{ watching: number }>;

  /** Override activity detection (`undefined` goes back to automatic). */
  setActive(active: boolean | undefined): void;
  /** Connect again after `close()` or after the server told the client to stop. */
  connect(): void;
  /** Close the connection for good: pending requests reject with 3003, status becomes OFFLINE. */
  close(): void;
}
