/* The TAP's own limit, for bench/net.ts: a minimal native loop on a TAP or packet socket.
 *   taploop write  <tap> <hexframe> <seconds>   create/attach TAP (vnet hdr 12), bring it up, write frames
 *   taploop read   <tap> <seconds>              create/attach TAP, count frames read
 *   taploop inject <ifname> <hexframe> <seconds> AF_PACKET sendto() loop out of an interface
 * Prints one JSON line: {"frames":N,"seconds":S}. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

unsigned int if_nametoindex(const char *ifname); /* <net/if.h> clashes with <linux/if.h> */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int hex(const char *s, unsigned char *out, int max) {
  int n = 0;
  while (s[0] && s[1] && n < max) {
    unsigned v;
    sscanf(s, "%2x", &v);
    out[n++] = (unsigned char)v;
    s += 2;
  }
  return n;
}

static int open_tap(const char *name, int flags) {
  int fd = open("/dev/net/tun", O_RDWR | flags);
  if (fd < 0) { perror("open tun"); exit(1); }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); exit(1); }
  int hdr = 12;
  if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) { perror("TUNSETVNETHDRSZ"); exit(1); }
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: see source\n"); return 2; }
  unsigned char buf[65536];
  long frames = 0;
  double t0, t1;
  if (!strcmp(argv[1], "write") && argc == 5) {
    int fd = open_tap(argv[2], 0);
    memset(buf, 0, 12);
    int len = 12 + hex(argv[3], buf + 12, sizeof buf - 12);
    double secs = atof(argv[4]);
    t0 = now();
    t1 = t0;
    while (t1 - t0 < secs) {
      for (int i = 0; i < 256; i++) if (write(fd, buf, len) == len) frames++;
      t1 = now();
    }
  } else if (!strcmp(argv[1], "read") && argc == 4) {
    int fd = open_tap(argv[2], O_NONBLOCK);
    double secs = atof(argv[3]);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    printf("{\"started\":true}\n");
    fflush(stdout);
    t0 = now();
    t1 = t0;
    while (t1 - t0 < secs) {
      if (poll(&p, 1, 50) > 0) {
        for (int i = 0; i < 256; i++) {
          if (read(fd, buf, sizeof buf) <= 0) break;
          frames++;
        }
      }
      t1 = now();
    }
  } else if (!strcmp(argv[1], "inject") && argc == 5) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) { perror("socket"); return 1; }
    struct sockaddr_ll a;
    memset(&a, 0, sizeof a);
    a.sll_family = AF_PACKET;
    a.sll_ifindex = if_nametoindex(argv[2]);
    a.sll_halen = 6;
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    int len = hex(argv[3], buf, sizeof buf);
    double secs = atof(argv[4]);
    t0 = now();
    t1 = t0;
    while (t1 - t0 < secs) {
      for (int i = 0; i < 256; i++) if (sendto(s, buf, len, 0, (struct sockaddr *)&a, sizeof a) == len) frames++;
      t1 = now();
    }
  } else {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  printf("{\"frames\":%ld,\"seconds\":%.6f}\n", frames, t1 - t0);
  return 0;
}
