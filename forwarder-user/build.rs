//! Builds `forwarder-ebpf` for `bpfel-unknown-none` and leaves its objects
//! in `OUT_DIR`: `forwarder.bpf.o`, which `src/datapath/object.rs` embeds (a plain
//! `cargo build -p forwarder-user` gives one self-contained binary), and
//! `bench.bpf.o`, the benchmarks' object (`datapath::BENCH_OBJECT`, which
//! nothing in the binary uses).
//!
//! `FORWARDER_EBPF_STUB=1` embeds an empty object instead (for `cargo check`
//! and clippy on machines without an eBPF toolchain); the binary then refuses
//! to load and says why.

#[path = "build/ebpf_toolchain.rs"]
mod ebpf_toolchain;

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dest = out.join("forwarder.bpf.o");
    let bench_dest = out.join("bench.bpf.o");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("workspace root").to_path_buf();
    println!("cargo:rerun-if-env-changed=FORWARDER_EBPF_STUB");
    for dir in ["forwarder-ebpf/src", "forwarder-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("forwarder-ebpf/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    if env::var_os("FORWARDER_EBPF_STUB").is_some_and(|v| v == "1") {
        fs::write(&dest, []).expect("write stub object");
        fs::write(&bench_dest, []).expect("write stub object");
        println!(
            "cargo:warning=FORWARDER_EBPF_STUB=1: the forwarder binary carries no eBPF object"
        );
        return;
    }
    let tc = match ebpf_toolchain::detect() {
        Ok(tc) => tc,
        Err(msg) => panic!("{msg}"),
    };
    // Own target dir: a nested cargo must not wait on the outer one's lock.
    let target_dir = out.join("ebpf-target");
    let objects =
        ebpf_toolchain::build(&tc, &workspace, &target_dir).unwrap_or_else(|e| panic!("{e}"));
    for (name, to) in [("forwarder", &dest), ("bench", &bench_dest)] {
        let obj = objects.join(name);
        fs::copy(&obj, to).unwrap_or_else(|e| panic!("copy {}: {e}", obj.display()));
    }
}
