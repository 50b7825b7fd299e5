//! What every part of the comparison uses: running in a namespace, a
//! shell command on a host, pinning to the gateway's or the host's core,
//! the kernel's NAPI threads and IP counters.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use forwarder_testkit::{Host, Lab, Netns};

/// Runs `f` on a thread inside `ns` and waits for it.
pub(crate) fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    ns.enter(f)?.join().map_err(|_| anyhow::anyhow!("a thread in {} panicked", ns.name))
}

pub(crate) fn sh(lab: &Lab, host: Host, program: &str, args: &[&str]) -> Result<String> {
    lab.ns(host).exec(program, args).with_context(|| format!("{program} {}", args.join(" ")))
}

/// The gateway's core: the NAPI threads of its interfaces (where XDP, TC,
/// netfilter and routing all run) and the forwarder daemon. Generator,
/// receiver, clients and servers run on [`HOST_CPU`].
pub(crate) const GW_CPU: usize = 1;
pub(crate) const HOST_CPU: usize = 0;

/// Pins task `tid` (0: the calling thread) to `cpu`.
pub(crate) fn pin(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data, `cpu` is below its capacity, and the
    // call only reads the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    ensure!(rc == 0, "pinning task {tid} to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Pins every thread of process `pid` to `cpu`.
pub(crate) fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = t?.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin(tid, cpu)?;
        }
    }
    Ok(())
}

/// The kernel's NAPI threads (`napi/IFNAME-ID`) by task id.
pub(crate) fn napi_threads() -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeSet::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("napi/"))
        })
        .collect()
}

/// GRO and threaded NAPI on `ifname` of `host`; the NAPI threads that
/// appear (only ours: the benchmark creates nothing else meanwhile) are
/// pinned to `cpu`.
pub(crate) fn threaded_napi(lab: &Lab, host: Host, ifname: &str, cpu: usize) -> Result<Vec<i32>> {
    let before = napi_threads();
    sh(lab, host, "ethtool", &["-K", ifname, "gro", "on"])?;
    sh(lab, host, "sh", &["-c", &format!("echo 1 > /sys/class/net/{ifname}/threaded")])?;
    let new: Vec<i32> = napi_threads().difference(&before).copied().collect();
    ensure!(!new.is_empty(), "no NAPI thread appeared for {ifname}");
    for tid in &new {
        pin(*tid, cpu)?;
    }
    Ok(new)
}

/// Receive Packet Steering on the gateway's `ifname`: what its queue
/// receives is processed on `cpu`'s backlog (as a NIC's interrupt bound
/// to that core would have it).
pub(crate) fn rps(lab: &Lab, ifname: &str, cpu: usize) -> Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    sh(
        lab,
        Host::Gateway,
        "sh",
        &["-c", &format!("echo {mask} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus")],
    )?;
    Ok(())
}

/// An IPv4 counter of the gateway's `/proc/net/snmp` (`Ip:` line).
pub(crate) fn ip_counter(lab: &Lab, name: &str) -> Result<u64> {
    let text = sh(lab, Host::Gateway, "cat", &["/proc/net/snmp"])?;
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (head, vals) = (lines.next().context("snmp")?, lines.next().context("snmp")?);
    let i = head.split_whitespace().position(|h| h == name).context("counter")?;
    vals.split_whitespace().nth(i).context("value")?.parse().context("number")
}

/// Packets the kernel's backlogs dropped so far, over all CPUs
/// (`/proc/net/softnet_stat`'s second column: the queue was full).
pub(crate) fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}
