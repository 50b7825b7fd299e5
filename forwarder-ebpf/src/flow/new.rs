//! The first packet of a connection: the rule it matches, then (in the
//! hook's new-flow program) the checks, the route, the masquerade port and
//! both conntrack entries.

use aya_ebpf::{bindings::BPF_FIB_LOOKUP_SRC, maps::lpm_trie::Key};
use aya_log_ebpf::warn;
use forwarder_common::{
    abi::{
        BackendAddr, DIR_ORIGINAL, IFACE_F_BOUND_RULES, MAX_SNAT_ATTEMPTS, ROLE_PUBLIC,
        RULE_F_BACKENDS, RULE_F_SRC_FILTER, RULE_KEY_FULL_BITS, RuleKey, RuleTarget, SrcKey,
    },
    conntrack::{entry_pair, snat_candidate, tuple_hash},
    decide::{Gate, first_packet_gate, masquerades},
    maglev,
    nat::Tuple,
    rule::{backend_port, backend_port_from},
    stats,
};

use crate::{
    ctx::Packet,
    maps::{
        FWD_BACKENDS, FWD_FLOWS, FWD_IFACES, FWD_MAGLEV, FWD_PUBLIC_ADDRS, FWD_RULES, FWD_SERVICES,
        FWD_SRC_ALLOW, config, count_backend, rule_stats,
    },
    ops::{
        audit,
        conntrack::{self as ct, InsertError},
        fib::{fib_verdict, route},
        frag::forward,
        parse::xdp_can_finish,
    },
    types::{CreatedBy, Parsed, Verdict},
};

/// The rule a new flow matches, and whether it is a hairpin (an internal
/// host reaching a public address of the gateway). Rules apply to packets
/// arriving on public interfaces (bound to that interface first, then
/// wildcard), and, for hairpin, to packets from any other interface whose
/// destination is the address of a public interface: then that interface's
/// rules apply.
#[inline(always)]
pub fn match_rule<P: Packet>(p: &P, parsed: &Parsed) -> Option<(RuleTarget, bool)> {
    let ingress = p.ingress_ifindex();
    // SAFETY: map value pointer valid until program exit.
    let info = FWD_IFACES.get_ptr(&ingress).map(|i| unsafe { *i });
    let public = info.is_some_and(|i| i.role == ROLE_PUBLIC);
    // The rules bound to the interface first: on a public interface only
    // when it has some; for hairpin, those of the public interface that
    // owns the address.
    let bound = if public {
        info.is_some_and(|i| i.flags & IFACE_F_BOUND_RULES != 0).then_some(ingress)
    } else {
        // SAFETY: as above.
        Some(unsafe { *FWD_PUBLIC_ADDRS.get_ptr(&parsed.tuple.daddr)? })
    };
    let mut key = Key::new(
        RULE_KEY_FULL_BITS,
        RuleKey { ifindex: 0, proto: parsed.proto, port: parsed.tuple.dport, _pad: 0 },
    );
    if let Some(ifindex) = bound {
        key.data.ifindex = ifindex;
        if let Some(t) = FWD_RULES.get(&key) {
            return Some((*t, !public));
        }
    }
    key.data.ifindex = 0;
    FWD_RULES.get(&key).map(|t| (*t, !public))
}

/// The backend of a new connection to a rule with several backends: the
/// one the Maglev slot of its client side names (`None`: the rule has no
/// table or the slot names no backend).
#[inline(always)]
fn pick_backend(target: &RuleTarget, parsed: &Parsed) -> Option<BackendAddr> {
    let svc = FWD_SERVICES.get_ptr(&target.rule_id)?;
    // SAFETY: map value pointer valid until program exit.
    let svc = unsafe { *svc };
    if svc.table_len == 0 {
        return None;
    }
    let h = maglev::flow_hash(parsed.tuple.saddr, parsed.tuple.sport, parsed.proto);
    let at = svc.table_off.wrapping_add(maglev::slot(h, svc.table_len));
    let index = *FWD_MAGLEV.get(at)?;
    if index >= svc.backends {
        return None;
    }
    FWD_BACKENDS.get(svc.backends_off.wrapping_add(index)).copied()
}

/// Whether `target`'s allow-list refuses the client; a refusal is counted
/// on the rule and audited.
#[inline(always)]
fn source_denied<P: Packet>(p: &P, parsed: &Parsed, target: &RuleTarget) -> bool {
    if target.flags & RULE_F_SRC_FILTER == 0
        || FWD_SRC_ALLOW
            .get(Key::new(64, SrcKey { rule_id: target.rule_id, addr: parsed.tuple.saddr }))
            .is_some()
    {
        return false;
    }
    if let Some(s) = rule_stats(target.rule_id) {
        s.denied += 1;
    }
    let port = backend_port(target, u16::from_be_bytes(parsed.tuple.dport));
    let ifindex = p.ingress_ifindex();
    audit::emit(|now| audit::denied(parsed, target, port, ifindex, now));
    true
}

/// The backend (address, first port, stats slot) of a new connection to
/// `target`: its own, or with several the one [`pick_backend`] names.
#[inline(always)]
fn backend_of(target: &RuleTarget, parsed: &Parsed) -> Option<([u8; 4], [u8; 2], u16)> {
    if target.flags & RULE_F_BACKENDS == 0 {
        return Some((target.addr, target.port, target.stats_slot));
    }
    pick_backend(target, parsed).map(|b| (b.addr, b.port, b.stats_slot))
}

/// The first packet of a connection that matches `target`: source
/// allow-list, its backend, rate limit, route, masquerade port, both
/// entries.
#[inline(always)]
pub fn create<P: Packet>(p: &P, mut parsed: Parsed, target: &RuleTarget, hairpin: bool) -> Verdict {
    // Source allow-list: refused here, never passed on (the kernel would
    // deliver it to the gateway itself).
    if source_denied(p, &parsed, target) {
        return Verdict::Drop(stats::DROP_SRC_DENIED);
    }
    // A stray RST must not create state; a dying TTL is dropped.
    match first_packet_gate(parsed.flags_or_type, parsed.ttl) {
        Some(Gate::Pass(s)) => return Verdict::Pass(s),
        Some(Gate::Drop(s)) => return Verdict::Drop(s),
        None => {}
    }
    // No backend can take it: refused with a TCP reset or "port
    // unreachable", which TC builds (XDP hands the packet over untouched).
    let Some((addr, port, slot)) = backend_of(target, &parsed) else {
        return if P::IS_XDP { Verdict::ToTc } else { Verdict::Drop(stats::DROP_NO_BACKEND) };
    };
    let masquerade = masquerades(hairpin, target.flags);
    let dport = backend_port_from(port, target, u16::from_be_bytes(parsed.tuple.dport));
    let mut out =
        Tuple { saddr: parsed.tuple.saddr, daddr: addr, sport: parsed.tuple.sport, dport };
    let r = route(p, &parsed, &out, if masquerade { BPF_FIB_LOOKUP_SRC } else { 0 });
    // Route first: nothing is inserted for a packet we cannot send (XDP
    // hands NO_NEIGH to TC before any state exists).
    if let Err(v) = fib_verdict::<P>(&r, out) {
        return v;
    }
    if !xdp_can_finish::<P>(&parsed) {
        return Verdict::ToTc;
    }
    // The rate limit counts connections about to be set up (not those XDP
    // hands to TC, which would count them twice).
    let now = ct::flow_clock();
    if !ct::new_conn_allowed(now) {
        return Verdict::Drop(stats::DROP_NEW_CONN_RATE);
    }
    // The reply entry first: NOEXIST claims its tuple (with masquerade:
    // the source port) atomically across CPUs. Without masquerade there
    // is one candidate, the client's own port.
    let cfg = config();
    let attempts = if masquerade { cfg.snat_attempts } else { 1 };
    if masquerade {
        out.saddr = r.src;
    }
    let seed = tuple_hash(&parsed.tuple);
    let mut claim = Err(InsertError::Exists);
    for attempt in 0..MAX_SNAT_ATTEMPTS {
        if attempt >= attempts {
            break;
        }
        if masquerade {
            out.sport =
                snat_candidate(seed, attempt, cfg.snat_port_min, cfg.snat_port_max).to_be_bytes();
        }
        let [_, (rk, re)] =
            entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, slot, now, p.vlan());
        claim = ct::insert(&rk, &re);
        // Taken: the next candidate; claimed, or the table is full: done.
        if !matches!(claim, Err(InsertError::Exists)) {
            break;
        }
    }
    if matches!(claim, Err(InsertError::Full)) {
        // A full table: an unassured or closing connection gives way, and
        // the same candidate is tried again.
        if !ct::make_room() {
            return Verdict::Drop(stats::DROP_CT_FULL);
        }
        let [_, (rk, re)] =
            entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, slot, now, p.vlan());
        claim = ct::insert(&rk, &re);
    }
    match claim {
        Ok(()) => {}
        Err(InsertError::Full) => return Verdict::Drop(stats::DROP_CT_FULL),
        Err(InsertError::Exists) if !masquerade => return Verdict::Drop(stats::DROP_CT_INSERT),
        Err(InsertError::Exists) => {
            // Rare by construction (bounded retries over a large range);
            // logged so the operator sees which backend ran out.
            warn!(
                p,
                "masquerade: no free source port towards {:i}:{} after {} attempts (rule {}); new flow dropped",
                out.daddr,
                u16::from_be_bytes(out.dport),
                cfg.snat_attempts,
                target.rule_id
            );
            return Verdict::Drop(stats::DROP_SNAT_EXHAUSTED);
        }
    }
    let [(ok, oe), (rk, _)] =
        entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, slot, now, p.vlan());
    if let Err(e) = ct::insert(&ok, &oe) {
        // Another CPU created this flow first (exists), or the table filled
        // up in between: give our reply entry back. A retransmission finds
        // the winner's entry.
        let _ = FWD_FLOWS.remove(&rk);
        return Verdict::Drop(match e {
            InsertError::Exists => stats::DROP_CT_INSERT,
            InsertError::Full => stats::DROP_CT_FULL,
        });
    }
    // Until it is assured, it may give way to a newer one in a full table.
    ct::candidate(&ok);
    if let Some(s) = rule_stats(target.rule_id) {
        s.new_conns += 1;
        s.traffic.count(DIR_ORIGINAL, parsed.frame_len);
    }
    count_backend(slot, DIR_ORIGINAL, parsed.frame_len);
    parsed.created_by = CreatedBy::rule(target.rule_id);
    match fib_verdict::<P>(&r, out) {
        Ok(fwd) => forward::<P>(parsed, fwd, target.rule_id, DIR_ORIGINAL),
        Err(v) => v,
    }
}
