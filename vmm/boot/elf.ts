import { BootError } from './errors.js';

export const PT_LOAD = 1;
export const PT_NOTE = 4;
/** XEN_ELFNOTE_PHYS32_ENTRY: the PVH 32-bit entry point. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export interface ElfSegment {
  type: number;
  offset: number;
  paddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfImage {
  entry: number;
  segments: ElfSegment[];
  /** PVH entry from the Xen note, or null when the kernel has none. */
  pvhEntry: number | null;
}

export function isElf(buf: Uint8Array): boolean {
  return buf.length >= 4 && buf[0] === 0x7f && buf[1] === 0x45 && buf[2] === 0x4c && buf[3] === 0x46;
}

function u64(b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BootError(`ELF ${what} out of range`, { value: '0x' + v.toString(16) });
  return Number(v);
}

/** Parses a 64-bit little-endian x86_64 ELF's program headers and PVH note; hostile input gives BootError. */
export function parseElf(b: Buffer): ElfImage {
  if (b.length < 64 || !isElf(b)) throw new BootError('not an ELF file');
  if (b[4] !== 2 || b[5] !== 1) throw new BootError('ELF kernel must be 64-bit little-endian');
  if (b.readUInt16LE(18) !== 0x3e) throw new BootError('ELF kernel is not for x86_64', { machine: b.readUInt16LE(18) });
  const entry = u64(b, 24, 'entry');
  const phoff = u64(b, 32, 'program header offset');
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  if (phentsize < 56 || phnum === 0 || phoff + phnum * phentsize > b.length) {
    throw new BootError('ELF program headers are truncated or malformed', { phoff, phentsize, phnum });
  }
  const segments: ElfSegment[] = [];
  let pvhEntry: number | null = null;
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    const seg: ElfSegment = {
      type: b.readUInt32LE(o),
      offset: u64(b, o + 8, 'segment offset'),
      paddr: u64(b, o + 24, 'segment address'),
      filesz: u64(b, o + 32, 'segment file size'),
      memsz: u64(b, o + 40, 'segment memory size'),
    };
    if (seg.type !== PT_LOAD && seg.type !== PT_NOTE) continue;
    if (seg.offset + seg.filesz > b.length) throw new BootError('ELF segment extends past the end of the file', { ...seg });
    if (seg.type === PT_LOAD) {
      if (seg.filesz > seg.memsz) throw new BootError('ELF segment file size exceeds its memory size', { ...seg });
      segments.push(seg);
    } else {
      pvhEntry ??= findPvhNote(b.subarray(seg.offset, seg.offset + seg.filesz));
    }
  }
  if (segments.length === 0) throw new BootError('ELF kernel has no loadable segments');
  return { entry, segments, pvhEntry };
}

const align4 = (n: number) => (n + 3) & ~3;

function findPvhNote(notes: Buffer): number | null {
  let o = 0;
  while (o + 12 <= notes.length) {
    const namesz = notes.readUInt32LE(o);
    const descsz = notes.readUInt32LE(o + 4);
    const type = notes.readUInt32LE(o + 8);
    const nameOff = o + 12;
    const descOff = nameOff + align4(namesz);
    const next = descOff + align4(descsz);
    if (next > notes.length || namesz > notes.length || descsz > notes.length) return null;
    const name = notes.subarray(nameOff, nameOff + namesz).toString('latin1').replace(/\0+$/, '');
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && (descsz === 4 || descsz === 8)) {
      return notes.readUInt32LE(descOff);
    }
    o = next;
  }
  return null;
}
