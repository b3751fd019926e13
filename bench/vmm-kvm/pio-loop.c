/* Minimal KVM PIO exit loop: the same real-mode guest as kumo's benchmark (out 0x10,al; inc al; loop),
 * no irqchip, memory at 0. Prints "<exits> <seconds>". */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
  unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 100000;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  size_t memsz = 1 << 20;
  unsigned char *mem = mmap(0, memsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  unsigned char code[] = {0x66, 0xb9, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >> 24) & 0xff,
                          0xe6, 0x10, 0xfe, 0xc0, 0x67, 0xe2, 0xf9, 0xb0, 0x00, 0xe6, 0x11, 0xf4};
  memcpy(mem + 0x1000, code, sizeof code);
  struct kvm_userspace_memory_region r = {0, 0, 0, memsz, (unsigned long)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { perror("region"); return 1; }
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(0, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct kvm_sregs s; ioctl(vcpu, KVM_GET_SREGS, &s); s.cs.base = 0; s.cs.selector = 0; ioctl(vcpu, KVM_SET_SREGS, &s);
  struct kvm_regs g; memset(&g, 0, sizeof g); g.rip = 0x1000; g.rflags = 2; ioctl(vcpu, KVM_SET_REGS, &g);
  unsigned long exits = 0, bad = 0; unsigned char expect = 0;
  struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) { perror("run"); return 1; }
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %d\n", run->exit_reason); return 1; }
    unsigned char v = *((unsigned char *)run + run->io.data_offset);
    if (run->io.port == 0x10) { if (v != expect) bad++; expect = v + 1; exits++; }
    else if (run->io.port == 0x11) break;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("%lu %.6f %lu\n", exits, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, bad);
  return 0;
}
