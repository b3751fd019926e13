import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { QEMU, VIRTIOFSD } from '../../vmm/lab/lab.js';

/** Why a lab test cannot run here (printed and the suite skipped), or null when it can. */
export function whyNoLab(testFile: string): string | null {
  let why: string | null = null;
  if (process.env.KUMO_IN_LAB === '1') why = 'already inside the lab';
  else if (process.getuid?.() !== 0) why = 'the lab needs root';
  else if (spawnSync(QEMU, ['--version']).status !== 0) why = `${QEMU} missing (apt-get install qemu-system-x86)`;
  else if (!fs.existsSync(VIRTIOFSD)) why = `${VIRTIOFSD} missing (apt-get install qemu-system-x86)`;
  if (why) console.warn(`${testFile} skipped: ${why}`);
  return why;
}
