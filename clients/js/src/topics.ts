// Topic membership (docs/protocol.md 2.4 join/leave/publish). Membership belongs to the
// connection on the server, so the client remembers it and joins again after every reconnect.
import { publish as publishFrame, topicFrame } from './codec';
import type { createRequests } from './requests';
import type { Action } from './types';

type Requests = ReturnType<typeof createRequests>;

export function createTopics(requests: Requests, isConnected: () => boolean) {
  const joined = new Set<string>();

  const sendJoin = (topic: string) =>
    // Remembered on the ack (of this call or of a later retry()), so a topic the server refused
    // is not joined again behind the application's back.
    requests.request(topicFrame('join', requests.nextId(), topic), undefined, (result: { topic: string; members: number }) => {
      joined.add(topic);
      return result;
    });

  return {
    join: sendJoin,

    leave(topic: string): Promise<{ topic: string; left: boolean }> {
      const was = joined.delete(topic);
      // Offline, the membership already ended with the old connection: nothing to tell the server.
      if (!isConnected()) return Promise.resolve({ topic, left: was });
      return requests.request(topicFrame('leave', requests.nextId(), topic), undefined, (result) => {
        // A join answered after this leave was made must not bring the topic back.
        joined.delete(topic);
        return result;
      });
    },

    publish: (topic: string, action: Action, echo?: boolean): Promise<{ delivered: number }> =>
      requests.request(publishFrame(requests.nextId(), topic, action, !!echo), action),

    /**
     * After a reconnect. There is no call of the application's to reject: a refusal (say a
     * policy that now forbids the topic) forgets the topic, other failures wait for the next reconnect.
     */
    rejoin(): void {
      for (const topic of joined)
        sendJoin(topic).catch((e) => {
          if (!e.error.retryable) joined.delete(topic);
        });
    },
  };
}
