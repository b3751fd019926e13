// Device model for the PIO exit benchmark: port 0x10 is a data register that counts writes and checks
// the value sequence; a write to 0x11 requests poweroff.
import type { CreateVcpuModel } from '../../vmm/vcpu/io.js';

export const createVcpuModel: CreateVcpuModel = (ctx) => {
  const counter = new Int32Array(ctx.data as SharedArrayBuffer);
  let expect = 0;
  return {
    pio: {
      read(_port, data) {
        data.fill(0xff);
        return false;
      },
      write(port, data) {
        if (port === 0x10) {
          if (data[0] !== (expect & 0xff)) counter[1]++; // value mismatches
          expect = data[0] + 1;
          counter[0]++;
          return true;
        }
        if (port === 0x11) {
          ctx.events({ type: 'poweroff', source: 'bench' });
          return true;
        }
        return false;
      },
    },
    mmio: { read: (_a, d) => (d.fill(0xff), false), write: () => false },
  };
};
