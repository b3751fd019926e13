#!/usr/bin/env node
// Launcher: runs the TypeScript entry point through tsx's ESM loader.
import { register } from 'tsx/esm/api';
register();
await import(new URL('../vmm/kumo-vu/cli.ts', import.meta.url).href);
