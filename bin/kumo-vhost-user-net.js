#!/usr/bin/env node
import { launch } from './launch.js';
await launch('backends/vhost-user-net/main.ts');
