// Activity from the page (visibility, focus, idle timer) turned into `activity` frames, over a
// minimal stand-in for window and document (the real browser runs in the e2e suite).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeWebSocket } from './fake-websocket';
import { connected, makeClient, tick, useFakeClock } from './helpers';

const g = globalThis as any;
let win: EventTarget;
let doc: EventTarget & { visibilityState: string };
let listeners = 0;

beforeEach(() => {
  win = new EventTarget();
  doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
  listeners = 0;
  g.document = doc;
  g.addEventListener = (...args: Parameters<EventTarget['addEventListener']>) => {
    listeners++;
    win.addEventListener(...args);
  };
  g.removeEventListener = (...args: Parameters<EventTarget['removeEventListener']>) => {
    listeners--;
    win.removeEventListener(...args);
  };
});

afterEach(() => {
  delete g.document;
  delete g.addEventListener;
  delete g.removeEventListener;
});

// Registered after the hooks above, so its afterEach (which closes the clients) runs before
// the page stand-ins are removed.
useFakeClock();

const setVisibility = (state: 'visible' | 'hidden') => {
  doc.visibilityState = state;
  doc.dispatchEvent(new Event('visibilitychange'));
};
const activityFrames = (ws: FakeWebSocket) => ws.framesOfKind('activity');

describe('activity', () => {
  it('hiding and showing the page sends activity frames', async () => {
    const { ws } = await connected({ trackActivity: true });
    setVisibility('hidden');
    setVisibility('hidden'); // no change, nothing sent
    setVisibility('visible');
    expect(activityFrames(ws)).toEqual([
      { kind: 'activity', active: false },
      { kind: 'activity', active: true },
    ]);
  });

  it('a page hidden when connecting connects with ?active=false', async () => {
    doc.visibilityState = 'hidden';
    makeClient({ trackActivity: true });
    await tick();
    expect(FakeWebSocket.last().url).toBe('ws://127.0.0.1:4001/ws?userId=alice&active=false');
  });

  it('goes idle after idleTimeout without input and comes back on input', async () => {
    const { ws } = await connected({ trackActivity: true, idleTimeout: 1000 });
    await tick(600);
    win.dispatchEvent(new Event('pointermove'));
    await tick(600);
    expect(activityFrames(ws)).toEqual([]); // input 600 ms ago: still active
    await tick(400);
    expect(activityFrames(ws)).toEqual([{ kind: 'activity', active: false }]);
    win.dispatchEvent(new Event('keydown'));
    expect(activityFrames(ws)).toEqual([
      { kind: 'activity', active: false },
      { kind: 'activity', active: true },
    ]);
  });

  it('the hide that comes with unloading the page is not reported (no AWAY flash on reload)', async () => {
    const { ws } = await connected({ trackActivity: true });
    win.dispatchEvent(new Event('pagehide'));
    setVisibility('hidden');
    expect(activityFrames(ws)).toEqual([]);
    // Restored from the back/forward cache: reporting resumes with the state as it is now.
    win.dispatchEvent(new Event('pageshow'));
    expect(activityFrames(ws)).toEqual([{ kind: 'activity', active: false }]);
  });

  it('idleTimeout: 0 never goes idle', async () => {
    const { ws } = await connected({ trackActivity: true, idleTimeout: 0 });
    await tick(3_600_000);
    expect(activityFrames(ws)).toEqual([]);
  });

  it('focus counts as input; blur alone changes nothing; nothing is re-sent while already active', async () => {
    const { ws } = await connected({ trackActivity: true, idleTimeout: 1000 });
    win.dispatchEvent(new Event('blur'));
    win.dispatchEvent(new Event('focus'));
    expect(activityFrames(ws)).toEqual([]);
    await tick(1000);
    win.dispatchEvent(new Event('focus'));
    expect(activityFrames(ws)).toEqual([
      { kind: 'activity', active: false },
      { kind: 'activity', active: true },
    ]);
  });

  it('a change while disconnected is sent after the next welcome if the URL did not carry it', async () => {
    const { ws } = await connected({ trackActivity: true });
    ws.serverClose(1006);
    setVisibility('hidden');
    await tick(250);
    const ws2 = FakeWebSocket.last();
    expect(ws2.url).toContain('active=false'); // told at connect time…
    setVisibility('visible'); // …but the page came back before welcome
    ws2.open().welcome();
    expect(activityFrames(ws2)).toEqual([{ kind: 'activity', active: true }]);
  });

  it('setActive() overrides detection until given undefined', async () => {
    const { client, ws } = await connected({ trackActivity: true });
    client.setActive(false);
    setVisibility('visible');
    win.dispatchEvent(new Event('pointerdown'));
    client.setActive(undefined);
    expect(activityFrames(ws)).toEqual([
      { kind: 'activity', active: false },
      { kind: 'activity', active: true },
    ]);
  });

  it('trackActivity: false listens to nothing; setActive() still reports', async () => {
    const { client, ws } = await connected({ trackActivity: false });
    setVisibility('hidden');
    expect(activityFrames(ws)).toEqual([]);
    client.setActive(false);
    expect(activityFrames(ws)).toEqual([{ kind: 'activity', active: false }]);
  });

  it('close() removes every listener it added', async () => {
    const { client } = await connected({ trackActivity: true });
    expect(listeners).toBeGreaterThan(0);
    client.close();
    expect(listeners).toBe(0);
  });

  it('the browser coming back online cuts the backoff short', async () => {
    const { ws } = await connected({ reconnect: { baseMs: 60_000 } });
    ws.serverClose(1006);
    win.dispatchEvent(new Event('online'));
    await tick(0);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });
});
