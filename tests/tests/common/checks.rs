//! What every end-to-end test checks when it ends: the hook that did the
//! work, the counters that must stay 0, the log's warnings, the hosts'
//! checksum errors.

use forwarder_testkit::{Forwarder, Lab};
use serde_json::Value;

use super::stats::counter;

/// Packets the datapath translated and sent, by either hook.
pub fn redirected(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&v["counters"])
        .unwrap_or_else(|| panic!("no hook counters in {json}"));
    xdp + tc
}

/// The hook that did the work is the one the suite's mode and lab call
/// for: XDP transmits (mode xdp, tuned lab: at least 90 % of the packets
/// TC did not take), or TC does (every other combination; with XDP in
/// front on an untuned lab, XDP hands them over).
pub fn assert_hook_did_the_work(json: &str) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&v["counters"])
        .unwrap_or_else(|| panic!("no hook counters in {json}"));
    if forwarder_testkit::xdp_transmits() {
        assert!(
            xdp > 0 && forwarder_testkit::xdp_carried_most(xdp, tc),
            "XDP did not carry 90 % of the packets: {json}"
        );
    } else {
        assert_eq!(xdp, 0, "XDP transmitted where it must not: {json}");
        assert!(tc > 0, "{json}");
        if forwarder_testkit::test_mode() == "xdp" {
            assert!(counter(json, "xdp_to_tc") > 0, "{json}");
        }
    }
}

/// Whether XDP is attached to the gateway's veths in the suite's mode
/// (`auto` and the default pick TC on veth).
pub fn xdp_attached() -> bool {
    forwarder_testkit::test_mode() == "xdp"
}

/// Datapath counters that stay 0 in a test that does not ask for them:
/// each is a packet lost or a fault.
pub const MUST_STAY_ZERO: [&str; 18] = [
    "drop_rewrite_failed",
    "drop_no_backend",
    "drop_conn_reset",
    "drop_ttl",
    "drop_snat_exhausted",
    "drop_ct_insert",
    "drop_no_src_addr",
    "drop_redirect_failed",
    "drop_src_denied",
    "table_full_refused",
    "early_drop",
    "drop_too_big",
    "drop_new_conn_rate",
    "drop_no_route",
    "pass_malformed",
    "pass_fwd_disabled",
    "pass_not_forwarded",
    "audit_ring_full",
];

/// What a test makes happen beyond a clean run: counters of
/// [`MUST_STAY_ZERO`] it makes grow, and text of the WARN/ERROR log lines
/// it causes.
#[derive(Clone, Copy, Default)]
pub struct Expect<'a> {
    pub counters: &'a [&'a str],
    pub log: &'a [&'a str],
}

impl<'a> Expect<'a> {
    pub const fn counters(counters: &'a [&'a str]) -> Self {
        Self { counters, log: &[] }
    }
    pub const fn log(log: &'a [&'a str]) -> Self {
        Self { counters: &[], log }
    }
}

/// The warnings the suite's mode and lab bring by themselves: XDP on an
/// untuned lab says which egresses it cannot transmit into.
fn suite_warnings() -> &'static [&'static str] {
    if forwarder_testkit::test_mode() == "xdp" && !forwarder_testkit::tuned_lab() {
        &["XDP cannot transmit into it"]
    } else {
        &[]
    }
}

/// The "no surprises" check of a finished test: the counters that must
/// stay 0 are 0 (but those `expect` names), the daemon logged no WARN or
/// ERROR that `expect` (or the suite's combination) does not name, and no
/// host counted a checksum error.
pub fn assert_no_surprises(lab: &Lab, stats: &str, log: &str, expect: Expect) {
    let grown: Vec<String> = MUST_STAY_ZERO
        .iter()
        .filter(|c| !expect.counters.contains(c) && counter(stats, c) > 0)
        .map(|c| format!("{c}={}", counter(stats, c)))
        .collect();
    assert!(grown.is_empty(), "counters that must stay 0 grew: {grown:?}\n{stats}");
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !expect.log.iter().chain(suite_warnings()).any(|a| l.contains(a)))
        .collect();
    assert!(unexpected.is_empty(), "the daemon warned unexpectedly:\n{}", unexpected.join("\n"));
    assert_no_csum_errors(lab);
}

/// Stops the forwarder (SIGTERM) and runs [`assert_no_surprises`]; the
/// final stats JSON.
pub fn finish(lab: &Lab, fwd: &mut Forwarder, expect: Expect) -> String {
    let stats = fwd.stop().expect("the forwarder stops cleanly");
    assert_no_surprises(lab, &stats, &fwd.log_text(), expect);
    stats
}

pub fn assert_no_csum_errors(lab: &Lab) {
    let bad = lab.csum_errors().expect("read snmp counters");
    assert!(bad.is_empty(), "checksum errors recorded: {bad:?}");
}
