/*
 * A lean TFTP read load generator for the peer benchmark's storm scenarios (closed loop, one
 * UDP socket per session, epoll). `tftpd bench` is the product's load generator; on a 2-CPU
 * machine it needs a whole core for a boot storm, so the storms measure the client as much as
 * the servers. This one does the same work in C with a fraction of the CPU, leaving the rest
 * to the server under test. Same command line and JSON as `tftpd bench --json` for what it
 * supports:
 *
 *   loadgen HOST:PORT --concurrency N --total N --file NAME [--blksize N] [--windowsize N]
 *           [--tsize] [--timeout S] [--retries N] [--sources N] [--json]
 *
 * --sources N: the sessions' sockets are bound to N addresses of 127.0.0.0/8 (127.1.0.1,
 * 127.1.0.2, ...; loopback answers to all of them), one per session in turn, as each PXE
 * client has an address of its own, so per-address limits stay at the product's defaults.
 *
 * first_response_ms runs from a request's send to the moment this program read the reply; in
 * a storm it includes this program's own lateness (its start loop alone sends a thousand
 * requests before it reads anything). first_arrival_ms runs to the moment the reply reached
 * the session's socket, by the kernel's receive time stamp (SO_TIMESTAMPNS): the server's
 * part without the client's.
 *
 * Build: cc -O2 -o .bench/loadgen build/loadgen.c   (build/bench-peers.ts --lean-client does it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { IDLE, WAIT_FIRST, RUNNING };

struct session {
  int fd;
  int state;
  uint16_t tid;          /* the server's transfer port, once it answered */
  uint32_t expected;     /* next block wanted (absolute) */
  uint64_t bytes;
  double started, deadline;
  int tries;
  int window;            /* the windowsize the server acknowledged (1 when its OACK left it out) */
  unsigned char last[600]; /* the last datagram sent: RRQ or ACK, resent on timeout */
  int last_len;
  int to_server_port;    /* where `last` goes */
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* CLOCK_REALTIME minus CLOCK_MONOTONIC, in ms: the kernel stamps datagrams in real time */
static double realtime_offset_ms;

static void measure_realtime_offset(void) {
  struct timespec real;
  clock_gettime(CLOCK_REALTIME, &real);
  realtime_offset_ms = real.tv_sec * 1e3 + real.tv_nsec / 1e6 - now_ms();
}

/* When the datagram `msg` was read from reached its socket (now_ms's clock), or -1 unstamped. */
static double arrival_ms(struct msghdr *msg) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_TIMESTAMPNS) continue;
    struct timespec at;
    memcpy(&at, CMSG_DATA(c), sizeof at);
    return at.tv_sec * 1e3 + at.tv_nsec / 1e6 - realtime_offset_ms;
  }
  return -1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void percentiles(const char *name, double *v, int n, int comma) {
  if (n == 0) {
    printf("\"%s\":{\"p50\":null,\"p90\":null,\"p99\":null,\"max\":null}%s", name, comma ? "," : "");
    return;
  }
  qsort(v, n, sizeof *v, cmp_double);
#define AT(q) v[(int)((n - 1) * (q) + 0.5)]
  printf("\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}%s", name, AT(0.5), AT(0.9), AT(0.99), v[n - 1], comma ? "," : "");
}

static struct sockaddr_in server;
static const char *file = NULL;
static int blksize = 512, windowsize = 1, tsize = 0, timeout_ms = 1000, retries = 5, sources = 0;

/* A socket for session `i`: bound to the i-th source address when --sources is given. */
static int session_socket(int i) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  int on = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
  if (fd < 0 || sources <= 0) return fd;
  int k = i % sources;
  struct sockaddr_in local = { .sin_family = AF_INET, .sin_port = 0 };
  local.sin_addr.s_addr = htonl((127u << 24) | (1u << 16) | (uint32_t)(k / 250) << 8 | (uint32_t)(k % 250 + 1));
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0) { perror("loadgen: bind"); exit(1); }
  return fd;
}

static void sendto_server(struct session *s) {
  server.sin_port = htons(s->to_server_port);
  sendto(s->fd, s->last, s->last_len, 0, (struct sockaddr *)&server, sizeof server);
}

static void start(struct session *s, int listen_port) {
  unsigned char *p = s->last;
  *p++ = 0; *p++ = 1;
  p += sprintf((char *)p, "%s", file) + 1;
  p += sprintf((char *)p, "octet") + 1;
  if (blksize != 512) { p += sprintf((char *)p, "blksize") + 1; p += sprintf((char *)p, "%d", blksize) + 1; }
  if (windowsize != 1) { p += sprintf((char *)p, "windowsize") + 1; p += sprintf((char *)p, "%d", windowsize) + 1; }
  if (tsize) { p += sprintf((char *)p, "tsize") + 1; p += sprintf((char *)p, "0") + 1; }
  s->last_len = p - s->last;
  s->to_server_port = listen_port;
  s->state = WAIT_FIRST;
  s->tid = 0;
  s->expected = 1;
  s->bytes = 0;
  s->tries = 0;
  s->window = 1;
  s->started = now_ms();
  s->deadline = s->started + timeout_ms;
  sendto_server(s);
}

static void ack(struct session *s, uint16_t block) {
  s->last[0] = 0; s->last[1] = 4; s->last[2] = block >> 8; s->last[3] = block & 0xff;
  s->last_len = 4;
  s->to_server_port = s->tid;
  sendto_server(s);
}

int main(int argc, char **argv) {
  const char *target = NULL;
  int concurrency = 10, total = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--concurrency") && v) concurrency = atoi(argv[++i]);
    else if (!strcmp(a, "--total") && v) total = atoi(argv[++i]);
    else if (!strcmp(a, "--file") && v) file = argv[++i];
    else if (!strcmp(a, "--blksize") && v) blksize = atoi(argv[++i]);
    else if (!strcmp(a, "--windowsize") && v) windowsize = atoi(argv[++i]);
    else if (!strcmp(a, "--sources") && v) sources = atoi(argv[++i]);
    else if (!strcmp(a, "--timeout") && v) timeout_ms = atoi(argv[++i]) * 1000;
    else if (!strcmp(a, "--retries") && v) retries = atoi(argv[++i]);
    else if (!strcmp(a, "--tsize")) tsize = 1;
    else if (!strcmp(a, "--json")) { /* always JSON */ }
    else if (a[0] != '-' && !target) target = a;
    else { fprintf(stderr, "loadgen: unsupported option %s\n", a); return 2; }
  }
  if (!target || !file) { fprintf(stderr, "loadgen: HOST:PORT and --file are required\n"); return 2; }
  if (total < 0) total = concurrency * 10;
  if (concurrency > total) concurrency = total;
  char host[64];
  const char *colon = strrchr(target, ':');
  int listen_port = colon ? atoi(colon + 1) : 69;
  snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - target) : (int)strlen(target), target);
  server.sin_family = AF_INET;
  if (inet_pton(AF_INET, host, &server.sin_addr) != 1) { fprintf(stderr, "loadgen: %s is not an IPv4 address\n", host); return 2; }

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  measure_realtime_offset();
  int ep = epoll_create1(0);
  struct session *ss = calloc(concurrency, sizeof *ss);
  double *first = malloc(sizeof(double) * total), *arrived = malloc(sizeof(double) * total), *whole = malloc(sizeof(double) * total);
  int nfirst = 0, narrived = 0, nwhole = 0, started = 0, done = 0, failed = 0, timeouts = 0, errors = 0;
  uint64_t bytes = 0, retransmits = 0;
  for (int i = 0; i < concurrency; i++) {
    struct session *s = &ss[i];
    s->fd = session_socket(i);
    if (s->fd < 0) { perror("loadgen: socket"); return 1; }
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
  }
  double t0 = now_ms();
  for (int i = 0; i < concurrency; i++) { start(&ss[i], listen_port); started++; }

  struct epoll_event events[1024];
  unsigned char buf[65536 + 4];
  double next_sweep = now_ms() + 10;
  while (done < total) {
    int n = epoll_wait(ep, events, 1024, 10);
    for (int e = 0; e < n; e++) {
      struct session *s = &ss[events[e].data.u32];
      for (;;) {
        struct sockaddr_in from;
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
        char control[CMSG_SPACE(sizeof(struct timespec))];
        struct msghdr msg = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
        ssize_t len = recvmsg(s->fd, &msg, 0);
        if (len < 0) break;
        if (s->state == IDLE || len < 4) continue;
        uint16_t op = buf[0] << 8 | buf[1];
        uint16_t port = ntohs(from.sin_port);
        if (s->state == WAIT_FIRST) {
          s->tid = port;
          first[nfirst++] = now_ms() - s->started;
          double at = arrival_ms(&msg);
          if (at >= 0) arrived[narrived++] = at - s->started;
          s->state = RUNNING;
        } else if (port != s->tid) continue;
        int finished = 0;
        if (op == 6) { /* OACK */
          /* the window is what the server acknowledged: a server without RFC 7440 leaves it out */
          for (ssize_t at = 2; at < len;) {
            const char *key = (const char *)buf + at;
            size_t klen = strnlen(key, len - at);
            if (at + (ssize_t)klen + 1 >= len) break;
            const char *val = key + klen + 1;
            size_t vlen = strnlen(val, len - at - klen - 1);
            if (!strcasecmp(key, "windowsize")) s->window = atoi(val) > 0 ? atoi(val) : 1;
            at += klen + 1 + vlen + 1;
          }
          if (s->expected == 1) ack(s, 0);
        } else if (op == 3) { /* DATA */
          uint16_t wire = buf[2] << 8 | buf[3];
          if (wire == (uint16_t)s->expected) {
            s->bytes += len - 4;
            if (len - 4 < blksize) finished = 1;
            /* RFC 7440: the last block of a window (or of the file) is acknowledged */
            if (finished || s->expected % s->window == 0) ack(s, wire);
            s->expected++;
            s->tries = 0;
          } else if (s->window == 1 && wire == (uint16_t)(s->expected - 1)) {
            ack(s, wire); /* our ACK was lost: say it again */
          } else if (s->window > 1 && (uint16_t)(wire - s->expected) < 0x8000) {
            ack(s, (uint16_t)(s->expected - 1)); /* a gap: what arrived in order, RFC 7440 §4 */
          }
        } else if (op == 5) { /* ERROR */
          errors++; failed++; done++;
          s->state = IDLE;
        }
        if (finished) {
          whole[nwhole++] = now_ms() - s->started;
          bytes += s->bytes;
          done++;
          s->state = IDLE;
        }
        if (s->state != IDLE) s->deadline = now_ms() + timeout_ms;
        else if (started < total) {
          /* a fresh socket per transfer: a new TID, as a new client would have */
          epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
          close(s->fd);
          s->fd = session_socket(events[e].data.u32);
          struct epoll_event ev = { .events = EPOLLIN, .data.u32 = events[e].data.u32 };
          epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
          start(s, listen_port);
          started++;
          break;
        }
      }
    }
    double t = now_ms();
    if (t >= next_sweep) {
      next_sweep = t + 10;
      for (int i = 0; i < concurrency; i++) {
        struct session *s = &ss[i];
        if (s->state == IDLE || t < s->deadline) continue;
        if (++s->tries > retries) {
          timeouts++; failed++; done++;
          s->state = IDLE;
          if (started < total) { start(s, listen_port); started++; }
          continue;
        }
        retransmits++;
        s->deadline = t + timeout_ms;
        sendto_server(s);
      }
    }
  }
  double wall = (now_ms() - t0) / 1e3;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  printf("{\"target\":\"%s\",\"files\":[\"%s\"],\"concurrency\":%d,\"rate\":null,\"requested\":%d,\"completed\":%d,\"failed\":%d,", target, file, concurrency, started, nwhole, failed);
  printf("\"failures\":{");
  int c = 0;
  if (timeouts) printf("%s\"timeout\":%d", c++ ? "," : "", timeouts);
  if (errors) printf("%s\"server error\":%d", c++ ? "," : "", errors);
  printf("},\"bytes\":%llu,\"wall_s\":%.3f,\"goodput_mbps\":%.3f,\"transfers_per_s\":%.3f,", (unsigned long long)bytes, wall, bytes * 8 / 1e6 / wall, nwhole / wall);
  percentiles("first_response_ms", first, nfirst, 1);
  percentiles("first_arrival_ms", arrived, narrived, 1);
  percentiles("transfer_ms", whole, nwhole, 1);
  printf("\"retransmits\":%llu,\"cpu_s\":{\"user\":%.3f,\"system\":%.3f},\"cpu_pct\":%.1f,\"late_starts\":0}\n", (unsigned long long)retransmits, user, sys, (user + sys) / wall * 100);
  return failed > 0 ? 1 : 0;
}
