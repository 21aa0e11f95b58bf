// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * espd's XDP program: steers packets to the AF_XDP socket of their rx queue, and passes
 * everything the kernel must still see. One object per interface (its own XSKMAP).
 *
 *   not IPv4/IPv6 (ARP, LLDP, ...)                      -> kernel
 *   broadcast, multicast, link-local destinations       -> kernel
 *   ICMPv6 neighbour discovery / router messages        -> kernel
 *   to one of the gateway's own addresses:
 *     cipher side, ESP (50)                             -> espd
 *     cipher side, UDP/4500 without the zero marker     -> espd  (ESP in UDP, RFC 3948)
 *     anything else (IKE on 500/4500, ping, ssh, ...)   -> kernel
 *   anything else (traffic crossing the gateway)        -> espd  (plain side: encrypted, or
 *                                                          forwarded in the clear by a bypass
 *                                                          policy; cipher side: forwarded by a
 *                                                          bypass policy, else 13916)
 *
 * When no socket is bound on the rx queue, crossing traffic is dropped (fail closed: never
 * forwarded in the clear) and counted in `stats`.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

#define MAX_QUEUES 64
#define ESP_PROTO 50
#define NAT_T_PORT 4500

/* 0: plain side, 1: cipher side. Set by the loader. */
volatile const __u32 cipher_side = 0;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* The gateway's own addresses, IPv4 as ::ffff:a.b.c.d. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct in6_addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* 0: redirected, 1: passed, 2: dropped (no socket on the queue). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 idx, int action)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
	return action;
}

static __always_inline int pass(void) { return count(1, XDP_PASS); }

static __always_inline int to_espd(struct xdp_md *ctx)
{
	int r = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
	return count(r == XDP_REDIRECT ? 0 : 2, r);
}

static __always_inline int is_local(struct in6_addr *a)
{
	return bpf_map_lookup_elem(&local_addrs, a) != 0;
}

/* ESP for us: raw ESP, or UDP/4500 whose first four payload bytes are not zero. */
static __always_inline int is_esp(__u8 proto, void *l4, void *end)
{
	if (proto == ESP_PROTO)
		return 1;
	if (proto != IPPROTO_UDP)
		return 0;
	struct udphdr *u = l4;
	if ((void *)(u + 1) + 4 > end)
		return 0; /* too short for ESP: IKE keepalive or junk, the kernel decides */
	if (u->dest != __builtin_bswap16(NAT_T_PORT))
		return 0;
	__u32 marker = *(__u32 *)(u + 1);
	return marker != 0;
}

SEC("xdp")
int espd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass();
	struct in6_addr dst = {};
	__u8 proto;
	void *l4;
	if (eth->h_proto == __builtin_bswap16(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return pass();
		__u32 d = ip->daddr;
		__u8 first = d & 0xff;
		if (d == 0xffffffff || (first & 0xf0) == 0xe0 || (first == 169 && ((d >> 8) & 0xff) == 254))
			return pass();
		dst.s6_addr16[5] = 0xffff;
		dst.s6_addr32[3] = d;
		proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == __builtin_bswap16(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return pass();
		__u8 b0 = ip6->daddr.s6_addr[0], b1 = ip6->daddr.s6_addr[1];
		if (b0 == 0xff || (b0 == 0xfe && (b1 & 0xc0) == 0x80))
			return pass();
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		if (proto == 58) { /* ICMPv6: neighbour discovery and router messages */
			__u8 *type = l4;
			if ((void *)(type + 1) > end)
				return pass();
			if (*type >= 133 && *type <= 137)
				return pass();
		}
		__builtin_memcpy(&dst, &ip6->daddr, sizeof(dst));
	} else {
		return pass();
	}
	if (is_local(&dst)) {
		if (cipher_side && is_esp(proto, l4, end))
			return to_espd(ctx);
		return pass();
	}
	return to_espd(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
