/** virtio device ids (virtio 1.x §5). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_BALLOON = 5;
export const VIRTIO_ID_SCSI = 8;
export const VIRTIO_ID_VSOCK = 19;
export const VIRTIO_ID_IOMMU = 23;
export const VIRTIO_ID_MEM = 24;
export const VIRTIO_ID_FS = 26;
export const VIRTIO_ID_PMEM = 27;
