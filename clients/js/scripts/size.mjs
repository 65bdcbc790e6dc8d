// Prints the gzip size of the builds and fails when the script-tag build is over its budget,
// so growth is noticed in the commit that causes it.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 6 * 1024;
const files = ['dist/pubsub.global.js', 'dist/index.js'];

let over = false;
for (const file of files) {
  const raw = readFileSync(new URL(`../${file}`, import.meta.url));
  const gz = gzipSync(raw, { level: 9 }).length;
  const budgeted = file.endsWith('.global.js');
  const note = budgeted ? ` (budget ${BUDGET} B${gz > BUDGET ? ', OVER BUDGET' : ''})` : '';
  console.log(`${file}: ${raw.length} B, ${gz} B gzip${note}`);
  if (budgeted && gz > BUDGET) over = true;
}
if (over) {
  console.error(`size check failed: the script-tag build must stay within ${BUDGET} bytes gzipped`);
  process.exit(1);
}
