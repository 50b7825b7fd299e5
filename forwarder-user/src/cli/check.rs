//! `forwarder check`: preflight, OK/WARN/FAIL per item.

use clap::Args;

use crate::check::{Level, run as checks};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Public interface to check; repeatable.
    #[arg(long = "public", value_name = "IFACE")]
    pub public: Vec<String>,
    /// Internal interface to check; repeatable.
    #[arg(long = "internal", value_name = "IFACE")]
    pub internal: Vec<String>,
    /// One JSON object: `{"items":[{"level":"ok|warn|fail","what":…,"fix":…}],"failed":N,"warnings":N}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let items = checks(&args.public, &args.internal);
    let fails = items.iter().filter(|i| i.level == Level::Fail).count();
    let warns = items.iter().filter(|i| i.level == Level::Warn).count();
    if args.json {
        println!("{}", serde_json::json!({ "items": items, "failed": fails, "warnings": warns }));
    } else {
        for i in &items {
            println!("{} {}", i.level, i.what);
            if !i.fix.is_empty() {
                println!("     -> {}", i.fix);
            }
        }
        println!("{} checks: {} failed, {} warnings", items.len(), fails, warns);
    }
    if fails > 0 {
        anyhow::bail!("{fails} check(s) failed");
    }
    Ok(())
}
