//! What an import produced: rules, interfaces, what it left out and why.

use std::collections::BTreeSet;

use crate::settings::Rule;

/// What an import produced.
#[derive(Debug, Default)]
pub struct Import {
    pub rules: Vec<Rule>,
    pub public: BTreeSet<String>,
    pub internal: BTreeSet<String>,
    /// (line number, line, why it was not converted or what was dropped).
    pub skipped: Vec<(usize, String, String)>,
    /// (line number, note) for converted rules whose meaning shifted.
    pub notes: Vec<(usize, String)>,
    /// The subcommand that made it (for the output's header).
    pub tool: &'static str,
}

impl Import {
    /// The result as a forwarder TOML config.
    pub fn to_toml(&self) -> crate::error::Result<String> {
        let settings = crate::settings::Settings {
            public: self.public.iter().cloned().collect(),
            internal: self.internal.iter().cloned().collect(),
            rules: self.rules.clone(),
            ..Default::default()
        };
        Ok(format!("# converted by `forwarder {}`\n{}", self.tool, settings.to_toml()?))
    }
}
