/*
 * A paced HTTP/1.1 load for the generated-script scenario of build/bench-http.ts: N keep-alive
 * connections, requests sent on a fixed schedule (RATE a second in all, request k at
 * start + k / RATE on connection k mod N), whatever the server's answers do. A request whose
 * connection is still busy with its previous one waits, and its times still count from when it
 * was due, so a slow server cannot slow the load down and hide its own queue (coordinated
 * omission). Per request: the time to the first byte of the response and to its last byte.
 *
 *   http-paced HOST PORT --paths FILE [--connections 1000] [--rate 2000] [--seconds 10]
 *              [--warmup 2]
 *
 * FILE holds one path a line (/ipxe/52-54-00-00-00-01.ipxe); request k asks for line k mod
 * lines. Prints one JSON object: requests due and measured (the warm-up's left out), failures
 * (a status other than 200, a connection lost), the rate achieved and the percentiles in ms.
 *
 * Build: cc -O2 -o .bench/http-paced build/http-paced.c   (build/bench-http.ts does it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
  int fd;
  int busy;            /* a request is out and its response not yet whole */
  long queued;         /* requests due on this connection and not yet sent */
  double first;        /* its first response byte, 0 before */
  size_t have;         /* response bytes held in buf */
  long body_left;      /* -1 while the headers are incomplete */
  int status;
  char buf[8192];
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p) {
  if (n == 0) return -1;
  long i = (long)(p / 100.0 * n);
  return v[i >= n ? n - 1 : i] * 1000.0;
}

static char **paths;
static long npaths;
static const char *host;
static long sent_count;

static void send_next(struct conn *c, long k) {
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: http-paced\r\n\r\n", paths[k % npaths], host);
  /* a request is far below the socket's send buffer: one write */
  if (write(c->fd, req, n) != n) {
    perror("write");
    exit(1);
  }
  c->busy = 1;
  c->first = 0;
  c->have = 0;
  c->body_left = -1;
  sent_count++;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: http-paced HOST PORT --paths FILE [--connections N] [--rate R] [--seconds S] [--warmup W]\n");
    return 2;
  }
  host = argv[1];
  int port = atoi(argv[2]);
  const char *paths_file = NULL;
  long nconn = 1000;
  double rate = 2000, seconds = 10, warmup = 2;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--paths")) paths_file = argv[i + 1];
    else if (!strcmp(argv[i], "--connections")) nconn = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--warmup")) warmup = atof(argv[i + 1]);
    else {
      fprintf(stderr, "http-paced: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!paths_file) {
    fprintf(stderr, "http-paced: --paths FILE is required\n");
    return 2;
  }
  FILE *pf = fopen(paths_file, "r");
  if (!pf) {
    perror(paths_file);
    return 1;
  }
  long cap = 1024;
  paths = malloc(cap * sizeof *paths);
  char line[1024];
  while (fgets(line, sizeof line, pf)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) continue;
    if (npaths == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
    paths[npaths++] = strdup(line);
  }
  fclose(pf);
  if (npaths == 0) {
    fprintf(stderr, "http-paced: %s names no path\n", paths_file);
    return 1;
  }

  int ep = epoll_create1(0);
  struct conn *conns = calloc(nconn, sizeof *conns);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, host, &to.sin_addr);
  for (long i = 0; i < nconn; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
      perror("connect");
      return 1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    conns[i].fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }

  long total = (long)((warmup + seconds) * rate);
  long skip = (long)(warmup * rate);
  double *ttfb = calloc(total, sizeof *ttfb), *whole = calloc(total, sizeof *whole);
  long measured = 0, failures = 0, finished = 0, next = 0;
  /*
   * Request k goes on connection k mod N and was due at start + k / rate, so a connection's
   * queue is a count: the next it sends is `sent_on` * N + its index, up to `due_on`.
   */
  long *sent_on = calloc(nconn, sizeof *sent_on), *due_on = calloc(nconn, sizeof *due_on);

  double start = now() + 0.05;
  struct epoll_event events[256];
  double deadline = start + warmup + seconds + 30;
  while (finished < total && now() < deadline) {
    double t = now();
    while (next < total && start + next / rate <= t) {
      long ci = next % nconn;
      next++;
      due_on[ci]++;
      struct conn *c = &conns[ci];
      if (!c->busy && c->fd >= 0) send_next(c, sent_on[ci]++ * nconn + ci);
    }
    int wait_ms = next < total ? (int)((start + next / rate - now()) * 1000) : 100;
    if (wait_ms < 0) wait_ms = 0;
    int n = epoll_wait(ep, events, 256, wait_ms);
    double at = now();
    for (int e = 0; e < n; e++) {
      long ci = (long)events[e].data.u64;
      struct conn *c = &conns[ci];
      for (;;) {
        ssize_t got = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
        if (got < 0 && errno == EAGAIN) break;
        if (got <= 0) {
          /* the connection is gone: what it had out, and what is still due on it, fails */
          long owed = (c->busy ? 1 : 0) + (total - 1 - ci) / nconn + 1 - sent_on[ci];
          failures += owed;
          finished += owed;
          c->busy = 0;
          epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
          close(c->fd);
          c->fd = -1;
          break;
        }
        if (!c->busy) continue; /* bytes nobody asked for */
        if (c->first == 0) c->first = at;
        c->have += got;
        if (c->body_left < 0) {
          c->buf[c->have < sizeof c->buf ? c->have : sizeof c->buf - 1] = 0;
          char *end = strstr(c->buf, "\r\n\r\n");
          if (!end) continue;
          c->status = atoi(c->buf + 9);
          char *cl = strcasestr(c->buf, "\r\ncontent-length:");
          long length = cl ? atol(cl + 17) : 0;
          size_t header = (size_t)(end + 4 - c->buf);
          c->body_left = length - (long)(c->have - header);
          c->have = 0;
        } else {
          c->body_left -= got;
          c->have = 0;
        }
        if (c->body_left > 0) continue;
        long k = (sent_on[ci] - 1) * nconn + ci;
        double due = start + k / rate;
        if (k >= skip) {
          ttfb[measured] = c->first - due;
          whole[measured] = at - due;
          measured++;
        }
        if (c->status != 200) failures++;
        finished++;
        c->busy = 0;
        if (sent_on[ci] < due_on[ci]) send_next(c, sent_on[ci]++ * nconn + ci);
      }
    }
  }
  failures += total - finished;
  qsort(ttfb, measured, sizeof *ttfb, cmp);
  qsort(whole, measured, sizeof *whole, cmp);
  printf("{\"due\":%ld,\"sent\":%ld,\"measured\":%ld,\"failures\":%ld,\"rate\":%.1f,"
         "\"ttfb_p50_ms\":%.3f,\"ttfb_p99_ms\":%.3f,\"ttfb_max_ms\":%.3f,\"whole_p50_ms\":%.3f,\"whole_p99_ms\":%.3f}\n",
         total, sent_count, measured, failures, measured / seconds, pct(ttfb, measured, 50), pct(ttfb, measured, 99),
         pct(ttfb, measured, 100), pct(whole, measured, 50), pct(whole, measured, 99));
  return 0;
}
