import { KumoError } from '../errors.js';

/** Any vhost-user failure. */
export class VhostUserError extends KumoError {}

/**
 * The daemon could not take its socket (listen, or connect in client mode): a set-up mistake the
 * command line reports in one line, without a stack.
 */
export class VhostUserSocketError extends VhostUserError {}

/** A message that breaks the wire protocol (bad header, size, payload or fd count): the connection is closed. */
export class VhostUserProtocolError extends VhostUserError {}

/** The back-end answered a NEED_REPLY request with a non-zero status. */
export class VhostUserNackError extends VhostUserError {
  readonly request: string;
  readonly status: bigint;
  constructor(request: string, status: bigint) {
    super(`back-end refused ${request} (status ${status})`, { request, status: status.toString() });
    this.request = request;
    this.status = status;
  }
}

/** The peer closed the socket. */
export class VhostUserDisconnectedError extends VhostUserError {}

/** No message came from the peer in time (a reply to a request may still come later). */
export class VhostUserTimeoutError extends VhostUserError {}
