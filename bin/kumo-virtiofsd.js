#!/usr/bin/env node
import { launch } from './launch.js';
await launch('backends/virtiofsd/main.ts');
