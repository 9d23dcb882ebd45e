/* Assertion helpers shared by the C consumer tests. */
#ifndef AUTOSTANDBY_TEST_CHECK_H
#define AUTOSTANDBY_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "autostandby.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* Calls an autostandby function and fails loudly unless it returns `want`. */
#define CALL_EXPECT(want, call)                                                \
  do {                                                                         \
    autostandby_error err_ = {0, {0}};                                         \
    uint32_t rc_ = (call);                                                     \
    (void)err_;                                                                \
    if (rc_ != (uint32_t)(want)) {                                             \
      fprintf(stderr, "%s:%d: %s returned %u (%s), wanted %u\n", __FILE__,      \
              __LINE__, #call, rc_, autostandby_status_str(rc_),               \
              (unsigned)(want));                                               \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* Calls an autostandby function taking `&err` as its last argument; fails with the
   library's message unless it returns AUTOSTANDBY_OK. */
#define CALL_OK(fn, ...)                                                       \
  do {                                                                         \
    autostandby_error err_ = {0, {0}};                                         \
    uint32_t rc_ = fn(__VA_ARGS__, &err_);                                     \
    if (rc_ != AUTOSTANDBY_OK) {                                               \
      fprintf(stderr, "%s:%d: %s failed: %u %s\n", __FILE__, __LINE__, #fn,    \
              rc_, err_.message);                                              \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

static inline autostandby_ip test_ipv4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  autostandby_ip ip = {AUTOSTANDBY_FAMILY_IPV4, {0}};
  ip.addr[0] = a;
  ip.addr[1] = b;
  ip.addr[2] = c;
  ip.addr[3] = d;
  return ip;
}

#endif
