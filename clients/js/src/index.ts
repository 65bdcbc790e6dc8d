// @thebestco/pubsub: the browser client of PubSub.
import { createClient } from './client';

export { createClient };
export { PubSubError } from './errors';
export type * from './types';
// The original package's import style: `import createClient from '@thebestco/pubsub'`.
export default createClient;
