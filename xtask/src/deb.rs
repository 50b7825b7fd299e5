//! `cargo xtask deb`: the Debian package. Builds the binary, makes its man
//! pages and shell completions with it (from the same clap definitions as
//! `--help`), packs them with cargo-deb (metadata in
//! `forwarder-user/Cargo.toml`), then holds the package to lintian: an
//! error fails the build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{build_forwarder, cargo, status, workspace};

/// The shells whose completions the package installs, and the file name
/// each one's directory expects.
const COMPLETIONS: [(&str, &str); 3] =
    [("bash", "forwarder.bash"), ("zsh", "_forwarder"), ("fish", "forwarder.fish")];

/// What `forwarder` prints on stdout for `args`.
fn output_of(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("forwarder {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// `gzip -9n`: what Debian wants for man pages and changelogs (no name or
/// time inside, so the same input packs the same).
fn gzip(path: &Path) -> Result<()> {
    status(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// The generated assets, under `target/release/package` (where the asset
/// list in `forwarder-user/Cargo.toml` takes them).
fn make_assets(bin: &Path) -> Result<()> {
    let dir = bin.parent().context("target dir")?.join("package");
    let _ = std::fs::remove_dir_all(&dir);
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    status(Command::new(bin).arg("manpages").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    for (shell, file) in COMPLETIONS {
        std::fs::write(completions.join(file), output_of(bin, &["completions", shell])?)?;
    }
    let changelog = dir.join("changelog");
    std::fs::copy(workspace().join("packaging/debian/changelog"), &changelog)?;
    gzip(&changelog)
}

/// Builds the package and checks it with lintian; its path.
pub fn build() -> Result<PathBuf> {
    let bin = build_forwarder()?;
    make_assets(&bin)?;
    let out = cargo()
        .args(["deb", "-p", "forwarder-user", "--no-build"])
        .output()
        .context("running cargo deb (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| Path::new(l.trim()).extension().is_some_and(|e| e.eq_ignore_ascii_case("deb")))
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb printed no package path")?;
    eprintln!("xtask deb: {}", deb.display());
    lintian(&deb)?;
    Ok(deb)
}

/// lintian's verdict on `deb`, printed; an error (E:) fails.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info", "--pedantic"])
        .arg(deb)
        .output()
        .context("running lintian (`cargo xtask setup` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        eprintln!("lintian: {line}");
    }
    if !out.status.success() || text.lines().any(|l| l.starts_with("E: ")) {
        bail!(
            "lintian found errors in {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!("xtask deb: lintian: no errors");
    Ok(())
}
