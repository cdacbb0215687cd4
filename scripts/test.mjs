#!/usr/bin/env node
// Runs the test suite: type-check, then every *.test.ts under src/ and test/
// through node's test runner. Node 20's --test neither expands globs nor finds
// .ts files in a directory, so the files are listed here.
//   npm test                 everything
//   npm test -- src/dns      only files under these paths
//   npm test -- --no-typecheck src/core
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const typecheck = !args.includes('--no-typecheck');
const roots = args.filter((a) => !a.startsWith('--'));

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const p = path.join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) walk(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const files = [];
for (const root of roots.length ? roots : ['src', 'test']) {
  if (statSync(root, { throwIfNoEntry: false })?.isFile()) files.push(root);
  else if (statSync(root, { throwIfNoEntry: false })?.isDirectory()) walk(root, files);
  else {
    console.error(`test: no such file or directory: ${root}`);
    process.exit(2);
  }
}
if (files.length === 0) {
  console.error('test: no test files found');
  process.exit(1);
}
files.sort();

const system = spawnSync(process.execPath, ['scripts/ensure-system.mjs'], { stdio: 'inherit' });
if (system.status !== 0) process.exit(1);

if (typecheck) {
  const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '--noEmit', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  if (tsc.status !== 0) {
    console.error('test: type-check failed');
    process.exit(1);
  }
}

const run = spawnSync(process.execPath, ['--import', 'tsx', '--test', ...files], {
  stdio: 'inherit',
  env: { ...process.env, TANDEM_LOG_LEVEL: process.env.TANDEM_LOG_LEVEL ?? 'silent' },
});
process.exit(run.status ?? 1);
