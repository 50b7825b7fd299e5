//! `forwarder import-iptables [FILE|-]` and `forwarder import-ipvsadm
//! [FILE|-]`.

use std::{io::Read, path::PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::import::{Import, from_iptables_save, from_ipvsadm_save};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The tool's saved configuration (`iptables-save`, `ipvsadm-save -n`);
    /// `-` (the default) reads standard input.
    #[arg(default_value = "-")]
    pub file: PathBuf,
}

/// Which tool's output.
#[derive(Clone, Copy, Debug)]
pub enum From {
    Iptables,
    Ipvsadm,
}

pub fn run(args: &ImportArgs, from: From) -> anyhow::Result<()> {
    let mut text = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
    } else {
        text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
    }
    let imp: Import = match from {
        From::Iptables => from_iptables_save(&text),
        From::Ipvsadm => from_ipvsadm_save(&text),
    };
    for (n, line, why) in &imp.skipped {
        eprintln!("not converted (line {n}): {line}\n    {why}");
    }
    for (n, note) in &imp.notes {
        eprintln!("note (line {n}): {note}");
    }
    if imp.rules.is_empty() {
        bail!("no rule could be converted");
    }
    print!("{}", imp.to_toml()?);
    eprintln!("converted {} rule(s); {} line(s) not converted", imp.rules.len(), imp.skipped.len());
    Ok(())
}
