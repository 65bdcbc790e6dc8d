// Errors a request can reject with: the server's `error` frames and the client-side codes 3000–3004.
import type { Action, ErrorInfo } from './types';

const local = (code: number, name: string, message: string, retryable: boolean): ErrorInfo => ({
  code,
  name,
  message,
  retryable,
});

export const DISCONNECTED = local(3000, 'disconnected', 'the connection dropped before the request settled', true);
export const REQUEST_TIMEOUT = local(3001, 'request_timeout', 'no answer within the request timeout', true);
export const NOT_CONNECTED = local(3002, 'not_connected', 'the client is not connected', true);
export const CLIENT_CLOSED = local(3003, 'client_closed', 'the client was closed', false);
/** Refused before sending: the server would close the whole connection (1009) for it. */
export const messageTooBig = (bytes: number, limit: number): ErrorInfo =>
  local(3004, 'message_too_big', `the frame is ${bytes} bytes; the server accepts ${limit}`, false);

/**
 * What a failed request rejects with. It is an Error (so it has a stack and prints well when
 * unhandled) carrying the original package's `{ error, action, retry }`.
 */
export class PubSubError<R = unknown> extends Error {
  /** `code`, `name`, `message`, `retryable` and, from server handlers, `data`. */
  readonly error: ErrorInfo;
  /** The action that was sent, for requests that carry one. */
  readonly action: Action | undefined;
  /** Sends the same request again with the same message id, so it is never delivered twice. */
  readonly retry: () => Promise<R>;

  constructor(error: ErrorInfo, action: Action | undefined, retry: () => Promise<R>) {
    super(`${error.name} (${error.code}): ${error.message}`);
    this.name = 'PubSubError';
    this.error = error;
    this.action = action;
    this.retry = retry;
  }
}

/** The error as the application sees it: the frame without `kind` and `id`. */
export function errorInfo(frame: ErrorInfo): ErrorInfo {
  const info = local(frame.code, frame.name, frame.message, !!frame.retryable);
  if (frame.data !== undefined) info.data = frame.data;
  return info;
}
