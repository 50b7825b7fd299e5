//! Audit events: one per new connection attempt to a forwarded port,
//! through a ring buffer to the daemon, under a per-CPU rate limit. What
//! the limit or a full ring refuses is counted, never queued.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use forwarder_common::{
    abi::{AUDIT_ACCEPTED, AUDIT_DENIED, AuditEvent, EVENTS_RING_BYTES, RuleTarget},
    audit::TokenBucket,
    stats,
};

use crate::{
    maps::{config, count},
    pipeline::{Forward, Parsed},
};

#[map]
pub static FWD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub static FWD_AUDIT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Emits `ev` if the rate limit allows and the ring has room; counts it
/// either way. Nothing at all when audit is off (rate 0).
#[inline(always)]
pub fn emit(ev: &AuditEvent) {
    let cfg = config();
    if cfg.audit_rate == 0 {
        return;
    }
    let Some(b) = FWD_AUDIT_BUCKET.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    if !unsafe { &mut *b }.take(ev.ts_ns, cfg.audit_rate, cfg.audit_burst) {
        count(stats::AUDIT_RATE_LIMITED);
        return;
    }
    match FWD_EVENTS.output::<AuditEvent>(ev, 0) {
        Ok(()) => count(stats::AUDIT_EVENTS),
        Err(_) => count(stats::AUDIT_RING_FULL),
    }
}

/// The event of a connection the datapath translated (`parsed` is its
/// first packet, `fwd` its translation).
#[inline(always)]
pub fn accepted(parsed: &Parsed, fwd: &Forward, ifindex: u32, now: u64) -> AuditEvent {
    AuditEvent {
        ts_ns: now,
        rule_id: parsed.audit_rule.wrapping_sub(1),
        ifindex,
        client: parsed.tuple.saddr,
        public: parsed.tuple.daddr,
        backend: fwd.new.daddr,
        snat: fwd.new.saddr,
        client_port: parsed.tuple.sport,
        public_port: parsed.tuple.dport,
        backend_port: fwd.new.dport,
        snat_port: fwd.new.sport,
        proto: parsed.proto,
        verdict: AUDIT_ACCEPTED,
        tcp_flags: parsed.tcp_flags,
        _pad: [0; 5],
    }
}

/// The event of an attempt the rule's source allow-list refused.
#[inline(always)]
pub fn denied(parsed: &Parsed, target: &RuleTarget, backend_port: [u8; 2], ifindex: u32, now: u64) -> AuditEvent {
    AuditEvent {
        ts_ns: now,
        rule_id: target.rule_id,
        ifindex,
        client: parsed.tuple.saddr,
        public: parsed.tuple.daddr,
        backend: target.addr,
        snat: [0; 4],
        client_port: parsed.tuple.sport,
        public_port: parsed.tuple.dport,
        backend_port,
        snat_port: [0; 2],
        proto: parsed.proto,
        verdict: AUDIT_DENIED,
        tcp_flags: parsed.tcp_flags,
        _pad: [0; 5],
    }
}
