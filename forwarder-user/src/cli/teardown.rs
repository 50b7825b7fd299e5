//! `forwarder teardown --pin-dir DIR`.

use std::path::PathBuf;

use clap::Args;

use crate::pin::Pins;

#[derive(Args, Debug)]
pub struct TeardownArgs {
    /// The directory given to `forwarder run --pin-dir`.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

pub fn run(args: &TeardownArgs) -> anyhow::Result<()> {
    let pins = Pins::open(&args.pin_dir)?;
    let n = pins.remove_all()?;
    println!("removed {n} pin(s) from {}: links detached, state freed", args.pin_dir.display());
    Ok(())
}
