// Starts the real `pubsub serve` for a test, on a port of its choosing, and can kill and restart it.
import { spawn, type ChildProcess } from 'node:child_process';
import { BIN, DEMO_DIR, DIST, PAGE_DIR } from './paths';

export interface ServerOptions {
  /** Extra `PUBSUB_*` settings, e.g. PUBSUB_SERVER__PRESENCE_GRACE_MS. */
  env?: Record<string, string>;
  /** Extra flags, e.g. ['--handler', 'echo']. */
  args?: string[];
}

export interface RunningServer {
  port: number;
  /** Origin of the pages served next to the WebSocket endpoint (same origin as the socket). */
  origin: string;
  /** Output so far, for failure messages. */
  output(): string;
  /** SIGKILL: connections drop without close frames, as in a crash. */
  kill(): Promise<void>;
  /** Sends a signal without waiting (SIGSTOP/SIGCONT freeze and thaw the server). */
  signal(signal: NodeJS.Signals): void;
  /** Starts again on the same port with the same settings. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  let child: ChildProcess | undefined;
  let output = '';
  let port = 0;

  async function launch(): Promise<void> {
    const args = [
      'serve',
      '--auth', 'dev',
      '--bind', '127.0.0.1',
      '--port', String(port),
      '--static', `/e2e=${PAGE_DIR}`,
      '--static', `/dist=${DIST}`,
      '--static', `/demo=${DEMO_DIR}`,
      ...(options.args || []),
    ];
    const proc = spawn(BIN, args, {
      env: { ...process.env, PUBSUB_LOG: process.env.PUBSUB_LOG || 'warn', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = proc;
    proc.stderr!.on('data', (d) => (output += d));
    port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${output}`)), 20_000);
      proc.stdout!.on('data', (d) => {
        output += d;
        const m = /pubsub listening on ws:\/\/[^\s]*:(\d+)\//.exec(output);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code}:\n${output}`));
      });
    });
  }

  function end(signal: NodeJS.Signals): Promise<void> {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode != null || proc.signalCode != null) return Promise.resolve();
    return new Promise((resolve) => {
      proc.on('exit', () => resolve());
      proc.kill(signal);
    });
  }

  await launch();
  return {
    get port() {
      return port;
    },
    get origin() {
      return `http://127.0.0.1:${port}`;
    },
    output: () => output,
    kill: () => end('SIGKILL'),
    signal: (signal) => void child?.kill(signal),
    restart: launch,
    stop: () => end('SIGTERM'),
  };
}
