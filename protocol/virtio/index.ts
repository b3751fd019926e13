export * from './ids.js';
export * from './features.js';
export * from './blk.js';
export * from './net.js';
export * from './fs.js';
