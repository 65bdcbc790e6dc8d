// Whether this tab is active (docs/protocol.md 2.4 `activity`, section 5): visible and recently used.
//
// Rules, and why:
// - Hidden (Page Visibility) means inactive at once: nobody can be looking at it.
// - A visible tab is active until `idleMs` pass without input. Blur alone does not make it
//   inactive, because a visible window without focus (a second monitor, windows side by side)
//   may still be what the user is looking at; no input reaches it after the blur, so the idle
//   timer turns it inactive if the user really went elsewhere.
// - Focus counts as input. It is not re-sent when the tab is already active: the server moves
//   `activeClient` only when a client turns from inactive to active, so a repeated
//   `activity: true` would change nothing.
// - Nothing is reported between `pagehide` and `pageshow`. Browsers mark a page hidden while
//   unloading it (pagehide → visibilitychange → unload, seen in Chromium); reporting that
//   would show the user AWAY during every reload, and ONLINE → AWAY → OFFLINE when the last
//   tab closes. The socket closing says all there is to say.

const INPUT_EVENTS = ['pointerdown', 'pointermove', 'keydown', 'wheel', 'touchstart', 'scroll', 'focus'];

export interface ActivityTracker {
  active(): boolean;
  /** Forces the state (`undefined` returns to detection). */
  force(active: boolean | undefined): void;
  start(): void;
  stop(): void;
}

/**
 * `onReport(active)` is called when the state changes. Without `listen` (or outside a page)
 * the tab counts as active unless forced otherwise.
 */
export function trackActivity(idleMs: number, onReport: (active: boolean) => void, listen = true): ActivityTracker {
  const doc = listen && typeof document != 'undefined' ? document : undefined;
  // Without a page there is no input to see, so idleness cannot be told.
  if (!doc) idleMs = 0;
  let lastInput = Date.now();
  let idle = false;
  let forced: boolean | undefined;
  let leaving = false;
  let reported = computed();
  let timer: ReturnType<typeof setTimeout> | undefined;

  function computed(): boolean {
    return forced ?? (!(doc && doc.visibilityState == 'hidden') && !idle);
  }

  function update(): void {
    const now = computed();
    if (!leaving && now != reported) onReport((reported = now));
  }

  // One timer per idle period rather than one per input event: pointermove fires very often,
  // so input only records a timestamp and the timer re-arms itself for the remainder.
  function arm(delay: number): void {
    clearTimeout(timer);
    if (idleMs > 0) timer = setTimeout(check, delay);
  }

  function check(): void {
    const left = lastInput + idleMs - Date.now();
    if (left > 0) return arm(left);
    idle = true;
    update();
  }

  function input(): void {
    lastInput = Date.now();
    if (idle) {
      idle = false;
      arm(idleMs);
      update();
    }
  }

  const onPage = (event: Event): void => {
    leaving = event.type == 'pagehide';
    update();
  };

  const onVisibility = (): void => {
    // Coming back to a tab is a sign of the user: do not report it idle from before it was hidden.
    if (doc!.visibilityState != 'hidden') input();
    update();
  };

  return {
    active: () => reported,
    force(active) {
      forced = active;
      update();
    },
    start() {
      lastInput = Date.now();
      arm(idleMs);
      if (!doc) return;
      for (const type of INPUT_EVENTS) addEventListener(type, input, { capture: true, passive: true });
      addEventListener('pagehide', onPage);
      addEventListener('pageshow', onPage);
      doc.addEventListener('visibilitychange', onVisibility);
    },
    stop() {
      clearTimeout(timer);
      if (!doc) return;
      for (const type of INPUT_EVENTS) removeEventListener(type, input, { capture: true });
      removeEventListener('pagehide', onPage);
      removeEventListener('pageshow', onPage);
      doc.removeEventListener('visibilitychange', onVisibility);
    },
  };
}
