export { LabError, LabTimeoutError } from './errors.js';
export { runInLab, QEMU, VIRTIOFSD, type LabOptions, type LabResult } from './lab.js';
export { probeBoot, type ProbeResult, type ProbeSpec, type ProbeVariant } from './boot-probe.js';
