import { fileURLToPath } from 'node:url';

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

export const WORKSPACE = here('../../../');
export const BIN = process.env.PUBSUB_BIN || here('../../../target/debug/pubsub');
export const PAGE_DIR = here('./page');
export const DIST = here('../dist');
export const DEMO_DIR = here('../demo');
export const SCREENSHOT = here('../../../docs/demo.png');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
