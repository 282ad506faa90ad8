/*
 * getOriginalDst(fd): the destination a TCP connection had before an iptables
 * REDIRECT (nat table) rewrote it to the agent's capture port.
 *
 * Plain C on Node-API (node_api.h) so the binary is ABI-stable across Node
 * versions: one build serves every Node >= the NAPI_VERSION below.
 *
 * Invariant: the fd is only read (getsockopt); it is never closed, duplicated
 * or changed, because it belongs to a libuv handle owned by Node.
 */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/netfilter_ipv4.h> /* SO_ORIGINAL_DST */

/* linux/netfilter_ipv6/ip6_tables.h defines this, but that header drags in
 * kernel-only types on some libcs; the value is part of the kernel ABI. */
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define CHECK(env, call)                                                     \
  do {                                                                       \
    if ((call) != napi_ok) {                                                 \
      napi_throw_error((env), NULL, "original_dst: N-API call failed: " #call); \
      return NULL;                                                           \
    }                                                                        \
  } while (0)

/* Throws an Error whose message names the failing step and the errno text, with
 * a numeric `errno` property so callers can tell ENOENT (no conntrack/NAT entry:
 * the connection was not redirected) from EBADF or ENOTSOCK. */
static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s (errno %d)", what, strerror(err), err);
  napi_value message, error, errno_value;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, NULL, message, &error) != napi_ok) {
    napi_throw_error(env, NULL, msg);
    return NULL;
  }
  if (napi_create_int32(env, err, &errno_value) == napi_ok) {
    napi_set_named_property(env, error, "errno", errno_value);
  }
  napi_throw(env, error);
  return NULL;
}

static napi_value make_result(napi_env env, const char *address, int port, int family) {
  napi_value result, address_value, port_value, family_value;
  CHECK(env, napi_create_object(env, &result));
  CHECK(env, napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &address_value));
  CHECK(env, napi_create_int32(env, port, &port_value));
  CHECK(env, napi_create_int32(env, family, &family_value));
  CHECK(env, napi_set_named_property(env, result, "address", address_value));
  CHECK(env, napi_set_named_property(env, result, "port", port_value));
  CHECK(env, napi_set_named_property(env, result, "family", family_value));
  return result;
}

static napi_value get_original_dst(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) {
    napi_throw_type_error(env, NULL, "getOriginalDst(fd): fd is required");
    return NULL;
  }
  napi_valuetype type;
  CHECK(env, napi_typeof(env, argv[0], &type));
  if (type != napi_number) {
    napi_throw_type_error(env, NULL, "getOriginalDst(fd): fd must be a number");
    return NULL;
  }
  int32_t fd;
  CHECK(env, napi_get_value_int32(env, argv[0], &fd));
  if (fd < 0) {
    napi_throw_range_error(env, NULL, "getOriginalDst(fd): fd must be >= 0");
    return NULL;
  }

  /* The socket's own family decides which table to ask: an IPv6 listener
   * (even dual-stack, for v4-mapped peers the v4 query is the one that works)
   * is asked SOL_IPV6 first and falls back to SOL_IP. */
  struct sockaddr_storage local;
  socklen_t local_len = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) {
    return throw_errno(env, "getOriginalDst: getsockname failed", errno);
  }

  char text[INET6_ADDRSTRLEN];
  if (local.ss_family == AF_INET6) {
    struct sockaddr_in6 dst6;
    socklen_t len6 = sizeof dst6;
    memset(&dst6, 0, sizeof dst6);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst6, &len6) == 0) {
      if (inet_ntop(AF_INET6, &dst6.sin6_addr, text, sizeof text) == NULL) {
        return throw_errno(env, "getOriginalDst: inet_ntop failed", errno);
      }
      return make_result(env, text, ntohs(dst6.sin6_port), 6);
    }
    /* A v4-mapped connection on a dual-stack socket is tracked as IPv4. */
    int err6 = errno;
    struct sockaddr_in dst4;
    socklen_t len4 = sizeof dst4;
    memset(&dst4, 0, sizeof dst4);
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst4, &len4) == 0) {
      if (inet_ntop(AF_INET, &dst4.sin_addr, text, sizeof text) == NULL) {
        return throw_errno(env, "getOriginalDst: inet_ntop failed", errno);
      }
      return make_result(env, text, ntohs(dst4.sin_port), 4);
    }
    return throw_errno(env, "getOriginalDst: getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) failed", err6);
  }

  if (local.ss_family != AF_INET) {
    napi_throw_error(env, NULL, "getOriginalDst: fd is not an IPv4 or IPv6 socket");
    return NULL;
  }
  struct sockaddr_in dst4;
  socklen_t len4 = sizeof dst4;
  memset(&dst4, 0, sizeof dst4);
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst4, &len4) != 0) {
    return throw_errno(env, "getOriginalDst: getsockopt(SOL_IP, SO_ORIGINAL_DST) failed", errno);
  }
  if (inet_ntop(AF_INET, &dst4.sin_addr, text, sizeof text) == NULL) {
    return throw_errno(env, "getOriginalDst: inet_ntop failed", errno);
  }
  return make_result(env, text, ntohs(dst4.sin_port), 4);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn;
  CHECK(env, napi_create_function(env, "getOriginalDst", NAPI_AUTO_LENGTH, get_original_dst, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "getOriginalDst", fn));
  return exports;
}
