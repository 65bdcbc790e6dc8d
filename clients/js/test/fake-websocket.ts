// A WebSocket double driven by the test: it records what the client sends and lets the test play the server.
import type { WebSocketLike } from '../src/types';

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error('no socket was opened');
    return ws;
  }
  static reset(): void {
    FakeWebSocket.instances = [];
  }

  readyState = 0;
  sent: string[] = [];
  closedWith: { code?: number; reason?: string } | undefined;
  onopen: ((ev: any) => any) | null = null;
  onmessage: ((ev: { data: unknown }) => any) | null = null;
  onclose: ((ev: { code: number; reason: string }) => any) | null = null;
  onerror: ((ev: any) => any) | null = null;

  constructor(
    public url: string,
    public protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState != 1) throw new Error('InvalidStateError: not open');
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    if (this.readyState < 2) this.readyState = 2;
  }

  // --- the server's side ---
  open(): this {
    this.readyState = 1;
    this.onopen?.({});
    return this;
  }
  receive(frame: unknown): void {
    this.onmessage?.({ data: typeof frame == 'string' ? frame : JSON.stringify(frame) });
  }
  welcome(extra: Record<string, unknown> = {}): void {
    this.receive({
      kind: 'welcome',
      protocol: 1,
      client: 'node-1',
      user: 'alice',
      node: 'node',
      heartbeatMs: 25_000,
      heartbeatTimeoutMs: 10_000,
      limits: { maxMessageBytes: 65536, maxRecipients: 100, maxIdBytes: 128, maxRequestsPerSec: 1000 },
      ...extra,
    });
  }
  /** The connection ends with a close frame from the server (or a drop, with 1006). */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  frames(): any[] {
    return this.sent.map((text) => JSON.parse(text));
  }
  lastFrame(): any {
    return this.frames()[this.sent.length - 1];
  }
  framesOfKind(kind: string): any[] {
    return this.frames().filter((f) => f.kind == kind);
  }
}

export const presenceOf = (user: string, status: string, version: number, extra: Record<string, unknown> = {}) => ({
  user,
  status,
  previousStatus: null,
  onlineSinceTs: status == 'OFFLINE' ? null : 1795630000000,
  awaySinceTs: status == 'AWAY' ? 1795630500000 : null,
  lastOnlineTs: null,
  activeClient: status == 'OFFLINE' ? null : `${user}-c1`,
  clients: status == 'OFFLINE' ? 0 : 1,
  version,
  ...extra,
});
