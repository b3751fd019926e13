import type { CreateQueueHandler, QueueHandler, VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { ChainError } from '../../protocol/virtqueue/index.js';
import { ChainIo } from './fuse-io.js';
import { PassthroughFs } from './passthrough.js';
import { FuseServer } from './server.js';
import { enterSandbox } from './sandbox.js';
import type { FsOptions } from './options.js';

export interface FsWorkerData {
  opts: FsOptions;
}

/**
 * One worker thread serves both the hiprio queue and the request queue, so FORGETs on queue 0 and
 * LOOKUPs on queue 1 share one inode table. Requests run to completion in ring order.
 */
export const createQueueHandler: CreateQueueHandler = (ctx) => {
  const { opts } = ctx.data as FsWorkerData;
  const fs = new PassthroughFs(opts, enterSandbox(opts, ctx.log));
  const server = new FuseServer(fs);
  ctx.log.info({ dir: opts.sharedDir, sandbox: opts.sandbox }, 'virtio-fs worker ready');

  const handler: QueueHandler = {
    onStart(q: VringHandle): void {
      ctx.log.debug({ queue: q.index }, 'queue started');
    },
    onStop(q: VringHandle): void {
      ctx.log.debug({ queue: q.index }, 'queue stopped');
    },
    process(q: VringHandle): void {
      if (!q.enabled) return;
      const mem = ctx.memory();
      const queue = q.queue;
      for (;;) {
        let served = 0;
        for (;;) {
          let chain;
          try {
            chain = queue.pop();
          } catch (e) {
            if (e instanceof ChainError) {
              ctx.log.warn({ err: e.message }, 'dropping malformed descriptor chain');
              queue.pushUsed(e.head, 0);
              served++;
              continue;
            }
            throw e;
          }
          if (chain === null) break;
          let n = 0;
          try {
            n = server.handle(new ChainIo(mem, chain.readable, chain.writable));
          } catch (e) {
            ctx.log.warn({ err: (e as Error).message }, 'request dropped');
          }
          queue.pushUsed(chain.head, n);
          served++;
        }
        if (served === 0) break;
        queue.publishUsed();
        q.notify();
      }
    },
  };
  return handler;
};
