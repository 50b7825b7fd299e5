//! Fault injection for the daemon's housekeeping, so that its recovery
//! can be tested end to end: `FORWARDER_FAILPOINTS=NAME[=COUNT],…` in the
//! daemon's environment makes the next COUNT passes of the named task fail
//! (`*` or no count: every pass). Names are the tasks'
//! ([`crate::housekeeping::TASKS`]), and two more: `fatal` (the daemon's
//! loop ends with an error, as from a fault it cannot survive) and
//! `xdp_features_unknown` (the kernel seems not to report interfaces'
//! XDP features, as before 6.3). Without the variable nothing fails:
//! one environment read at start, then a lookup in an empty table.

use std::{collections::HashMap, sync::Mutex};

/// Remaining failures per name (`u64::MAX`: forever).
static POINTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

/// Parses `NAME[=COUNT],…`; errors name the bad item.
pub fn parse(spec: &str) -> Result<HashMap<String, u64>, String> {
    let mut out = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, count) = match item.split_once('=') {
            Some((n, "*" | "")) => (n, u64::MAX),
            Some((n, c)) => (n, c.parse().map_err(|_| format!("FORWARDER_FAILPOINTS: `{item}`: count `{c}` is not a number"))?),
            None => (item, u64::MAX),
        };
        out.insert(name.to_string(), count);
    }
    Ok(out)
}

/// Reads `FORWARDER_FAILPOINTS` (once, at start).
pub fn init_from_env() -> Result<(), String> {
    let points = match std::env::var("FORWARDER_FAILPOINTS") {
        Ok(spec) => parse(&spec)?,
        Err(_) => HashMap::new(),
    };
    if !points.is_empty() {
        let mut names: Vec<_> = points.keys().cloned().collect();
        names.sort();
        log::warn!("fault injection armed for: {} (FORWARDER_FAILPOINTS)", names.join(", "));
    }
    *POINTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(points);
    Ok(())
}

/// `Err` while the point `name` is armed (counting one failure down).
pub fn check(name: &str) -> crate::error::Result<()> {
    let mut guard = POINTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(left) = guard.as_mut().and_then(|p| p.get_mut(name)).filter(|n| **n > 0) {
        if *left != u64::MAX {
            *left -= 1;
        }
        return Err(crate::error::Error::Io(format!("injected failure ({name}, FORWARDER_FAILPOINTS)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_counts_down() {
        let p = parse("sweep=2, stats_file,egress=*").unwrap();
        assert_eq!((p["sweep"], p["stats_file"], p["egress"]), (2, u64::MAX, u64::MAX));
        assert!(parse("sweep=two").unwrap_err().contains("`sweep=two`"));
        *POINTS.lock().unwrap() = Some(parse("t1=2").unwrap());
        assert!(check("t1").is_err() && check("t1").is_err());
        assert!(check("t1").is_ok(), "two failures, then fine");
        assert!(check("other").is_ok());
    }
}
