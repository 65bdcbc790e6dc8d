// The socket's life: URL and credentials, the handshake, heartbeat, and reconnecting (protocol sections 1, 6, 7).
import { backoffDelay, shouldStop } from './backoff';
import { SUBPROTOCOL, decode, encode, pong, type ClientFrame, type ServerFrame } from './codec';
import type { ClientOptions, ReconnectOptions, UserId, WebSocketLike } from './types';

/** Close code reported when this side gives up on a silent connection (like a dropped one). */
export const ABNORMAL = 1006;
const DEFAULT_HEARTBEAT_MS = 25_000;
const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10_000;

export interface ConnectionOptions extends Pick<ClientOptions, 'endPoint' | 'userId' | 'token' | 'WebSocket'> {
  reconnect: ReconnectOptions | false;
  connectTimeout: number;
  /** Whether this tab is active right now, sent as `?active=false` when it is not. */
  isActive(): boolean;
  onFrame(frame: ServerFrame): void;
  /** The socket closed. `retrying`: a new attempt is scheduled; otherwise the connection has stopped. */
  onDown(code: number, reason: string, retrying: boolean): void;
}

/** The WebSocket URL for an endPoint: ws(s) scheme, `/ws` when no path is given, credentials in the query. */
export function socketUrl(
  endPoint: string,
  userId: UserId | undefined,
  token: string | null | undefined,
  active: boolean,
): string {
  // Relative endPoints resolve against the page, so `/ws` means "this origin".
  const url = new URL(endPoint, typeof location != 'undefined' ? location.href : undefined);
  url.protocol = url.protocol.replace(/^http/, 'ws');
  if (url.pathname == '/') url.pathname = '/ws';
  const query = url.searchParams;
  if (userId != null) query.set('userId', String(userId));
  if (token) query.set('token', token);
  if (!active) query.set('active', 'false');
  return url.href;
}

export function createConnection(o: ConnectionOptions) {
  // A malformed endPoint is a programming error: throw from createClient rather than retry forever.
  socketUrl(o.endPoint, undefined, undefined, true);
  let ws: WebSocketLike | undefined;
  let running = false;
  let attempt = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let deadTimer: ReturnType<typeof setTimeout> | undefined;
  let silenceMs = 0;
  // A stop code with a token source gets one more try with a fresh token (protocol section 7):
  // an expired token is the likeliest reason for 4401.
  let freshTokenTried = false;
  // Each socket gets a generation so events from a socket we already gave up on are ignored.
  let generation = 0;

  async function open(): Promise<void> {
    const mine = ++generation;
    retryTimer = undefined;
    let url: string;
    try {
      // Always awaited, even a plain string: the socket then opens after createClient returns,
      // so listeners subscribed right after it miss nothing, not even an immediate failure.
      const token = await (typeof o.token == 'function' ? o.token() : o.token);
      url = socketUrl(o.endPoint, o.userId, token, o.isActive());
    } catch (e) {
      // A failing token source is treated like a failed connection attempt: back off and try again.
      if (mine == generation && running) lost(ABNORMAL, String(e));
      return;
    }
    if (mine != generation || !running) return;
    let socket: WebSocketLike;
    try {
      socket = new (o.WebSocket || (WebSocket as any))(url, SUBPROTOCOL);
    } catch (e) {
      // Refused outright (a blocked port, ws: from an https page): retrying will not help.
      running = false;
      o.onDown(ABNORMAL, String(e), false);
      return;
    }
    ws = socket;
    arm(o.connectTimeout);
    socket.onmessage = (event) => {
      const frame = decode(event.data);
      arm(silenceMs || o.connectTimeout); // any frame is a sign of life
      if (!frame) return;
      if (frame.kind == 'ping') send(pong());
      if (frame.kind == 'welcome') {
        attempt = 0;
        freshTokenTried = false;
        const f = frame as { heartbeatMs?: number; heartbeatTimeoutMs?: number };
        silenceMs = (f.heartbeatMs || DEFAULT_HEARTBEAT_MS) + (f.heartbeatTimeoutMs || DEFAULT_HEARTBEAT_TIMEOUT_MS);
        arm(silenceMs);
      }
      o.onFrame(frame);
    };
    // No onerror: `error` is always followed by `close`, which carries the code.
    socket.onclose = (event) => {
      if (socket == ws) lost(event.code, event.reason);
    };
  }

  function arm(ms: number): void {
    clearTimeout(deadTimer);
    deadTimer = setTimeout(() => {
      // A dead TCP connection may take minutes to report `close`; stop waiting for it and
      // treat the silence like a dropped connection.
      const socket = ws;
      lost(ABNORMAL, 'no frame from the server within the heartbeat bound');
      try {
        socket && socket.close();
      } catch {
        // already closing
      }
    }, ms);
  }

  function lost(code: number, reason: string): void {
    clearTimeout(deadTimer);
    if (ws) ws.onmessage = ws.onclose = null;
    ws = undefined;
    silenceMs = 0;
    generation++;
    if (!running) return;
    const policy = o.reconnect;
    let delay: number | undefined;
    if (policy && !shouldStop(code)) {
      if (attempt < (policy.maxAttempts ?? Infinity)) delay = backoffDelay(attempt++, policy.baseMs, policy.capMs);
    } else if (policy && typeof o.token == 'function' && !freshTokenTried && code != 1000 && code != 4429) {
      freshTokenTried = true;
      delay = 0;
    }
    if (delay == null) running = false;
    else retryTimer = setTimeout(open, delay);
    o.onDown(code, reason, delay != null);
  }

  /** Writes a frame if the socket is open; false otherwise. */
  function send(frame: ClientFrame): boolean {
    if (!ws || ws.readyState != 1) return false;
    ws.send(encode(frame));
    return true;
  }

  // The network coming back is the best moment to reconnect; no need to sit out the backoff.
  const onOnline = (): void => {
    if (retryTimer) {
      clearTimeout(retryTimer);
      open();
    }
  };
  const hasWindow = typeof addEventListener == 'function';

  return {
    send,
    start(): void {
      if (running) return;
      running = true;
      attempt = 0;
      if (hasWindow) addEventListener('online', onOnline);
      open();
    },
    /** Closes on purpose; no onDown is reported. */
    stop(): void {
      running = false;
      clearTimeout(retryTimer);
      retryTimer = undefined;
      if (hasWindow) removeEventListener('online', onOnline);
      const socket = ws;
      lost(1000, '');
      if (socket) socket.close(1000);
    },
  };
}
