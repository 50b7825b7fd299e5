//! A packet of a tracked connection: its translation from the flow entry,
//! the next hop cached there (or a FIB lookup that refreshes the cache),
//! the connection state on a transition, the rule's counters.

use forwarder_common::{
    abi::{FlowEntry, FlowKey, VLAN_RESET},
    conntrack::{CT_FIN, CT_NEW, NextHop, needs_refresh, next_state, tick},
    stats,
};

use crate::{
    ctx::Packet,
    maps::{FWD_FLOWS, count_flow, rule_stats, tc_only_iface},
    ops::{
        conntrack as ct,
        fib::{fib_verdict, route},
        frag::forward,
        parse::xdp_can_finish,
    },
    types::{Forward, Parsed, Verdict},
};

/// The verdict for `parsed`, whose flow entry is `entry`.
#[inline(always)]
pub fn established<P: Packet>(p: &P, parsed: Parsed, entry: &mut FlowEntry) -> Verdict {
    if parsed.ttl <= 1 {
        return Verdict::Drop(stats::DROP_TTL);
    }
    // Packets that must leave tagged are TC's (XDP does not push tags);
    // so are those of a connection the daemon resets: TC answers their
    // sender with a TCP reset. (One test of the entry for both, so the
    // XDP fast path pays nothing for the second.)
    if entry.vlan != 0 {
        if P::IS_XDP {
            return Verdict::ToTc;
        }
        if entry.vlan == VLAN_RESET {
            return Verdict::Drop(stats::DROP_CONN_RESET);
        }
    }
    let new = entry.tuple();
    let now = ct::flow_clock();
    // The next hop cached in the entry (fresh, and the packet fits its
    // MTU), or a FIB lookup whose answer is cached for the next packets.
    let fwd = if let Some(nh) = entry.next_hop(now, parsed.l3_len) {
        Forward {
            new,
            ifindex: nh.ifindex,
            smac: nh.smac,
            dmac: nh.dmac,
            resolve: false,
            nexthop: [0; 4],
            mtu: nh.mtu,
            vlan: entry.vlan,
        }
    } else {
        let r = route(p, &parsed, &new, 0);
        let mut fwd = match fib_verdict::<P>(&r, new) {
            Ok(f) => f,
            Err(v) => return v,
        };
        fwd.vlan = entry.vlan;
        // TC behind XDP caches nothing: XDP would take the next hop it
        // cannot send to, count the packet, and hand it to TC, which
        // would count it again. XDP caches only egresses in its devmap.
        if !fwd.resolve && fwd.mtu != 0 && (P::IS_XDP || tc_only_iface(p.ingress_ifindex())) {
            entry.cache_next_hop(
                &NextHop { ifindex: fwd.ifindex, smac: fwd.smac, dmac: fwd.dmac, mtu: fwd.mtu },
                now,
            );
        }
        fwd
    };
    if !xdp_can_finish::<P>(&parsed) {
        return Verdict::ToTc;
    }
    if needs_refresh(entry.last_seen, now) {
        entry.last_seen = tick(now);
    }
    // Connection state: written only on a transition (SYN-ACK, FIN, RST,
    // first UDP answer), to both entries, so the established path stays
    // one lookup and no extra writes.
    let state = next_state(entry.state, entry.dir, parsed.proto, parsed.flags_or_type);
    if state != entry.state {
        // A connection that begins closing may give way to new ones
        // when the table is full.
        if state >= CT_FIN && entry.state < CT_FIN {
            ct::candidate(&FlowKey::new(&parsed.tuple, parsed.proto));
        }
        // A closed tuple the client opens again (port reuse) is a new
        // connection: counted as one.
        if state == CT_NEW
            && let Some(s) = rule_stats(entry.rule_id)
        {
            s.new_conns += 1;
        }
        entry.state = state;
        let peer = FlowKey::new(&new.reversed(), parsed.proto);
        if let Some(pe) = FWD_FLOWS.get_ptr_mut(&peer) {
            // SAFETY: map value pointer valid until program exit.
            unsafe { (*pe).state = state };
        }
    }
    count_flow(entry, parsed.frame_len);
    forward::<P>(parsed, fwd, entry.rule_id, entry.dir)
}
