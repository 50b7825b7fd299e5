//! The running daemon: one loop over every event source (the audit ring,
//! the kernel log, signals, control and metrics requests, a one-second
//! tick) around a loaded, attached [`Datapath`].
//!
//! Forwarding runs in the kernel and never waits for this loop. The
//! loop's own work is split so that nothing in it can end the daemon by
//! accident:
//! - housekeeping (address sync, conntrack sweep, egress watch, table
//!   watch, backend tables, reset connections' removal, audit reports,
//!   stats file) runs through [`Housekeeping`]:
//!   a failure is logged, counted and retried with backoff;
//! - health checks run as tasks of their own and hand their outcomes to
//!   the loop, which rewrites a balanced rule's table when a backend's
//!   state changes;
//! - control and metrics clients are read and answered by tasks of their
//!   own; the loop only computes answers, so a slow or silent client
//!   holds up nothing, and a bad request gets an error answer;
//! - what remains fatal (a signal stream or an event ring that cannot be
//!   polled) ends [`Daemon::serve`] with an error: the caller then leaves a
//!   pinned datapath attached (see `cli::run`).

mod audit;
mod backends;
mod clients;
mod control;
mod core;
mod down;
mod reload;
mod watch;

pub use audit::Audit;
pub use backends::{Balanced, Member, Pool};
pub use clients::Data;
pub use core::{Daemon, HIGH_WATERMARK_PCT, LOW_WATERMARK_PCT, Options, Signals};
