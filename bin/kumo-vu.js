#!/usr/bin/env node
import { launch } from './launch.js';
await launch('vmm/kumo-vu/cli.ts');
