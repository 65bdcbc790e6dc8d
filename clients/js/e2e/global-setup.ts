// Before any browser test: the server binary (built from this workspace), the package build, Chromium.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { BIN, CHROMIUM, DIST, WORKSPACE } from './paths';

export default function setup(): void {
  if (!process.env.PUBSUB_BIN) {
    // Shares the workspace's default target dir, so this is quick when the binary is current.
    const build = spawnSync('cargo', ['build', '-p', 'pubsub-cli'], { cwd: WORKSPACE, stdio: 'inherit' });
    if (build.status != 0) throw new Error('cargo build -p pubsub-cli failed');
  }
  if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}`);
  if (!existsSync(`${DIST}/index.js`) || !existsSync(`${DIST}/pubsub.global.js`))
    throw new Error('no package build in dist/: run `npm run build` (npm run test:e2e does)');
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
}
