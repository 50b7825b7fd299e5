//! The `forwarder` binary: parse the command line, run the subcommand.

use clap::{CommandFactory, Parser};
use forwarder::cli::{Cli, Command, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::ImportIptables(args) => {
            forwarder::cli::import::run(&args, forwarder::cli::import::From::Iptables)
        }
        Command::ImportIpvsadm(args) => {
            forwarder::cli::import::run(&args, forwarder::cli::import::From::Ipvsadm)
        }
        Command::Check(args) => forwarder::cli::check::run(&args),
        Command::Stats(args) => forwarder::cli::client::stats(&args),
        Command::Rule(args) => forwarder::cli::client::rule(&args),
        Command::Save(args) => forwarder::cli::client::save(&args),
        Command::Backend(args) => forwarder::cli::backend::run(&args),
        Command::Conntrack(args) => forwarder::cli::client::conntrack(&args),
        Command::Teardown(args) => forwarder::cli::teardown::run(&args),
        Command::Completions(args) => {
            forwarder::cli::docs::completions(&args, Cli::command());
            Ok(())
        }
        Command::Manpages(args) => forwarder::cli::docs::manpages(&args, Cli::command()),
    };
    if let Err(e) = result {
        eprintln!("forwarder: error: {e:#}");
        let invalid = e.downcast_ref::<run::InvalidSettings>().is_some();
        std::process::exit(if invalid { run::InvalidSettings::EXIT_STATUS } else { 1 });
    }
}
