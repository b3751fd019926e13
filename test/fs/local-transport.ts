import { mkdtempSync, rmSync } from 'node:fs';
import { FuseClient, type FuseTransport } from '../../protocol/fuse/index.js';
import { BufferIo } from '../../backends/virtiofsd/fuse-io.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';
import { PassthroughFs } from '../../backends/virtiofsd/passthrough.js';
import { defaultFsOptions, type FsOptions } from '../../backends/virtiofsd/options.js';

/** Runs requests straight through an in-process FuseServer (no vhost-user). */
export class LocalTransport implements FuseTransport {
  constructor(readonly server: FuseServer) {}
  async call(request: Uint8Array, replySize: number): Promise<Uint8Array> {
    const out = Buffer.alloc(replySize);
    const n = this.server.handle(new BufferIo([Buffer.from(request)], replySize ? [out] : []));
    return out.subarray(0, n);
  }
}

/** A fresh directory under /tmp served by an in-process PassthroughFs with `opts`; close() ends both. */
export class LocalShare {
  readonly dir: string;
  readonly fs: PassthroughFs;
  readonly client: FuseClient;
  /** The server behind client, for raw requests. */
  readonly server: FuseServer;
  constructor(prefix: string, opts: Partial<FsOptions> = {}) {
    this.dir = mkdtempSync(`/tmp/${prefix}`);
    this.fs = new PassthroughFs({ ...defaultFsOptions(this.dir), ...opts });
    this.server = new FuseServer(this.fs);
    this.client = new FuseClient(new LocalTransport(this.server));
  }
  close(): void {
    this.fs.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
