// Listeners by action type, the original package's `subscribe`.
import type { Listener, Meta } from './types';

/** Subscribing to this type receives every action and event. */
export const ALL = '*';

/**
 * Calls application code. One broken callback must not starve the others or the client's own
 * bookkeeping; rethrowing later still shows the error in the console and in error trackers.
 */
export function callSafely<A extends unknown[]>(cb: (...args: A) => unknown, ...args: A): void {
  try {
    cb(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}

export function createSubscriptions() {
  // A fresh box per subscription, so subscribing the same function twice gives two
  // independent subscriptions, each removed by its own unsubscribe (as in Redux).
  const byType = new Map<string, Set<{ cb: Listener }>>();

  const subscribe = (type: string, cb: Listener): (() => void) => {
    const box = { cb };
    let set = byType.get(type);
    if (!set) byType.set(type, (set = new Set()));
    set.add(box);
    return () => {
      set.delete(box);
      if (!set.size && byType.get(type) == set) byType.delete(type);
    };
  };

  const emit = (type: string, action: unknown, meta: Meta): void => {
    // Copy first: a listener may unsubscribe (itself or others) while we iterate.
    for (const { cb } of [...(byType.get(type) || []), ...(type == ALL ? [] : byType.get(ALL) || [])])
      callSafely(cb, action, meta);
  };

  return { subscribe, emit };
}
