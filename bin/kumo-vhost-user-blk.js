#!/usr/bin/env node
import { launch } from './launch.js';
await launch('backends/vhost-user-blk/main.ts');
