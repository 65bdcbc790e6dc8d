// Other users' presence (docs/protocol.md 2.4 presence/watch/unwatch, section 4 PRESENCE_CHANGE).
// Watches belong to the connection on the server, so the client remembers them and watches
// again after every reconnect.
import { usersFrame } from './codec';
import type { createRequests } from './requests';
import { callSafely } from './subscriptions';
import type { Presence, UserId } from './types';

type Requests = ReturnType<typeof createRequests>;
type PresenceMap = Record<string, Presence>;

const list = (users: UserId | UserId[]): string[] => (Array.isArray(users) ? users : [users]).map(String);

/**
 * `announce(presence)` is told about changes the client learned from a re-watch snapshot rather
 * than from an event (the status changed while the connection was down).
 */
export function createWatches(
  requests: Requests,
  isConnected: () => boolean,
  maxUsersPerRequest: () => number,
  announce: (presence: Presence) => void,
) {
  // Watched users and the newest presence known for each.
  const known = new Map<string, Presence>();
  const callbacks = new Set<{ users: Set<string>; cb: (presence: Presence) => void }>();

  const notify = (p: Presence): void => {
    for (const c of [...callbacks]) if (c.users.has(p.user)) callSafely(c.cb, p);
  };

  // A watch snapshot is the baseline for the events that follow it on the same connection
  // (server: "snapshot and subscription are taken atomically"), so it replaces what is known
  // even when its version is lower: versions are not comparable across a server restart.
  const take = (users: PresenceMap, afterReconnect: boolean): PresenceMap => {
    for (const user in users) {
      const p = users[user]!;
      const old = known.get(user);
      if (afterReconnect && !old) continue; // unwatched while the re-watch was on its way
      known.set(user, p);
      if (!old || old.version != p.version) {
        notify(p);
        if (afterReconnect && old && old.status != p.status) announce(p);
      }
    }
    return users;
  };

  const forget = (users: string[]): void => {
    for (const user of users) {
      known.delete(user);
      for (const c of callbacks) if (c.users.delete(user) && !c.users.size) callbacks.delete(c);
    }
  };

  return {
    presence: (users: UserId | UserId[]): Promise<PresenceMap> =>
      requests.request(usersFrame('presence', requests.nextId(), list(users)), undefined, (r) => r.users),

    watch(users: UserId | UserId[], cb?: (presence: Presence) => void): Promise<PresenceMap> {
      const names = list(users);
      let added = !cb;
      // The callback and the watch start together on the ack (of this call or a later retry()).
      return requests.request(usersFrame('watch', requests.nextId(), names), undefined, (r: { users: PresenceMap }) => {
        take(r.users, false);
        if (!added) {
          callbacks.add({ users: new Set(names), cb: cb! });
          // Its first presence even when the user was already watched (and nothing is new).
          for (const user in r.users) callSafely(cb!, r.users[user]!);
        }
        added = true;
        return r.users;
      });
    },

    unwatch(users: UserId | UserId[]): Promise<{ watching: number }> {
      const names = list(users);
      forget(names);
      // Offline, the watch already ended with the old connection.
      if (!isConnected()) return Promise.resolve({ watching: known.size });
      return requests.request(usersFrame('unwatch', requests.nextId(), names), undefined, (r) => {
        forget(names); // a watch answered after this unwatch was made must not revive them
        return r;
      });
    },

    /** A PRESENCE_CHANGE event: true if it is news (watched, and newer than what is known). */
    event(p: Presence): boolean {
      const old = known.get(p.user);
      if (!old || p.version <= old.version) return false;
      known.set(p.user, p);
      notify(p);
      return true;
    },

    /** After a reconnect, in requests the server accepts (the set may have grown past one request's limit). */
    rewatch(): void {
      const users = [...known.keys()];
      for (let i = 0, n = maxUsersPerRequest(); i < users.length; i += n) {
        const chunk = users.slice(i, i + n);
        requests
          .request(usersFrame('watch', requests.nextId(), chunk), undefined, (r) => take(r.users, true))
          .catch((e) => {
            // Refused for good (a policy now forbids it): stop pretending to watch them.
            if (!e.error.retryable) forget(chunk);
          });
      }
    },
  };
}
