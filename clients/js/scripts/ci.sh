#!/usr/bin/env bash
# Everything CI needs for the browser client, from a fresh clone: Chromium (Debian's package; no
# browser can be downloaded), npm packages from the lockfile, type check, unit tests, build with
# the size budget, and the end-to-end suite against the workspace's server. Meant to be called
# from the repository's .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

npm ci --no-audit --no-fund
npm run check

report="$(mktemp -d)"
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report/unit.json" || status=1
npm run test:e2e -- --reporter=default --reporter=json --outputFile.json="$report/e2e.json" || status=1

# One plain "N passed, N failed" line per suite, which CI reads whatever the runner.
for suite in unit e2e; do
  node -e '
    const fs = require("fs");
    const [file, name] = process.argv.slice(1);
    if (!fs.existsSync(file)) { console.log(`js-${name}: 0 passed, 1 failed`); process.exit(); }
    const r = JSON.parse(fs.readFileSync(file, "utf8"));
    console.log(`js-${name}: ${r.numPassedTests} passed, ${r.numFailedTests} failed`);
  ' "$report/$suite.json" "$suite"
done
exit $status
