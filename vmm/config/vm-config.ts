import { ConsoleConfig } from './console.js';
import { CpusConfig } from './cpus.js';
import { MemoryConfig } from './memory.js';
import { PayloadConfig } from './payload.js';
import { RngConfig } from './rng.js';
import { validateVhostUserDevices, type VhostUserDevicesConfig } from './vhost-user-devices.js';

/** The VM part kumo's CLI builds (same JSON field names as Cloud Hypervisor's VmConfig). */
export class VmConfig {
  constructor(
    readonly payload: PayloadConfig,
    readonly cpus = new CpusConfig(),
    readonly memory = new MemoryConfig(),
    readonly serial = new ConsoleConfig('Null'),
    readonly console = new ConsoleConfig('Tty'),
    readonly rng = new RngConfig(),
    /** --disk / --net / --fs (vhost-user backends). */
    readonly vhostUser: VhostUserDevicesConfig = { disks: [], net: [], fs: [] },
  ) {}

  validate(): void {
    this.payload.validate();
    this.cpus.validate();
    this.memory.validate();
    this.serial.validate();
    this.console.validate();
    this.rng.validate();
    validateVhostUserDevices(this.vhostUser, this.memory, this.cpus.boot);
  }

  toJSON(): Record<string, unknown> {
    return {
      payload: this.payload.toJSON(),
      cpus: this.cpus.toJSON(),
      memory: this.memory.toJSON(),
      serial: this.serial.toJSON(),
      console: this.console.toJSON(),
      rng: this.rng.toJSON(),
      disks: this.vhostUser.disks.map((d) => d.toJSON()),
      net: this.vhostUser.net.map((n) => n.toJSON()),
      fs: this.vhostUser.fs.map((f) => f.toJSON()),
    };
  }
}
