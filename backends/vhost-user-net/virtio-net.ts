// Link-layer sizes and header offsets the net data path needs beyond protocol/virtio's constants.
export { VIRTIO_NET_HDR_SIZE as NET_HDR_LEN } from '../../protocol/virtio/net.js';

/** Without VERSION_1 and MRG_RXBUF the header has no num_buffers field. */
export const NET_HDR_LEN_LEGACY = 10;
/** Offset of num_buffers in the 12-byte header. */
export const NET_HDR_NUM_BUFFERS = 10;

export const ETH_HLEN = 14;
export const VLAN_HLEN = 4;
/** Largest frame a GSO header may describe (64 KiB IP packet plus link headers). */
export const MAX_GSO_FRAME = 65535 + ETH_HLEN + VLAN_HLEN;
