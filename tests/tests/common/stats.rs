//! Figures read from the daemon's stats JSON.

use serde_json::Value;

/// (`packets_in`, `packets_out`, `new_connections`) of rule `id` in a stats JSON.
pub fn rule_counters(json: &str, id: usize) -> (u64, u64, u64) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let r = &v["rules"][id];
    (
        r["packets_in"].as_u64().unwrap(),
        r["packets_out"].as_u64().unwrap(),
        r["new_connections"].as_u64().unwrap(),
    )
}

/// (`bytes_in`, `bytes_out`) of rule `id`.
pub fn rule_bytes(json: &str, id: usize) -> (u64, u64) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let r = &v["rules"][id];
    (r["bytes_in"].as_u64().unwrap(), r["bytes_out"].as_u64().unwrap())
}

/// Global counter `name`.
pub fn counter(json: &str, name: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    v["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {json}"))
}
