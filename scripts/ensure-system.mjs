#!/usr/bin/env node
// Installs the Debian packages the tests need when they are missing (as root
// with apt-get), or says exactly what to install. Run by `npm test`.
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const needed = [
  { pkg: 'chromium', path: '/usr/bin/chromium' },
  { pkg: 'bind9-dnsutils', path: '/usr/bin/dig' },
];
const missing = needed.filter((n) => !existsSync(n.path));
if (missing.length === 0) process.exit(0);
const pkgs = missing.map((m) => m.pkg);
const isRoot = process.getuid?.() === 0;
const hasApt = spawnSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' }).status === 0;
if (!isRoot || !hasApt) {
  console.error(`test: missing system packages: ${pkgs.join(' ')}; install them with: sudo apt-get install -y ${pkgs.join(' ')}`);
  process.exit(1);
}
console.error(`test: installing ${pkgs.join(' ')} with apt-get`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
for (const args of [['update', '-qq'], ['install', '-y', '-qq', ...pkgs]]) {
  const r = spawnSync('apt-get', args, { stdio: ['ignore', 'ignore', 'inherit'], env });
  if (r.status !== 0) {
    console.error(`test: apt-get ${args.join(' ')} failed`);
    process.exit(1);
  }
}
