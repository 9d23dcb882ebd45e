/* Manual mode from registration to Standby and Wake, and a confirmation answered by the
   host, through the C ABI only. */
#include <string.h>

#include "check.h"

#define T0 1700000000000ULL
#define GUEST 10, 0, 0, 2
#define CLIENT 192, 0, 2, 10

static autostandby_flow_event tcp_event(uint32_t kind, uint16_t client_port, uint32_t id,
                                        bool has_state, uint8_t state) {
  autostandby_flow_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = kind;
  ev.protocol = 6;
  ev.orig_src = test_ipv4(CLIENT);
  ev.orig_dst = test_ipv4(GUEST);
  ev.orig_src_port = client_port;
  ev.orig_dst_port = 8080;
  ev.reply_src = test_ipv4(GUEST);
  ev.reply_dst = test_ipv4(CLIENT);
  ev.reply_src_port = 8080;
  ev.reply_dst_port = client_port;
  ev.id = id;
  ev.has_tcp_state = has_state;
  ev.tcp_state = state;
  return ev;
}

/* Polls without blocking; returns how many decisions of `kind` for `key` came back. */
static size_t count_decisions(autostandby_controller *c, uint32_t kind, uint64_t key,
                              autostandby_decision *last) {
  autostandby_decision out[16];
  size_t n = 0, found = 0;
  CALL_OK(autostandby_poll_decisions, c, out, 16, &n, 0);
  for (size_t i = 0; i < n; i++) {
    CHECK(out[i].kind <= AUTOSTANDBY_DECISION_CONFIRM);
    if (out[i].kind == kind && out[i].key == key) {
      found++;
      if (last) *last = out[i];
    }
  }
  return found;
}

static struct autostandby_status status_of(autostandby_controller *c, uint64_t key) {
  struct autostandby_status st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CALL_OK(autostandby_status, c, key, &st);
  return st;
}

/* With confirm_before_standby the deadline brings CONFIRM; answering it with an empty
   flow table (idle) brings STANDBY, and a second answer is stale. */
static void confirm_round_trip(const autostandby_instance *inst) {
  autostandby_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.mode = AUTOSTANDBY_MODE_MANUAL;
  cfg.manual_start_ms = T0;
  cfg.confirm_before_standby = true;
  autostandby_controller *c = NULL;
  CALL_OK(autostandby_controller_new, &cfg, &c);
  const uint64_t key = 7;
  CALL_OK(autostandby_register, c, key, inst);
  CALL_OK(autostandby_advance_clock, c, 60000);
  CHECK(count_decisions(c, AUTOSTANDBY_DECISION_CONFIRM, key, NULL) == 1);
  CALL_OK(autostandby_confirm, c, key, AUTOSTANDBY_CONFIRM_OK, NULL, 0);
  CHECK(count_decisions(c, AUTOSTANDBY_DECISION_STANDBY, key, NULL) == 1);
  CALL_EXPECT(AUTOSTANDBY_ERR_NO_CONFIRM_PENDING,
              autostandby_confirm(c, key, AUTOSTANDBY_CONFIRM_OK, NULL, 0, &err_));
  autostandby_controller_free(c);
}

int main(void) {
  CHECK(autostandby_abi_version() == AUTOSTANDBY_ABI_VERSION);
  CHECK(strlen(autostandby_version()) > 0);
  CHECK(strcmp(autostandby_status_name(AUTOSTANDBY_STATUS_IDLE_COUNTDOWN), "idle_countdown") == 0);
  CHECK(autostandby_reason_name(99) == NULL);

  autostandby_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.mode = AUTOSTANDBY_MODE_MANUAL;
  cfg.manual_start_ms = T0;
  autostandby_controller *c = NULL;
  CALL_OK(autostandby_controller_new, &cfg, &c);
  CHECK(c != NULL);

  uint32_t ignored_ports[] = {22};
  autostandby_policy policy;
  memset(&policy, 0, sizeof policy);
  policy.struct_size = sizeof policy;
  policy.enabled = true;
  policy.idle_timeout_ms = 60000;
  policy.ignore_destination_ports = ignored_ports;
  policy.ignore_destination_ports_len = 1;
  policy.tcp = true;
  policy.wake_on_traffic = true;

  autostandby_ip addrs[] = {test_ipv4(GUEST)};
  autostandby_instance inst;
  memset(&inst, 0, sizeof inst);
  inst.struct_size = sizeof inst;
  inst.addresses = addrs;
  inst.addresses_len = 1;
  inst.policy = &policy;
  inst.lifecycle = AUTOSTANDBY_LIFECYCLE_RUNNING;
  inst.network_enabled = true;

  const uint64_t key = 42;
  CALL_OK(autostandby_register, c, key, &inst);
  CALL_EXPECT(AUTOSTANDBY_ERR_ALREADY_EXISTS, autostandby_register(c, key, &inst, &err_));
  CALL_EXPECT(AUTOSTANDBY_ERR_NOT_FOUND, autostandby_unregister(c, 7, &err_));

  /* A client connects: active. */
  autostandby_flow_event ev = tcp_event(AUTOSTANDBY_FLOW_NEW, 40000, 1, true, 3 /* ESTABLISHED */);
  CALL_OK(autostandby_ingest, c, &ev, 1);
  struct autostandby_status st = status_of(c, key);
  CHECK(st.status == AUTOSTANDBY_STATUS_ACTIVE);
  CHECK(st.reason == AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS);
  CHECK(st.active_inbound == 1);
  CHECK(st.configured && st.enabled && st.eligible);

  autostandby_flow_info flows[4];
  size_t n = 0;
  CALL_OK(autostandby_explain, c, key, flows, 4, &n);
  CHECK(n == 1);
  CHECK(flows[0].protocol == 6 && flows[0].orig_dst_port == 8080 && flows[0].orig_src_port == 40000);
  CHECK(flows[0].has_tcp_state && flows[0].tcp_state == 3);
  CALL_OK(autostandby_explain, c, key, NULL, 0, &n);
  CHECK(n == 1);

  /* The client leaves: the countdown starts. */
  ev = tcp_event(AUTOSTANDBY_FLOW_DESTROY, 40000, 1, false, 0);
  CALL_OK(autostandby_ingest, c, &ev, 1);
  st = status_of(c, key);
  CHECK(st.status == AUTOSTANDBY_STATUS_IDLE_COUNTDOWN);
  CHECK(st.has_idle_since && st.idle_since_ms == T0);
  CHECK(st.has_next_standby_at && st.next_standby_at_ms == T0 + 60000);

  CALL_OK(autostandby_advance_clock, c, 59999);
  CHECK(count_decisions(c, AUTOSTANDBY_DECISION_STANDBY, key, NULL) == 0);
  CALL_OK(autostandby_advance_clock, c, 1);
  CHECK(count_decisions(c, AUTOSTANDBY_DECISION_STANDBY, key, NULL) == 1);

  bool proceed = false;
  uint32_t reason = 0;
  CALL_OK(autostandby_begin_standby, c, key, &proceed, &reason);
  CHECK(proceed);
  CALL_OK(autostandby_report_standby, c, key, AUTOSTANDBY_OUTCOME_SUCCESS);

  /* The host reports the instance in Standby; traffic arrives: Wake. */
  inst.lifecycle = AUTOSTANDBY_LIFECYCLE_STANDBY;
  CALL_OK(autostandby_update, c, key, &inst);
  ev = tcp_event(AUTOSTANDBY_FLOW_NEW, 40001, 2, true, 1 /* SYN_SENT */);
  CALL_OK(autostandby_ingest, c, &ev, 1);
  autostandby_decision wake;
  memset(&wake, 0, sizeof wake);
  CHECK(count_decisions(c, AUTOSTANDBY_DECISION_WAKE, key, &wake) == 1);
  CHECK(wake.protocol == 6 && wake.src_port == 40001 && wake.dst_port == 8080);
  CHECK(wake.dst.family == AUTOSTANDBY_FAMILY_IPV4 && wake.dst.addr[3] == 2);

  /* The 60 s gap between the two clients, as the default candidate timeouts see it:
     30 s and 1 min would each have put the instance into Standby once and woken it
     once; 60 s observed allow no wake at one per 30 minutes, so 2 min is recommended. */
  struct autostandby_recommendation rec;
  memset(&rec, 0, sizeof rec);
  rec.struct_size = sizeof rec;
  struct autostandby_timeout_outcome outcomes[AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES];
  CALL_OK(autostandby_recommend, c, key, NULL, &rec, outcomes, AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES, &n);
  CHECK(n == 8);
  CHECK(rec.has_observed_since && rec.observed_since_ms == T0 && rec.observed_ms == 60000);
  CHECK(rec.gaps == 1 && !rec.has_open_gap && rec.minutes_per_wake == 30);
  CHECK(outcomes[0].timeout_ms == 30000 && outcomes[0].standbys == 1 && outcomes[0].wakes == 1);
  CHECK(outcomes[0].standby_ms == 30000 && outcomes[0].exact);
  CHECK(outcomes[1].timeout_ms == 60000 && outcomes[1].wakes == 1 && outcomes[1].standby_ms == 0);
  CHECK(outcomes[2].timeout_ms == 120000 && outcomes[2].standbys == 0);
  CHECK(rec.has_recommended && rec.recommended_timeout_ms == 120000);
  rec.struct_size = 4;
  CALL_EXPECT(AUTOSTANDBY_ERR_STRUCT_SIZE, autostandby_recommend(c, key, NULL, &rec, outcomes, 8, &n, &err_));

  struct autostandby_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CALL_OK(autostandby_stats, c, &stats);
  CHECK(stats.instances == 1);
  CHECK(stats.standby_decisions == 1 && stats.wake_decisions == 1);

  autostandby_log_record logs[8];
  CALL_OK(autostandby_drain_logs, c, logs, 8, &n);
  CHECK(n >= 1);
  CHECK(strstr(logs[0].message, "controller started") != NULL);

  inst.lifecycle = AUTOSTANDBY_LIFECYCLE_RUNNING;
  confirm_round_trip(&inst);

  CALL_OK(autostandby_unregister, c, key);
  CALL_EXPECT(AUTOSTANDBY_ERR_NOT_FOUND, autostandby_status(c, key, &st, &err_));
  autostandby_controller_free(c);
  autostandby_controller_free(NULL);
  puts("manual_scenario: ok");
  return 0;
}
