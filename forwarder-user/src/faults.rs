//! Fault injection for the daemon's housekeeping, so that its recovery
//! can be tested end to end: `FORWARDER_FAILPOINTS=NAME[=COUNT],…` in the
//! daemon's environment makes the next COUNT passes of the named task fail
//! (`*` or no count: every pass); `NAME@N` makes only its N-th pass fail. Names are the tasks'
//! ([`crate::housekeeping::TASKS`]), and two more: `fatal` (the daemon's
//! loop ends with an error, as from a fault it cannot survive) and
//! `xdp_features_unknown` (the kernel seems not to report interfaces'
//! XDP features, as before 6.3), and `rules_in_place` (a rule change in
//! the running tables fails after its new entries are written). Without the variable nothing fails:
//! one environment read at start, then a lookup in an empty table.

use std::{collections::HashMap, sync::Mutex};

/// One armed point: passes that succeed first, then failures
/// (`u64::MAX`: forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub skip: u64,
    pub fail: u64,
}

/// The armed points by name.
static POINTS: Mutex<Option<HashMap<String, Point>>> = Mutex::new(None);

/// Parses `NAME[=COUNT]` and `NAME@N`, comma-separated; errors name the
/// bad item.
pub fn parse(spec: &str) -> Result<HashMap<String, Point>, String> {
    let mut out = HashMap::new();
    let num = |item: &str, c: &str| {
        c.parse::<u64>()
            .map_err(|_| format!("FORWARDER_FAILPOINTS: `{item}`: `{c}` is not a number"))
    };
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, point) = if let Some((n, at)) = item.split_once('@') {
            let at = num(item, at)?;
            if at == 0 {
                return Err(format!("FORWARDER_FAILPOINTS: `{item}`: passes count from 1"));
            }
            (n, Point { skip: at - 1, fail: 1 })
        } else {
            match item.split_once('=') {
                None => (item, Point { skip: 0, fail: u64::MAX }),
                Some((n, "*" | "")) => (n, Point { skip: 0, fail: u64::MAX }),
                Some((n, c)) => (n, Point { skip: 0, fail: num(item, c)? }),
            }
        };
        out.insert(name.to_string(), point);
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
    let Some(p) = guard.as_mut().and_then(|p| p.get_mut(name)) else { return Ok(()) };
    if p.skip > 0 {
        p.skip -= 1;
        return Ok(());
    }
    if p.fail == 0 {
        return Ok(());
    }
    if p.fail != u64::MAX {
        p.fail -= 1;
    }
    Err(crate::error::Error::Io(format!("injected failure ({name}, FORWARDER_FAILPOINTS)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_counts_down() {
        let p = parse("sweep=2, stats_file,egress=*,fatal@3").unwrap();
        let ever = Point { skip: 0, fail: u64::MAX };
        assert_eq!(
            (p["sweep"], p["stats_file"], p["egress"]),
            (Point { skip: 0, fail: 2 }, ever, ever)
        );
        assert_eq!(p["fatal"], Point { skip: 2, fail: 1 });
        assert!(parse("sweep=two").unwrap_err().contains("`sweep=two`"));
        assert!(parse("fatal@0").unwrap_err().contains("from 1"));
        *POINTS.lock().unwrap() = Some(parse("t1=2,t2@2").unwrap());
        assert!(check("t1").is_err() && check("t1").is_err());
        assert!(check("t1").is_ok(), "two failures, then fine");
        assert!(
            check("t2").is_ok() && check("t2").is_err() && check("t2").is_ok(),
            "only the second pass"
        );
        assert!(check("other").is_ok());
    }
}
