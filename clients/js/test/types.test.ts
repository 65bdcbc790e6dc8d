// The public types as an application sees them (checked by `npm run check` and at test time).
import { describe, expectTypeOf, it } from 'vitest';
import createClient, { PubSubError, type Client, type Presence, type Status, type StatusChange } from '../src/index';

describe('public types', () => {
  it('keep the original API shapes', () => {
    expectTypeOf(createClient).parameter(0).toHaveProperty('endPoint').toEqualTypeOf<string>();
    expectTypeOf<Client['getStatus']>().returns.toEqualTypeOf<Status>();
    expectTypeOf<Client['subscribe']>().returns.toEqualTypeOf<() => void>();
    expectTypeOf<Client['onStatusChange']>().parameter(0).parameter(0).toEqualTypeOf<StatusChange>();
    expectTypeOf<Client['broadcast']>().returns.resolves.toEqualTypeOf<{ delivered: number }>();
    expectTypeOf<Client['watch']>().returns.resolves.toEqualTypeOf<Record<string, Presence>>();
  });

  it('sendToServer is generic in its response', () => {
    const client = {} as Client;
    expectTypeOf(client.sendToServer<{ users: number }>).returns.resolves.toEqualTypeOf<{ users: number }>();
  });

  it('rejections carry the original { error, action, retry }', () => {
    expectTypeOf<PubSubError>().toHaveProperty('error').toHaveProperty('retryable').toEqualTypeOf<boolean>();
    expectTypeOf<PubSubError<string>['retry']>().returns.resolves.toEqualTypeOf<string>();
    expectTypeOf<PubSubError>().toMatchTypeOf<Error>();
  });
});
