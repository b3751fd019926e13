export * from './errors.js';
export * from './opcodes.js';
export * from './struct.js';
export * from './structs.js';
export * from './dirent.js';
export * from './secctx.js';
export * from './supp-groups.js';
export * from './client.js';
