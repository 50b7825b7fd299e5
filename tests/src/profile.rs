//! Where a datapath program's time goes, for the micro-benchmark's
//! `--profile`: `perf record` samples every CPU on the `cpu-clock` timer
//! (no hardware counters needed, which virtual machines often lack) with
//! call graphs while `BPF_PROG_TEST_RUN` runs the program, and each
//! sample taken under `bpf_test_run` is put down to one [`Part`]: the
//! program's own instructions, the helper or map operation it called
//! (by the kernel function just below the program's frame), or the
//! test-run loop around it.

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

/// What a sample was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The program's own instructions (JIT code).
    Own,
    /// A hash map lookup (connection table, interfaces, services).
    HashLookup,
    /// A hash map insert (a new connection's entries).
    HashInsert,
    /// A hash map delete.
    HashDelete,
    /// The rule trie (LPM) lookup.
    TrieLookup,
    /// `bpf_fib_lookup`.
    Fib,
    /// The devmap redirect.
    Redirect,
    /// The audit ring buffer.
    Ring,
    /// A clock read.
    Clock,
    /// Another helper.
    OtherHelper,
    /// `BPF_PROG_TEST_RUN`'s own loop: timer, context, dispatch.
    TestRun,
}

impl Part {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Own => "program's own code",
            Self::HashLookup => "hash map lookups",
            Self::HashInsert => "hash map inserts",
            Self::HashDelete => "hash map deletes",
            Self::TrieLookup => "rule trie lookup",
            Self::Fib => "FIB lookup",
            Self::Redirect => "devmap redirect",
            Self::Ring => "audit ring buffer",
            Self::Clock => "clock",
            Self::OtherHelper => "other helpers",
            Self::TestRun => "test-run loop",
        }
    }

    /// The part a kernel function called by the program belongs to.
    fn of_callee(f: &str) -> Self {
        match f {
            "__htab_map_lookup_elem"
            | "htab_map_lookup_elem"
            | "lookup_nulls_elem_raw"
            | "htab_map_hash"
            | "memcmp" => Self::HashLookup,
            "htab_map_update_elem" => Self::HashInsert,
            "htab_map_delete_elem" => Self::HashDelete,
            "trie_lookup_elem" => Self::TrieLookup,
            "bpf_xdp_fib_lookup" | "bpf_skb_fib_lookup" => Self::Fib,
            _ if f.starts_with("dev_map") || f.starts_with("dev_hash_map") => Self::Redirect,
            _ if f.starts_with("bpf_ringbuf") => Self::Ring,
            _ if f.starts_with("bpf_ktime") || f.starts_with("ktime") => Self::Clock,
            _ => Self::OtherHelper,
        }
    }
}

/// The part of one sample, from its call stack (innermost frame first);
/// `None` for a sample not taken under `bpf_test_run`.
pub fn classify(stack: &[&str]) -> Option<Part> {
    let top = stack.iter().position(|f| *f == "bpf_test_run")?;
    let inner = &stack[..top];
    // The outermost program frame (a tail call replaces its caller's
    // frame, so there is one per sample), and what it was calling.
    let Some(prog) = inner.iter().rposition(|f| f.starts_with("bpf_prog_")) else {
        return Some(Part::TestRun);
    };
    // Return thunks the JIT's code passes through belong to it.
    let callee = inner[..prog].iter().rev().find(|f| !f.contains("return_thunk"));
    Some(callee.map_or(Part::Own, |f| Part::of_callee(f)))
}

/// Samples per part in `perf script -F comm,ip,sym` output (one block per
/// sample: a header line, then one frame per line, innermost first).
pub fn tally(script: &str) -> BTreeMap<Part, u64> {
    let mut parts = BTreeMap::new();
    for block in script.split("\n\n") {
        let stack: Vec<&str> = block
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|s| s.split_once("+0x").map_or(s, |(name, _)| name))
            .collect();
        if let Some(p) = classify(&stack) {
            *parts.entry(p).or_insert(0) += 1;
        }
    }
    parts
}

/// A `perf record` of every CPU, running until [`Recording::stop`].
pub struct Recording {
    child: Child,
    file: PathBuf,
}

impl Recording {
    /// Starts recording into `file`; fails when `perf` cannot run.
    pub fn start(file: &Path) -> Result<Self> {
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "10000", "-a", "-g", "-o"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record (Debian: apt-get install linux-perf)")?;
        // perf opens its events before it samples anything.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, file: file.to_path_buf() })
    }

    /// Stops the recording (SIGINT, as perf expects) and tallies it.
    pub fn stop(mut self) -> Result<BTreeMap<Part, u64>> {
        let pid = libc::pid_t::try_from(self.child.id()).context("perf's pid")?;
        // SAFETY: plain syscall, to the process this recording started.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            bail!("cannot stop perf record: {}", std::io::Error::last_os_error());
        }
        let st = self.child.wait()?;
        // perf ends by raising the SIGINT it handled, once its file is written.
        ensure!(st.success() || st.signal() == Some(libc::SIGINT), "perf record failed: {st}");
        let out = Command::new("perf")
            .args(["script", "-F", "comm,ip,sym", "-i"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        ensure!(out.status.success(), "perf script failed: {}", out.status);
        let _ = std::fs::remove_file(&self.file);
        Ok(tally(&String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // A recording given up (an error, a panic) must not outlive us.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDER: [&str; 4] = ["bpf_test_run", "bpf_prog_test_run_xdp", "__sys_bpf", "syscall"];

    fn stack<'a>(inner: &[&'a str]) -> Vec<&'a str> {
        inner.iter().copied().chain(UNDER).collect()
    }

    #[test]
    fn a_sample_is_put_down_to_what_the_program_was_calling() {
        let prog = "bpf_prog_a318f36c6b6d72c2_forwarder_xdp";
        assert_eq!(classify(&stack(&[prog])), Some(Part::Own));
        assert_eq!(classify(&stack(&["its_return_thunk", prog])), Some(Part::Own));
        assert_eq!(
            classify(&stack(&["htab_map_hash", "__htab_map_lookup_elem", prog])),
            Some(Part::HashLookup)
        );
        assert_eq!(
            classify(&stack(&["memcpy", "htab_map_update_elem", prog])),
            Some(Part::HashInsert)
        );
        assert_eq!(
            classify(&stack(&[
                "fib_table_lookup",
                "bpf_ipv4_fib_lookup",
                "bpf_xdp_fib_lookup",
                prog
            ])),
            Some(Part::Fib)
        );
        assert_eq!(
            classify(&stack(&["irq_work_queue", "bpf_ringbuf_output", prog])),
            Some(Part::Ring)
        );
        assert_eq!(classify(&stack(&["dev_hash_map_redirect", prog])), Some(Part::Redirect));
        assert_eq!(classify(&stack(&["bpf_get_smp_processor_id", prog])), Some(Part::OtherHelper));
        // The test-run loop, and samples outside any test run.
        assert_eq!(classify(&stack(&["read_tsc", "ktime_get"])), Some(Part::TestRun));
        assert_eq!(classify(&["read_tsc", "ktime_get", "do_idle"]), None);
    }

    #[test]
    fn perf_script_blocks_are_tallied_by_part() {
        let script = "micro 123\n\
            \tffffffffc002d0d8 bpf_prog_cc03_forwarder_xdp_n\n\
            \tffffffff81f55196 bpf_test_run\n\
            \n\
            micro 123\n\
            \tffffffff81f55196 htab_map_update_elem+0x1a\n\
            \tffffffffc002d0d8 bpf_prog_cc03_forwarder_xdp_n\n\
            \tffffffff81f55196 bpf_test_run\n\
            \n\
            swapper 0\n\
            \tffffffff82250979 pv_native_safe_halt\n";
        let t = tally(script);
        assert_eq!(t.get(&Part::Own), Some(&1));
        assert_eq!(t.get(&Part::HashInsert), Some(&1));
        assert_eq!(t.values().sum::<u64>(), 2);
    }
}
