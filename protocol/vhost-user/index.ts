export * from './messages.js';
export * from './errors.js';
export { type MemRegion, type VringAddr, type Payload, type PayloadKind, type PayloadOf } from './payload.js';
export {
  type Header, type Message, decodeHeader, decodeReply, decodeRequest, encodeMessage, request, reply, hasOwnReply,
  needsReply, replyPayloadKind, requestPayloadKind, isKnownRequest,
} from './codec.js';
export { VhostUserChannel, type RawMessage } from './channel.js';
export {
  type VhostUserBackend, type CreateQueueHandler, type QueueWorkerContext, type QueueHandler, type VringHandle,
  HANDLER_TOKEN_BASE,
} from './backend-types.js';
export { VhostUserDaemon, type DaemonOptions } from './daemon.js';
export { stopOnUncaughtError } from './fatal.js';
export { DEFAULT_PROTOCOL_FEATURES, SUPPORTED_PROTOCOL_FEATURES, MAX_MEM_SLOTS, RequestRefusedError } from './session.js';
export { VhostUserFrontend, guestToUser, type FrontendOptions, type ConnectOptions } from './frontend.js';
