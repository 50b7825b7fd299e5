//! The Debian package as `cargo xtask deb` builds it (`FORWARDER_DEB`, or
//! the newest `target/debian/forwarder_*.deb`): unpacked into a throw-away
//! root, every path it must hold, its control data, the binary it ships,
//! the shipped configuration, and man pages and completions that say what
//! the binary's `--help` says. Needs root (a namespace with the example's
//! interfaces).

use std::{
    io::Read,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory;
use forwarder_testkit::Lab;

/// The package under test.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("FORWARDER_DEB") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "deb"));
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().expect("no package: build it with `cargo xtask deb` (or set FORWARDER_DEB)")
}

/// Runs a command; (exit status, stdout, stderr).
fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn gunzip(path: &Path) -> String {
    let (status, out, err) = run(Command::new("zcat").arg(path));
    assert_eq!(status, Some(0), "{}: {err}", path.display());
    out
}

/// The long flags (`--name`) a help text lists.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn the_package_holds_what_it_must_and_its_parts_agree() {
    let deb = deb();
    let lab = Lab::new().unwrap();
    let root = lab.dir.join("root");
    let (status, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert_eq!(status, Some(0), "{err}");
    let control = lab.dir.join("control");
    let (status, _, err) = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(status, Some(0), "{err}");
    paths(&root);
    let version = control_data(&deb, &control);
    let bin = root.join("usr/sbin/forwarder");
    // The binary runs, and is the package's version.
    let (status, out, err) = run(Command::new(&bin).arg("--version"));
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(out.trim(), format!("forwarder {version}"));
    unit(&root);
    configuration(&lab, &root, &bin);
    docs(&root, &bin);
}

/// Every path the package must hold.
fn paths(root: &Path) {
    let pages: Vec<String> = forwarder::cli::docs::pages(forwarder::cli::Cli::command())
        .into_iter()
        .map(|(name, _)| format!("usr/share/man/man8/{name}.gz"))
        .collect();
    assert!(pages.len() > 15, "{pages:?}");
    let paths = [
        "usr/sbin/forwarder",
        "usr/lib/systemd/system/forwarder.service",
        "etc/forwarder/forwarder.toml",
        "usr/share/bash-completion/completions/forwarder",
        "usr/share/zsh/vendor-completions/_forwarder",
        "usr/share/fish/vendor_completions.d/forwarder.fish",
        "usr/share/doc/forwarder/copyright",
        "usr/share/doc/forwarder/changelog.gz",
        "usr/share/doc/forwarder/README.md",
    ];
    for p in paths.iter().map(|p| (*p).to_string()).chain(pages.iter().cloned()) {
        assert!(root.join(&p).is_file(), "{p} is not in the package");
    }
    let mode = std::fs::metadata(root.join("usr/sbin/forwarder")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
}

/// The control data: what it depends on, the conffile, no start or enable
/// on install (the admin asks for it); the package's version.
fn control_data(deb: &Path, control: &Path) -> String {
    let field = |name: &str| {
        let (status, out, err) = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
        assert_eq!(status, Some(0), "{err}");
        out.trim().to_string()
    };
    assert_eq!(field("Package"), "forwarder");
    let depends = field("Depends");
    assert!(depends.contains("libc6") && depends.contains("iproute2"), "{depends}");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/forwarder/forwarder.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("was-enabled"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "started on install: {postinst}");
    assert!(
        !postinst.lines().any(|l| l.trim() == "deb-systemd-helper enable forwarder.service"),
        "{postinst}"
    );
    field("Version")
}

/// The unit runs the packaged binary on the shipped file, reloads by
/// SIGHUP after a check, and does not restart on refused settings.
fn unit(root: &Path) {
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/forwarder.service")).unwrap();
    for line in [
        "ExecStart=/usr/sbin/forwarder run --config /etc/forwarder/forwarder.toml",
        "ExecReload=/usr/sbin/forwarder run --config /etc/forwarder/forwarder.toml --check-only",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.contains(line), "{line} not in the unit:\n{unit}");
    }
}

/// The shipped configuration forwards nothing: the daemon refuses it (exit
/// 2, nothing touched) until it is edited; its examples, uncommented, are
/// valid on a host with the interfaces they name.
fn configuration(lab: &Lab, root: &Path, bin: &Path) {
    let shipped = root.join("etc/forwarder/forwarder.toml");
    let check = |cfg: &Path| {
        run(lab.gateway.command(bin.to_str().unwrap()).args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--check-only",
        ]))
    };
    let (status, _, err) = check(&shipped);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("no public interface given"), "{err}");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let example: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let uncommented = lab.dir.join("example.toml");
    std::fs::write(&uncommented, &example).unwrap();
    lab.gateway.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]).unwrap();
    let (status, out, err) = check(&uncommented);
    assert_eq!(status, Some(0), "{err}\n{example}");
    assert_eq!(out.trim(), "the settings are valid: 2 rule(s); public eth0; internal eth1");
}

/// The man pages and the completions say what `--help` says: every flag of
/// `run`, and every subcommand.
fn docs(root: &Path, bin: &Path) {
    let (_, help, _) = run(Command::new(bin).args(["run", "--help"]));
    let flags = help_flags(&help);
    assert!(flags.len() > 20 && flags.contains(&"--check-only".to_string()), "{flags:?}");
    let page = gunzip(&root.join("usr/share/man/man8/forwarder-run.8.gz")).replace("\\-", "-");
    let completion = |p: &str| {
        let mut s = String::new();
        std::fs::File::open(root.join(p)).unwrap().read_to_string(&mut s).unwrap();
        s
    };
    let bash = completion("usr/share/bash-completion/completions/forwarder");
    let zsh = completion("usr/share/zsh/vendor-completions/_forwarder");
    let fish = completion("usr/share/fish/vendor_completions.d/forwarder.fish");
    for f in &flags {
        assert!(page.contains(f.as_str()), "{f} is in `run --help`, not in forwarder-run(8)");
        assert!(bash.contains(f.as_str()), "{f} is not in the bash completion");
        assert!(zsh.contains(f.as_str()), "{f} is not in the zsh completion");
        assert!(fish.contains(&format!("-l {}", &f[2..])), "{f} is not in the fish completion");
    }
    // The grammar and the file's keys, as `run --help` has them.
    assert!(
        page.contains("PROTO:PORTS[@IFACE]=BACKEND")
            && help.contains("PROTO:PORTS[@IFACE]=BACKEND")
    );
    assert!(page.contains("on_down = \"keep\"") && help.contains("on_down = \"keep\""));
    let (_, top, _) = run(Command::new(bin).arg("--help"));
    for sub in ["run", "rule", "conntrack", "backend", "save", "completions", "import-ipvsadm"] {
        assert!(top.contains(&format!("  {sub} ")), "{sub} not in --help");
        assert!(bash.contains(sub) && fish.contains(sub), "{sub} not in the completions");
        let page = root.join(format!("usr/share/man/man8/forwarder-{sub}.8.gz"));
        assert!(page.is_file(), "no page for {sub}");
    }
}
