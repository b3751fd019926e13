import { describe, expect, it } from 'vitest';
import { parseArgs } from '../../backends/virtiofsd/cli.js';

// Spellings virtiofsd (Rust) accepts that launchers and scripts still pass: each must mean what it means there.
const args = (...extra: string[]): string[] => ['--socket-path=/s', '--shared-dir=/d', ...extra];

describe('kumo-virtiofsd command line, as virtiofsd reads it', () => {
  it("takes virtiofsd's log levels, off included, and QEMU virtiofsd's -o spellings of them", () => {
    const level = (...a: string[]): string | null => parseArgs(args(...a)).logLevel;
    expect([level('--log-level=error'), level('--log-level', 'warn'), level('--log-level=info'), level('--log-level=debug'),
      level('--log-level=trace'), level('--log-level=off')]).toEqual(['error', 'warn', 'info', 'debug', 'trace', 'silent']);
    expect([level('-o', 'loglevel=err'), level('-o', 'log_level=warning'), level('-d'), level()]).toEqual(['error', 'warn', 'debug', null]);
    expect(() => parseArgs(args('--log-level=loud'))).toThrow(/--log-level must be one of error\|err\|warn/);
    expect(parseArgs(args('--log-level=INFO')).logLevel).toBe('info');
    expect(parseArgs(args('--log-level=Off')).logLevel).toBe('silent');
  });
  it('takes --cache and --sandbox values in any case, as virtiofsd does', () => {
    expect(parseArgs(args('--cache=Auto', '--sandbox=None')).fs).toMatchObject({ cache: 'auto', sandbox: 'none' });
    expect(parseArgs(args('--cache=NONE')).fs.cache).toBe('never');
  });


  it('refuses a value on a flag, a number that is not plain decimal digits, and -o with nothing after it', () => {
    expect(() => parseArgs(args('--readonly=false'))).toThrow(/readonly takes no value/);
    expect(() => parseArgs(args('-o', 'writeback=no'))).toThrow(/writeback takes no value/);
    expect(() => parseArgs(args('--xattr=on'))).toThrow(/xattr takes no value/);
    for (const v of ['', '0x10', '1e3', ' 7', '-1', '7.5']) {
      expect(() => parseArgs(args(`--thread-pool-size=${v}`)), v).toThrow(/non-negative integer/);
      expect(() => parseArgs(args(`--rlimit-nofile=${v}`)), v).toThrow(/non-negative integer/);
    }
    expect(parseArgs(args('--thread-pool-size=16')).threadPoolSize).toBe(16);
    expect(() => parseArgs(args('-o'))).toThrow(/missing argument after -o/);
  });

  it("takes QEMU virtiofsd's -o no_allow_direct_io and -o debug", () => {
    expect(parseArgs(args('-o', 'allow_direct_io,no_allow_direct_io')).fs.allowDirectIo).toBe(false);
    expect(parseArgs(args('-o', 'debug')).logLevel).toBe('debug');
  });

  it('accepts the deprecated --socket and --inode-file-handles=fallback, and says they are deprecated', () => {
    const cfg = parseArgs(['--socket', '/run/x.sock', '--shared-dir=/d', '--inode-file-handles=fallback']);
    expect([cfg.socketPath, cfg.fs.inodeFileHandles]).toEqual(['/run/x.sock', 'prefer']);
    expect(cfg.deprecated).toEqual(['--socket is deprecated: use --socket-path', "--inode-file-handles=fallback is deprecated: use 'prefer'"]);
    expect(parseArgs(args()).deprecated).toEqual([]);
  });

  it('refuses --posix-acl without xattrs, as virtiofsd does (the guest was granted ACLs and got ENOSYS for each)', () => {
    expect(() => parseArgs(args('--posix-acl', '-o', 'no_xattr'))).toThrow(/--posix-acl needs xattrs/);
    expect(parseArgs(args('--posix-acl')).fs.xattr).toBe(true);
  });

  it('refuses --translate-uid/gid together with --posix-acl, as virtiofsd does', () => {
    expect(() => parseArgs(args('--posix-acl', '--translate-uid=map:0:1000:1'))).toThrow(/cannot be used with --posix-acl/);
    expect(() => parseArgs(args('-o', 'posix_acl', '--translate-gid=squash-guest:0:1000:10'))).toThrow(/cannot be used with --posix-acl/);
    expect(parseArgs(args('--posix-acl', '-o', 'no_posix_acl', '--translate-uid=map:0:1000:1')).fs.posixAcl).toBe(false);
  });
});
