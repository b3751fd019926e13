// Main thread, before the vCPUs start: connect to each backend, negotiate like Cloud Hypervisor,
// read the config space, and produce the spec every thread's model is built from.
import { rmSync } from 'node:fs';
import { KumoError } from '../../protocol/errors.js';
import { logger } from '../../protocol/log.js';
import { accept, unixListen } from '../../protocol/sys/socket.js';
import { closeQuiet, eventfd, setNonBlocking } from '../../protocol/sys/fd.js';
import { F_PROTOCOL_FEATURES, ProtocolFeature, hasProtocolFeature, VhostUserFrontend, VhostUserProtocolError } from '../../protocol/vhost-user/index.js';
import { VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET } from '../../protocol/virtio/ids.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/features.js';
import { VIRTIO_NET_F_MTU } from '../../protocol/virtio/net.js';
import { VIRTIO_BLK_F_RO } from '../../protocol/virtio/blk.js';
import type { DiskConfig } from '../config/disk.js';
import type { FsConfig } from '../config/fs.js';
import type { NetConfig } from '../config/net.js';
import type { VhostUserDevicesConfig } from '../config/vhost-user-devices.js';
import { VhostUserDeviceError } from './errors.js';
import { checkQueueCount, VhostUserLink, type CallFdResolver, type NegotiatedLink, type Reconnect } from './link.js';
import {
  BLK_CONFIG_LEN, BLK_PROTOCOL_FEATURES, DEFAULT_VIRTIO_FEATURES, BLK_WRITABLE, blkFeatureMask, FS_PROTOCOL_FEATURES, fsConfig, NET_PROTOCOL_FEATURES,
  NET_VMM_FEATURES, netConfig, netFeatureMask, patchBlkConfig,
} from './profiles.js';
import { newDirtyRange, type VhostUserDeviceSpec, type VhostUserKind } from './spec.js';

const log = logger('vhost-user-connect');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface ConnectTiming {
  /** Cloud Hypervisor retries for 60 s, every 100 ms. */
  retryForMs?: number;
  /** How long a back-end that hung up under a running guest has to come back (default: retryForMs, or 60 s). */
  reconnectForMs?: number;
  retryEveryMs?: number;
  replyTimeoutMs?: number;
}

async function listenForBackend(id: string, path: string, t: ConnectTiming): Promise<number> {
  const lfd = unixListen(path, 1);
  try {
    setNonBlocking(lfd, true);
    const until = Date.now() + (t.retryForMs ?? 60_000);
    for (;;) {
      try {
        return accept(lfd);
      } catch (e) {
        if (Date.now() >= until) {
          throw new VhostUserDeviceError(`vhost-user device ${id}: no backend connected to ${path}`, { id, path, cause: String(e) });
        }
        await sleep(t.retryEveryMs ?? 100);
      }
    }
  } finally {
    closeQuiet(lfd);
    // Nobody connects twice (as Cloud Hypervisor, which removes it at shutdown): a back-end trying later gets ENOENT.
    rmSync(path, { force: true });
  }
}

async function open(id: string, socket: string, server: boolean, t: ConnectTiming): Promise<VhostUserFrontend> {
  const opts = { replyTimeoutMs: t.replyTimeoutMs ?? 30_000, ackEveryRequest: true };
  if (server) return new VhostUserFrontend(await listenForBackend(id, socket, t), opts);
  try {
    return await VhostUserFrontend.connect(socket, { ...opts, retryForMs: t.retryForMs ?? 60_000, retryEveryMs: t.retryEveryMs ?? 100 });
  } catch (e) {
    throw new VhostUserDeviceError(`vhost-user device ${id}: cannot connect to ${socket}`, { id, socket, cause: String(e) });
  }
}

type Negotiated = NegotiatedLink;

/**
 * SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (SET_FEATURES waits for the guest). Without
 * protocol MQ the back-end serves `unsaid` queues, as Cloud Hypervisor assumes (1 for blk, 2 for net and fs).
 */
function negotiate(id: string, fe: VhostUserFrontend, wantProtocol: bigint, queues: number, unsaid: number): Negotiated {
  fe.setOwner();
  const backendFeatures = fe.getFeatures();
  let protocol = 0n;
  if (backendFeatures & F_PROTOCOL_FEATURES) {
    protocol = fe.getProtocolFeatures() & wantProtocol;
    fe.setProtocolFeatures(protocol);
  }
  checkQueueCount(id, queues, hasProtocolFeature(protocol, ProtocolFeature.MQ) ? fe.getQueueNum() : unsaid);
  // The guest drives a virtio 1.x device: a back-end that would take its rings and headers as legacy cannot serve it.
  if (!(backendFeatures & bits(VIRTIO_F_VERSION_1))) {
    throw new VhostUserProtocolError('the back-end does not offer VIRTIO_F_VERSION_1 (legacy-only back-ends are not supported)', { features: backendFeatures.toString(16) });
  }
  return { fe, backendFeatures, protocol };
}

interface Built {
  kind: VhostUserKind;
  deviceType: number;
  queueSizes: number[];
  features: bigint;
  config: Uint8Array;
  writable: [number, number][];
}

function buildBlk(c: DiskConfig, n: Negotiated): Built {
  if (!hasProtocolFeature(n.protocol, ProtocolFeature.CONFIG)) {
    throw new VhostUserDeviceError(`vhost-user disk ${c.id}: the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG`, { id: c.id });
  }
  const config = new Uint8Array(BLK_CONFIG_LEN);
  config.set(n.fe.getConfig(0, BLK_CONFIG_LEN));
  patchBlkConfig(config, c.numQueues);
  // The image is the back-end's: these keys can only tell the guest (readonly) or nobody (direct, serial).
  if (c.extra.readonly) log.warn({ id: c.id }, 'readonly=on: the guest sees a read-only disk; only the back-end can enforce it (start it with readonly=on)');
  if (c.extra.direct || c.extra.serial !== null) log.warn({ id: c.id }, 'direct= and serial= are the back-end\'s to set (e.g. kumo-vhost-user-blk direct=on,serial=...): ignored here');
  return {
    kind: 'blk',
    deviceType: VIRTIO_ID_BLOCK,
    queueSizes: Array<number>(c.numQueues).fill(c.queueSize),
    features: (n.backendFeatures & blkFeatureMask(c.numQueues)) | (c.extra.readonly ? bits(VIRTIO_BLK_F_RO) : 0n),
    config,
    writable: BLK_WRITABLE,
  };
}

function buildNet(c: NetConfig, n: Negotiated): Built {
  let features = (n.backendFeatures & netFeatureMask({ tso: c.extra.offloadTso, ufo: c.extra.offloadUfo, csum: c.extra.offloadCsum })) | NET_VMM_FEATURES;
  if (c.extra.mtu === null) features &= ~bits(VIRTIO_NET_F_MTU);
  return {
    kind: 'net',
    deviceType: VIRTIO_ID_NET,
    queueSizes: [c.queueSize, c.queueSize],
    features,
    config: netConfig(c.mac, c.extra.mtu ?? 0),
    writable: [],
  };
}

function buildFs(c: FsConfig, n: Negotiated): Built {
  return {
    kind: 'fs',
    deviceType: VIRTIO_ID_FS,
    queueSizes: Array<number>(c.numQueues + 1).fill(c.queueSize),
    features: n.backendFeatures & DEFAULT_VIRTIO_FEATURES,
    config: fsConfig(c.tag, c.numQueues),
    writable: [],
  };
}

function toSpec(id: string, b: Built, pciSlot: number | null): VhostUserDeviceSpec {
  const config = new SharedArrayBuffer(b.config.length);
  new Uint8Array(config).set(b.config);
  return {
    id,
    kind: b.kind,
    deviceType: b.deviceType,
    queueSizes: b.queueSizes,
    features: b.features & ~F_PROTOCOL_FEATURES,
    config,
    writable: b.writable,
    dirty: newDirtyRange(),
    configEventFd: eventfd(),
    pciSlot,
  };
}

export interface VhostUserAttachment {
  specs: VhostUserDeviceSpec[];
  links: Map<string, VhostUserLink>;
  close(): void;
}

type AnyDevice = { kind: 'blk'; c: DiskConfig } | { kind: 'net'; c: NetConfig } | { kind: 'fs'; c: FsConfig };

async function attachOne(d: AnyDevice, callFd: CallFdResolver, t: ConnectTiming): Promise<VhostUserLink> {
  const id = d.c.id ?? `_${d.kind}`;
  const server = d.kind === 'net' && d.c.vhostMode === 'Server';
  const fe = await open(id, d.c.socket, server, t);
  // Backends disagree on whether GET_QUEUE_NUM counts queues or pairs: one net pair is all kumo needs.
  const [wantProtocol, queues, unsaid] = d.kind === 'blk' ? [BLK_PROTOCOL_FEATURES, d.c.numQueues, 1]
    : d.kind === 'net' ? [NET_PROTOCOL_FEATURES, 1, 1] : [FS_PROTOCOL_FEATURES, d.c.numQueues + 1, 2];
  // A restarted virtio-fs back-end knows none of the guest's FUSE inodes and handles: only blk and net come back.
  const reconnect: Reconnect | null = d.kind === 'fs' ? null : async () => {
    const until = Date.now() + (t.reconnectForMs ?? t.retryForMs ?? 60_000);
    for (;;) {
      const again = await open(id, d.c.socket, server, { ...t, retryForMs: Math.max(0, until - Date.now()) });
      try {
        // The guest runs meanwhile, and its vCPUs wait on this thread: a back-end that took the connection but does
        // not answer (stopped, hung, a stale listener) must not block it. Its first reply is awaited here.
        await again.getFeaturesAnswered(Math.min(t.replyTimeoutMs ?? 30_000, Math.max(1, until - Date.now())));
        return negotiate(id, again, wantProtocol, queues, unsaid);
      } catch (e) {
        again.close();
        // A back-end still going away (its socket accepted, then reset) or one still starting: try again.
        if (Date.now() >= until) throw e;
        await sleep(t.retryEveryMs ?? 100);
      }
    }
  };
  try {
    let built: Built;
    const n = negotiate(id, fe, wantProtocol, queues, unsaid);
    if (d.kind === 'blk') built = buildBlk(d.c, n);
    else if (d.kind === 'net') built = buildNet(d.c, n);
    else built = buildFs(d.c, n);
    const spec = toSpec(id, built, d.c.pciDeviceId);
    log.info({ id, kind: d.kind, socket: d.c.socket, features: spec.features.toString(16), protocol: n.protocol.toString(16) }, 'vhost-user backend attached');
    return new VhostUserLink(spec, fe, n.backendFeatures, n.protocol, callFd, d.c.socket, reconnect);
  } catch (e) {
    fe.close();
    if (e instanceof VhostUserDeviceError) throw e;
    // A protocol error or a timeout: say which device and back-end, with several of them attached.
    const what = `vhost-user ${d.kind === 'blk' ? 'disk' : d.kind} ${id} (socket ${d.c.socket})`;
    const context = e instanceof KumoError ? e.context : {};
    throw new VhostUserDeviceError(`${what}: ${(e as Error).message}`, { ...context, id, socket: d.c.socket });
  }
}

/**
 * Connects every --disk/--net/--fs backend (in that order, the order their PCI functions get).
 * `callFd` maps an MSI GSI to the eventfd KVM uses as its irqfd.
 */
export async function attachVhostUserDevices(
  cfg: VhostUserDevicesConfig,
  callFd: CallFdResolver,
  timing: ConnectTiming = {},
): Promise<VhostUserAttachment> {
  const all: AnyDevice[] = [
    ...cfg.disks.map((c) => ({ kind: 'blk' as const, c })),
    ...cfg.net.map((c) => ({ kind: 'net' as const, c })),
    ...cfg.fs.map((c) => ({ kind: 'fs' as const, c })),
  ];
  const links = new Map<string, VhostUserLink>();
  const close = () => {
    for (const l of links.values()) l.close();
    links.clear();
  };
  try {
    for (const d of all) {
      const link = await attachOne(d, callFd, timing);
      links.set(link.spec.id, link);
    }
  } catch (e) {
    close();
    throw e;
  }
  return { specs: [...links.values()].map((l) => l.spec), links, close };
}
