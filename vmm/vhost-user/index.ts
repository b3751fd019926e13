export { VhostUserDevice, vhostUserDevices } from './device.js';
export { VhostUserLink, type CallFdResolver } from './link.js';
export { attachVhostUserDevices, type VhostUserAttachment, type ConnectTiming } from './connect.js';
export { withVhostUserEvents } from './events.js';
export { VhostUserDeviceError } from './errors.js';
export type { VhostUserDeviceSpec, VhostUserKind } from './spec.js';
