// createClient: wires the connection, requests, subscriptions, activity, presence and topics together,
// and keeps the client's status (what getStatus() reports).
import { trackActivity, type ActivityTracker } from './activity';
import * as codec from './codec';
import { createConnection } from './connection';
import { CLIENT_CLOSED, NOT_CONNECTED } from './errors';
import { createWatches } from './presence';
import { createRequests } from './requests';
import { createSubscriptions } from './subscriptions';
import { createTopics } from './topics';
import type { Action, Client, ClientOptions, Presence, Status } from './types';

const STATUS_CHANGE = '@pubsub/STATUS_CHANGE';
const PRESENCE_CHANGE = '@pubsub/PRESENCE_CHANGE';
/** The original package's name for status changes, still accepted by subscribe(). */
const LEGACY_STATUS_CHANGE = 'STATUS_CHANGE';

export function createClient(options: ClientOptions): Client {
  const subs = createSubscriptions();
  let status: Status = 'OFFLINE';
  let welcome: codec.Welcome | null = null;
  let presence: Presence | null = null;
  // What the server was last told about this tab (by the URL or an `activity` frame).
  let reportedActive = true;
  let closedByApp = false;

  const connected = (): boolean => !!welcome;
  const eventMeta = () => ({ via: 'event' });

  function setStatus(next: Status, fields?: object): void {
    if (next == status) return;
    const previousStatus = status;
    status = next;
    subs.emit(STATUS_CHANGE, { ...fields, type: STATUS_CHANGE, status: next, previousStatus }, eventMeta());
  }

  function report(active: boolean): void {
    if (connected() && conn.send(codec.activity(active))) reportedActive = active;
  }

  const activity: ActivityTracker = trackActivity(options.idleTimeout ?? 60_000, report, options.trackActivity !== false);

  const reconnect = options.reconnect;
  const conn = createConnection({
    endPoint: options.endPoint,
    userId: options.userId,
    token: options.token,
    WebSocket: options.WebSocket,
    reconnect: reconnect === false ? false : typeof reconnect == 'object' ? reconnect : {},
    connectTimeout: options.connectTimeout ?? 10_000,
    isActive: () => (reportedActive = activity.active()),
    onFrame,
    onDown(code, reason, retrying) {
      welcome = presence = null;
      requests.disconnected(!retrying);
      setStatus(retrying ? 'CONNECTING' : 'OFFLINE', { code, reason });
    },
  });

  const requests = createRequests({
    transmit: (frame) => connected() && conn.send(frame),
    // Longer than the server's handler timeout (30 s), so a slow handler is reported as the
    // server's handler_timeout rather than as a client-side guess.
    timeoutMs: options.requestTimeout ?? 35_000,
    // Queue only while a connection is on its way: once stopped, nothing would ever send it.
    whenOffline: () =>
      closedByApp ? CLIENT_CLOSED : options.queueWhileOffline && status != 'OFFLINE' ? null : NOT_CONNECTED,
    oversize: (frame) => codec.oversize(frame, welcome?.limits?.maxMessageBytes),
  });

  const topics = createTopics(requests, connected);
  const watches = createWatches(
    requests,
    connected,
    () => (welcome && welcome.limits && welcome.limits.maxRecipients) || 100,
    (p) => subs.emit(PRESENCE_CHANGE, { ...p, type: PRESENCE_CHANGE }, eventMeta()),
  );

  function onFrame(frame: codec.ServerFrame): void {
    const f = frame as any;
    switch (f.kind) {
      case 'welcome':
        welcome = f as codec.Welcome;
        presence = welcome.presence || null;
        if (activity.active() != reportedActive) report(!reportedActive);
        // Before the status change is announced: listeners reacting to ONLINE must not jump
        // ahead of requests that have been waiting longer.
        requests.flush();
        topics.rejoin();
        watches.rewatch();
        setStatus(presence ? presence.status : 'ONLINE', presence || undefined);
        break;
      case 'message':
        if (codec.isAction(f.action))
          subs.emit(f.action.type, f.action, { id: f.id, via: f.via, from: f.from, topic: f.topic });
        break;
      case 'event':
        if (codec.isAction(f.action)) onEvent(f.action as Action & Presence);
        break;
      case 'ack':
      case 'error':
        requests.answer(f);
    }
  }

  function onEvent(event: Action & Presence): void {
    const { type, ...fields } = event;
    // Events about this user keep what getPresence() returns current. Versions order them;
    // several events of one change may share a version, so only strictly older ones are stale.
    if (presence && event.user == presence.user && event.version >= presence.version) {
      const next: any = { ...presence };
      for (const key in next) if (key in fields) next[key] = (fields as any)[key];
      presence = next as Presence;
      if (type == STATUS_CHANGE) return setStatus(presence.status, presence);
    }
    // The server's own STATUS_CHANGE reaches subscribers as the local status event (setStatus).
    if (type == STATUS_CHANGE) return;
    // Only news reaches subscribers: not stale, not for users no longer watched.
    if (type == PRESENCE_CHANGE && !watches.event(fields as Presence)) return;
    subs.emit(type, event, eventMeta());
  }

  const client: Client = {
    broadcast: (action) => requests.request(codec.broadcast(requests.nextId(), action), action),
    sendToUser: (action, to) => requests.request(codec.sendToUser(requests.nextId(), to, action), action),
    sendToServer: (action) => requests.request(codec.sendToServer(requests.nextId(), action), action),
    subscribe: (type, cb) => subs.subscribe(type == LEGACY_STATUS_CHANGE ? STATUS_CHANGE : type, cb),
    onStatusChange: (cb) => subs.subscribe(STATUS_CHANGE, cb),
    getStatus: () => status,
    isConnected: () => status == 'ONLINE' || status == 'AWAY',
    getPresence: () => presence,
    getClientId: () => (welcome ? welcome.client : null),
    join: topics.join,
    leave: topics.leave,
    publish: (topic, action, opts) => topics.publish(topic, action, opts && opts.echo),
    presence: watches.presence,
    watch: watches.watch,
    unwatch: watches.unwatch,
    setActive: activity.force,
    connect() {
      if (status != 'OFFLINE') return;
      closedByApp = false;
      activity.start();
      setStatus('CONNECTING');
      conn.start();
    },
    close() {
      closedByApp = true;
      conn.stop();
      welcome = presence = null;
      requests.closed();
      activity.stop();
      setStatus('OFFLINE');
    },
  };
  client.connect();
  return client;
}
