//! Documentation made from the clap definitions that `--help` shows:
//! shell completions (`forwarder completions SHELL`) and the man pages
//! (`forwarder manpages DIR`, hidden: the package build runs it), with the
//! rule grammar and the file's keys from [`crate::settings::help`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use roff::{Roff, roman};

use crate::settings::help::{CONFIG_FILE, RULES};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for `args.shell` of the command line
/// `cli` defines.
pub fn completions(args: &CompletionsArgs, cli: clap::Command) {
    print!("{}", completion(args.shell, cli));
}

/// The completion script for `shell`.
pub fn completion(shell: clap_complete::Shell, mut cli: clap::Command) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli, "forwarder", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Where to write forwarder.8 and forwarder-SUBCOMMAND.8 (created if
    /// needed).
    pub dir: PathBuf,
}

/// Writes every man page of the command line `cli` defines into
/// `args.dir`.
pub fn manpages(args: &ManpagesArgs, cli: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    for (name, page) in pages(cli) {
        let path = args.dir.join(&name);
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sections of our own: (title, text, shown as written rather than
/// filled).
type Extra = (&'static str, String, bool);

/// What a page adds after the options, by command.
fn extra_sections(name: &str, subpages: &[String]) -> Vec<Extra> {
    let files = "/etc/forwarder/forwarder.toml\n    the configuration file of the packaged service (forwarder.service)\n\
                 /run/forwarder.sock\n    the control socket (--control), root only";
    match name {
        "forwarder" => vec![
            ("RULES", RULES.to_string(), true),
            ("CONFIGURATION FILE", CONFIG_FILE.to_string(), true),
            ("FILES", files.to_string(), true),
            (
                "SEE ALSO",
                subpages
                    .iter()
                    .map(|p| format!("{}(8)", p.trim_end_matches(".8")))
                    .collect::<Vec<_>>()
                    .join(", "),
                false,
            ),
        ],
        "forwarder-run" => vec![
            ("RULES", RULES.to_string(), true),
            ("CONFIGURATION FILE", CONFIG_FILE.to_string(), true),
            ("FILES", files.to_string(), true),
        ],
        "forwarder-rule-add" => vec![("RULES", RULES.to_string(), true)],
        _ => Vec::new(),
    }
}

/// Every page of `cli`: (file name, roff text), `forwarder.8` first.
pub fn pages(cli: clap::Command) -> Vec<(String, Vec<u8>)> {
    let mut cmd = cli.disable_help_subcommand(true);
    cmd.build();
    let mut commands = Vec::new();
    collect(&cmd, &mut commands);
    let names: Vec<String> = commands.iter().map(|c| format!("{}.8", display_name(c))).collect();
    commands
        .iter()
        .map(|c| {
            let name = display_name(c);
            let subpages: Vec<String> =
                names.iter().filter(|n| n.as_str() != format!("{name}.8")).cloned().collect();
            (format!("{name}.8"), page(c, &extra_sections(&name, &subpages)))
        })
        .collect()
}

fn display_name(c: &clap::Command) -> String {
    c.get_display_name().unwrap_or_else(|| c.get_name()).to_string()
}

/// `cmd` and every visible subcommand under it, depth first.
fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

/// One page: clap's sections (the text `--help` shows), then `extra`
/// instead of clap's own rendering of the long help's tail.
fn page(cmd: &clap::Command, extra: &[Extra]) -> Vec<u8> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("forwarder {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let _ = man.render_subcommands_section(&mut out);
    }
    let mut roff = Roff::new();
    for (title, text, as_written) in extra {
        roff.control("SH", [*title]);
        // The grammar and the file's keys are laid out in columns.
        if *as_written {
            roff.control("nf", []);
        }
        for line in text.lines() {
            roff.text([roman(line)]);
        }
        if *as_written {
            roff.control("fi", []);
        }
    }
    out.extend(roff.render().into_bytes());
    if cmd.get_version().is_some() {
        let _ = man.render_version_section(&mut out);
    }
    out
}

/// The long flags of `SUBCOMMAND` in `cli` (`--name`), as clap defines
/// them.
pub fn flags(cli: &clap::Command, subcommand: &str) -> Vec<String> {
    cli.find_subcommand(subcommand)
        .map(|c| c.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect())
        .unwrap_or_default()
}

/// A man page's text with roff's escapes of `-` undone (to look for
/// flags in it).
pub fn plain(page: &[u8]) -> String {
    String::from_utf8_lossy(page).replace("\\-", "-")
}

/// The pages of `cli` that `dir` lacks.
pub fn missing_pages(cli: clap::Command, dir: &Path) -> Vec<String> {
    pages(cli).into_iter().map(|(n, _)| n).filter(|n| !dir.join(n).exists()).collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    /// The pages and the completions say what `--help` says: every flag
    /// of every subcommand, in each.
    #[test]
    fn pages_and_completions_come_from_the_help() {
        let pages = pages(Cli::command());
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for n in ["forwarder.8", "forwarder-run.8", "forwarder-rule-add.8", "forwarder-rule-del.8"]
        {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("manpages")), "{names:?}");
        let mut cmd = Cli::command();
        for sub in ["run", "stats", "conntrack", "check", "teardown", "save"] {
            let help = cmd.find_subcommand_mut(sub).unwrap().render_long_help().to_string();
            let page =
                plain(&pages.iter().find(|(n, _)| *n == format!("forwarder-{sub}.8")).unwrap().1);
            let flags = flags(&cmd, sub);
            assert!(!flags.is_empty() || sub == "conntrack", "{sub}");
            for f in &flags {
                assert!(help.contains(f.as_str()), "{f} not in `{sub} --help`");
                assert!(page.contains(f.as_str()), "{f} not in forwarder-{sub}(8)");
            }
        }
        let run = plain(&pages.iter().find(|(n, _)| n == "forwarder-run.8").unwrap().1);
        assert!(run.contains(".SH RULES") && run.contains("PROTO:PORTS[@IFACE]=BACKEND"), "{run}");
        assert!(run.contains(".SH \"CONFIGURATION FILE\"") && run.contains("on_down = \"keep\""));
        assert!(crate::settings::help::run_help().contains("on_down = \"keep\""));
        for shell in
            [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
        {
            let script = completion(shell, Cli::command());
            for f in flags(&Cli::command(), "run") {
                assert!(
                    script.contains(f.trim_start_matches('-')),
                    "{f} not in the {shell} completion"
                );
            }
            assert!(script.contains("conntrack") && script.contains("import-iptables"), "{shell}");
        }
    }
}
