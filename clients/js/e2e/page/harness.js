// Runs in the browser under test: one client per page, built from the package's ES module build,
// with everything it receives recorded for the tests to read through page.evaluate.
import createClient from '/dist/index.js';

const params = new URLSearchParams(location.search);
const records = [];
const statuses = [];
const closes = []; // close codes that caused status changes
const presence = {};

// No path on purpose: the client must add /ws itself, as with the original's endPoint values.
const client = createClient({
  endPoint: `ws://${location.host}`,
  userId: params.get('user'),
  idleTimeout: Number(params.get('idle') || 60000),
  queueWhileOffline: params.get('queue') == '1',
});
client.subscribe('*', (action, meta) => records.push({ action, meta, at: Date.now() }));
client.onStatusChange((e) => {
  statuses.push(e.status);
  if (e.code) closes.push(e.code);
});

/** A promise's outcome as plain data (page.evaluate cannot carry Error objects or functions). */
async function outcome(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (e) {
    window.lastError = e;
    return { ok: false, error: e.error, action: e.action, isError: e instanceof Error, hasRetry: typeof e.retry == 'function' };
  }
}

window.t = {
  client,
  records,
  statuses,
  closes,
  presence,
  outcome,
  /** Every action/event received of a type. */
  of: (type) => records.filter((r) => r.action.type == type),
  /** Watches users, recording every presence the callback gets (with the time it arrived). */
  watch: (users) => outcome(client.watch(users, (p) => (presence[p.user] ||= []).push({ ...p, at: Date.now() }))),
  /** The statuses seen for a watched user, oldest first. */
  statusesOf: (user) => (presence[user] || []).map((p) => p.status),
  lastStatusOf: (user) => {
    const seen = presence[user];
    return seen && seen.length ? seen[seen.length - 1].status : undefined;
  },
  /** Emulates hiding the tab; why this is needed and honest: setHidden() in ../browser.ts. */
  setHidden(hidden) {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event('visibilitychange'));
  },
};
