//! Audit events: one per new connection attempt to a forwarded port,
//! through a ring buffer to the daemon, under a per-CPU rate limit. What
//! the limit or a full ring refuses is counted, never queued.

use forwarder_common::{
    abi::{AUDIT_ACCEPTED, AUDIT_DENIED, AuditEvent, RuleTarget},
    stats,
};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    maps::{FWD_AUDIT_BUCKET, FWD_EVENTS, config, count},
    ops::conntrack::flow_clock,
    types::{Forward, Parsed},
};

/// Emits the event `make` builds from its time, if the rate limit allows
/// and the ring has room; counts it either way. Nothing at all when audit
/// is off (rate 0). The limit runs on the flow clock; only an event that
/// is sent reads the precise one (its time orders the log to the
/// millisecond), so a flood the limit holds back costs no clock read.
#[inline(always)]
pub fn emit(make: impl FnOnce(u64) -> AuditEvent) {
    let cfg = config();
    if cfg.audit_rate == 0 {
        return;
    }
    let Some(b) = FWD_AUDIT_BUCKET.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    if !unsafe { &mut *b }.take(flow_clock(), cfg.audit_rate, cfg.audit_burst) {
        count(stats::AUDIT_RATE_LIMITED);
        return;
    }
    // SAFETY: helper without side effects.
    let ev = make(unsafe { bpf_ktime_get_ns() });
    match FWD_EVENTS.output::<AuditEvent>(&ev, 0) {
        Ok(()) => count(stats::AUDIT_EVENTS),
        Err(_) => count(stats::AUDIT_RING_FULL),
    }
}

/// The event of a connection the datapath translated (`parsed` is its
/// first packet, `fwd` its translation).
#[inline(always)]
pub fn accepted(parsed: &Parsed, fwd: &Forward, ifindex: u32, now: u64) -> AuditEvent {
    let n = &fwd.new;
    // Without masquerade the packet leaves from the client's own address:
    // no masquerade source to report (zero, as `AuditEvent::snat` says).
    let snat = if n.saddr == parsed.tuple.saddr { ([0; 4], [0; 2]) } else { (n.saddr, n.sport) };
    event(
        parsed,
        parsed.created_by.rule_id(),
        ifindex,
        now,
        AUDIT_ACCEPTED,
        (n.daddr, n.dport),
        snat,
    )
}

/// The event of an attempt the rule's source allow-list refused.
#[inline(always)]
pub fn denied(
    parsed: &Parsed,
    target: &RuleTarget,
    backend_port: [u8; 2],
    ifindex: u32,
    now: u64,
) -> AuditEvent {
    event(
        parsed,
        target.rule_id,
        ifindex,
        now,
        AUDIT_DENIED,
        (target.addr, backend_port),
        ([0; 4], [0; 2]),
    )
}

/// An event about `parsed`'s connection: backend and masquerade source as
/// (address, port), network order.
#[inline(always)]
fn event(
    parsed: &Parsed,
    rule_id: u32,
    ifindex: u32,
    now: u64,
    verdict: u8,
    backend: ([u8; 4], [u8; 2]),
    snat: ([u8; 4], [u8; 2]),
) -> AuditEvent {
    AuditEvent {
        ts_ns: now,
        rule_id,
        ifindex,
        client: parsed.tuple.saddr,
        public: parsed.tuple.daddr,
        backend: backend.0,
        snat: snat.0,
        client_port: parsed.tuple.sport,
        public_port: parsed.tuple.dport,
        backend_port: backend.1,
        snat_port: snat.1,
        proto: parsed.proto,
        verdict,
        tcp_flags: parsed.flags_or_type,
        _pad: [0; 5],
    }
}
