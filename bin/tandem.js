#!/usr/bin/env node
// The `tandem` command. The sources are TypeScript run through tsx, so the
// lab's daemons (spawned with the same loader) always run the code in the tree.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
