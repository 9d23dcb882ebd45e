/* Kernel mode in a network namespace with a real TCP connection, through the C ABI only.
   Usage: kernel_scenario NETNS_PATH GUEST_IPV4 PORT (run by kernel_netns.sh as root). */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static struct autostandby_status status_of(autostandby_controller *c, uint64_t key) {
  struct autostandby_status st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CALL_OK(autostandby_status, c, key, &st);
  return st;
}

/* Waits up to `ms` for the instance to reach `status` with `reason`. */
static int wait_status(autostandby_controller *c, uint64_t key, uint32_t status,
                       uint32_t reason, long ms) {
  for (long waited = 0; waited <= ms; waited += 20) {
    struct autostandby_status now = status_of(c, key);
    if (now.status == status && now.reason == reason) return 1;
    sleep_ms(20);
  }
  struct autostandby_status st = status_of(c, key);
  fprintf(stderr, "waited for %s: status %s, reason %s, active %u\n",
          autostandby_status_name(status), autostandby_status_name(st.status),
          autostandby_reason_name(st.reason), st.active_inbound);
  return 0;
}

/* Polls (blocking up to `ms`) and returns 1 when a STANDBY for `key` arrived. */
static int poll_standby(autostandby_controller *c, uint64_t key, uint32_t ms) {
  autostandby_decision out[16];
  size_t n = 0;
  CALL_OK(autostandby_poll_decisions, c, out, 16, &n, ms);
  for (size_t i = 0; i < n; i++)
    if (out[i].kind == AUTOSTANDBY_DECISION_STANDBY && out[i].key == key) return 1;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s NETNS_PATH GUEST_IPV4 PORT\n", argv[0]);
    return 2;
  }
  struct in_addr guest;
  CHECK(inet_pton(AF_INET, argv[2], &guest) == 1);
  uint16_t port = (uint16_t)atoi(argv[3]);

  autostandby_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.mode = AUTOSTANDBY_MODE_KERNEL;
  cfg.netns_path = argv[1];
  cfg.events_sysctl = AUTOSTANDBY_EVENTS_SYSCTL_ENABLE;
  autostandby_controller *c = NULL;
  CALL_OK(autostandby_controller_new, &cfg, &c);

  /* Manual-only calls are refused in kernel mode. */
  CALL_EXPECT(AUTOSTANDBY_ERR_WRONG_MODE, autostandby_advance_clock(c, 1, &err_));

  autostandby_policy policy;
  memset(&policy, 0, sizeof policy);
  policy.struct_size = sizeof policy;
  policy.enabled = true;
  policy.idle_timeout_ms = 1000;
  policy.tcp = true;

  autostandby_ip addr = {AUTOSTANDBY_FAMILY_IPV4, {0}};
  memcpy(addr.addr, &guest.s_addr, 4);
  autostandby_instance inst;
  memset(&inst, 0, sizeof inst);
  inst.struct_size = sizeof inst;
  inst.addresses = &addr;
  inst.addresses_len = 1;
  inst.policy = &policy;
  inst.lifecycle = AUTOSTANDBY_LIFECYCLE_RUNNING;
  inst.network_enabled = true;
  const uint64_t key = 1;
  CALL_OK(autostandby_register, c, key, &inst);

  /* Connect and keep the connection open: active, and no standby past the timeout. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr = guest;
  CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
  CHECK(write(fd, "ping\n", 5) == 5);
  /* Right after registration the status is active / resync_pending until the first dump
     of the instance's addresses: wait for the connection itself. */
  CHECK(wait_status(c, key, AUTOSTANDBY_STATUS_ACTIVE,
                    AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS, 5000));
  CHECK(status_of(c, key).active_inbound >= 1);

  autostandby_flow_info flows[8];
  size_t n = 0;
  CALL_OK(autostandby_explain, c, key, flows, 8, &n);
  CHECK(n >= 1);
  CHECK(flows[0].protocol == 6 && flows[0].orig_dst_port == port);
  CHECK(memcmp(flows[0].orig_dst.addr, &guest.s_addr, 4) == 0);

  CHECK(!poll_standby(c, key, 2000));
  CHECK(status_of(c, key).status == AUTOSTANDBY_STATUS_ACTIVE);

  /* Close: the countdown runs and the standby decision arrives. */
  close(fd);
  struct autostandby_status st = status_of(c, key);
  for (int waited = 0; waited < 5000 && st.status == AUTOSTANDBY_STATUS_ACTIVE; waited += 20) {
    sleep_ms(20);
    st = status_of(c, key);
  }
  if (st.status != AUTOSTANDBY_STATUS_IDLE_COUNTDOWN &&
      st.status != AUTOSTANDBY_STATUS_READY_FOR_STANDBY &&
      st.status != AUTOSTANDBY_STATUS_STANDBY_REQUESTED) {
    fprintf(stderr, "after close: status %s, reason %s, active %u\n",
            autostandby_status_name(st.status), autostandby_reason_name(st.reason),
            st.active_inbound);
    CHECK(0);
  }
  int got = 0;
  for (int i = 0; i < 10 && !got; i++) got = poll_standby(c, key, 1000);
  if (!got) {
    st = status_of(c, key);
    fprintf(stderr, "no standby: status %s, reason %s, active %u\n",
            autostandby_status_name(st.status), autostandby_reason_name(st.reason),
            st.active_inbound);
    autostandby_log_record logs[32];
    size_t nlogs = 0;
    CALL_OK(autostandby_drain_logs, c, logs, 32, &nlogs);
    for (size_t i = 0; i < nlogs; i++) fprintf(stderr, "  log: %s\n", logs[i].message);
  }
  CHECK(got);
  bool proceed = false;
  uint32_t reason = 0;
  CALL_OK(autostandby_begin_standby, c, key, &proceed, &reason);
  CHECK(proceed);
  CALL_OK(autostandby_report_standby, c, key, AUTOSTANDBY_OUTCOME_SUCCESS);

  struct autostandby_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CALL_OK(autostandby_stats, c, &stats);
  CHECK(stats.flow_events >= 1);
  CHECK(stats.standby_decisions == 1);

  autostandby_controller_free(c);
  puts("kernel_scenario: ok");
  return 0;
}
