import type { FuseTransport } from '../../protocol/fuse/index.js';
import { BufferIo } from '../../backends/virtiofsd/fuse-io.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';

/** Runs requests straight through an in-process FuseServer (no vhost-user). */
export class LocalTransport implements FuseTransport {
  constructor(readonly server: FuseServer) {}
  async call(request: Uint8Array, replySize: number): Promise<Uint8Array> {
    const out = Buffer.alloc(replySize);
    const n = this.server.handle(new BufferIo([Buffer.from(request)], replySize ? [out] : []));
    return out.subarray(0, n);
  }
}
