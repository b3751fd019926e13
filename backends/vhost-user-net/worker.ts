// Queue worker module of the net backend: worker k serves rings 2k (RX) and 2k+1 (TX) with TAP queue k.
import { HANDLER_TOKEN_BASE, type CreateQueueHandler, type QueueHandler, type VringHandle } from '../../protocol/vhost-user/backend-types.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MRG_RXBUF,
  hasFeature,
} from '../../protocol/virtio/index.js';
import { linkMtu, setTapQueueAttached } from '../../protocol/sys/tap.js';
import { counterView } from './counters.js';
import { QueuePair } from './queue-pair.js';
import type { RxOptions } from './rx.js';
import type { TxOptions } from './tx.js';
import { ETH_HLEN, MAX_GSO_FRAME, NET_HDR_LEN, NET_HDR_LEN_LEGACY, VLAN_HLEN } from './virtio-net.js';

/** queueWorker.data of the net backend (structured-cloned into each worker). */
export interface NetWorkerData {
  /** One TAP queue fd per queue pair (same process, so the numbers stay valid in workers). */
  tapFds: number[];
  /** The TAP's name, to read its MTU again when a front-end starts its rings (an operator may have raised it). */
  tapName: string;
  counters: SharedArrayBuffer;
  /** Host-side MTU of the TAP at start-up. */
  mtu: number;
  queueSize: number;
}

/** RX/TX settings that follow from the acked virtio features. */
export function pathOptions(features: bigint, mtu: number, queueSize: number): { rx: RxOptions; tx: TxOptions } {
  const f = (n: number) => hasFeature(features, n);
  const hdrLen = f(VIRTIO_F_VERSION_1) || f(VIRTIO_NET_F_MRG_RXBUF) ? NET_HDR_LEN : NET_HDR_LEN_LEGACY;
  const guestGso = f(VIRTIO_NET_F_GUEST_TSO4) || f(VIRTIO_NET_F_GUEST_TSO6) || f(VIRTIO_NET_F_GUEST_UFO);
  const plain = mtu + ETH_HLEN + VLAN_HLEN;
  return {
    rx: { mergeable: f(VIRTIO_NET_F_MRG_RXBUF), hdrLen, maxFrame: hdrLen + (guestGso ? MAX_GSO_FRAME : plain), queueSize },
    tx: {
      hdrLen,
      maxFrame: plain,
      csum: f(VIRTIO_NET_F_CSUM),
      tso4: f(VIRTIO_NET_F_HOST_TSO4),
      tso6: f(VIRTIO_NET_F_HOST_TSO6),
      ecn: f(VIRTIO_NET_F_HOST_ECN),
      ufo: f(VIRTIO_NET_F_HOST_UFO),
    },
  };
}

export const createQueueHandler: CreateQueueHandler = (ctx) => {
  const data = ctx.data as NetWorkerData;
  const k = ctx.workerIndex;
  if (!Array.isArray(data.tapFds) || k >= data.tapFds.length) {
    throw new Error(`net worker ${k} has no TAP queue (${data.tapFds?.length ?? 0} opened)`);
  }
  const pair = new QueuePair({
    tapFd: data.tapFds[k],
    epoll: ctx.epoll,
    tapToken: HANDLER_TOKEN_BASE,
    reschedToken: HANDLER_TOKEN_BASE + 1,
    counters: counterView(data.counters, k),
    memory: ctx.memory,
    log: ctx.log,
    // Queue 0 stays attached so the link always has somewhere to put frames.
    setTapQueueAttached: k === 0 ? undefined : (on) => setTapQueueAttached(data.tapFds[k], on),
  });
  const isRx = (q: VringHandle) => q.index % 2 === 0;
  let rxSize = data.queueSize;
  const handler: QueueHandler = {
    onStart(q) {
      if (isRx(q)) rxSize = q.queue.size;
      let mtu = data.mtu;
      try {
        mtu = linkMtu(data.tapName);
      } catch {
        // renamed or gone: the MTU it had at start-up
      }
      const o = pathOptions(ctx.features(), mtu, rxSize);
      pair.configure(o.rx, o.tx);
      if (isRx(q)) pair.startRx(q);
      else pair.startTx(q);
    },
    onStop(q) {
      if (isRx(q)) pair.stopRx();
      else pair.stopTx();
    },
    onDisable(q) {
      if (isRx(q)) pair.rxDisabled();
    },
    process(q) {
      if (isRx(q)) pair.rxKick();
      else pair.txKick();
    },
    onFd(token, events) {
      pair.onFd(token, events);
    },
  };
  return handler;
};
