//! Builds troupe's freestanding test guests (`tests/guests/`, a cargo workspace of its own)
//! with a nested `cargo build --release`, and hands them to the crate, its tests and the
//! bench: `TROUPE_GUEST_DIR` (set with `cargo:rustc-env`) is an absolute directory holding
//! `<name>.elf` for every guest (PVH note and multiboot header: QEMU `-kernel` boots it as
//! multiboot on every machine type, troupe's direct boot as it chooses) and
//! `<name>.pvh.elf` (the same image with the multiboot magic cleared, so QEMU boots it
//! through PVH). Code embeds a guest with
//! `include_bytes!(concat!(env!("TROUPE_GUEST_DIR"), "/demo.elf"))`.
//!
//! The nested build uses its own target directory (`<target>/guests`), so it never waits
//! on the outer build's locks, and runs with an environment scrubbed of the outer build's
//! settings (flags, target, wrappers such as clippy-driver), keeping only the jobserver.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// The guests' target triple (named in tests/guests/.cargo/config.toml).
const GUEST_TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// Multiboot 1 header magic (little-endian bytes of 0x1BADB002).
const MULTIBOOT_MAGIC: [u8; 4] = [0x02, 0xB0, 0xAD, 0x1B];
/// The multiboot header must lie in the image's first 8 KiB.
const MULTIBOOT_SEARCH: usize = 8192;
/// Outer-build variables the nested cargo may keep; every other `CARGO_*` goes.
const KEEP_CARGO_VARS: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
/// Other variables that would change or break the nested build.
const DROP_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let guests_dir = manifest_dir.join("tests").join("guests");
    let target_root = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => manifest_dir.join(dir),
        None => manifest_dir.join("target"),
    };
    let target_dir = target_root.join("guests");
    let elf_dir = target_dir.join("elf");

    let guests = match guest_names(&guests_dir) {
        Ok(g) if !g.is_empty() => g,
        Ok(_) => fail(&format!(
            "no guest crates found in {}",
            guests_dir.display()
        )),
        Err(e) => fail(&format!("cannot list {}: {e}", guests_dir.display())),
    };
    emit_rerun(&guests_dir);
    build(&guests_dir, &target_dir);

    if let Err(e) = fs::create_dir_all(&elf_dir) {
        fail(&format!("cannot create {}: {e}", elf_dir.display()));
    }
    let built = target_dir.join(GUEST_TRIPLE).join("release");
    for name in &guests {
        let src = built.join(name);
        let image = match fs::read(&src) {
            Ok(b) => b,
            Err(e) => fail(&format!(
                "guest {name} was not built at {}: {e}",
                src.display()
            )),
        };
        if let Err(e) = publish(&elf_dir, &format!("{name}.elf"), &image) {
            fail(&format!(
                "cannot write {name}.elf in {}: {e}",
                elf_dir.display()
            ));
        }
        let pvh = match without_multiboot(&image) {
            Some(b) => b,
            None => fail(&format!(
                "guest {name} has no multiboot header in its first 8 KiB"
            )),
        };
        if let Err(e) = publish(&elf_dir, &format!("{name}.pvh.elf"), &pvh) {
            fail(&format!(
                "cannot write {name}.pvh.elf in {}: {e}",
                elf_dir.display()
            ));
        }
    }
    println!("cargo:rustc-env=TROUPE_GUEST_DIR={}", elf_dir.display());
}

/// Guest crates: directories of `tests/guests` with a `src/main.rs` (guestlib has none).
fn guest_names(guests_dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(guests_dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.join("Cargo.toml").is_file() && path.join("src").join("main.rs").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reruns when any guest source, manifest, lock file or cargo config changes (not when the
/// guests' own `target/` does, should someone build there by hand). A new guest crate is
/// noticed through the workspace manifest, which must list it.
fn emit_rerun(guests_dir: &Path) {
    let entries = match fs::read_dir(guests_dir) {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot list {}: {e}", guests_dir.display())),
    };
    for entry in entries.flatten() {
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}

fn build(guests_dir: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(guests_dir)
        .args(["build", "--release", "--offline", "--target-dir"])
        .arg(target_dir);
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        let drop = (k.starts_with("CARGO_") && !KEEP_CARGO_VARS.contains(&k.as_ref()))
            || k.starts_with("__CARGO")
            || DROP_VARS.contains(&k.as_ref());
        if drop {
            cmd.env_remove(&key);
        }
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run {}: {e}", cargo.to_string_lossy())),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "building the test guests in {} failed ({}): see the nested cargo's output above",
            guests_dir.display(),
            output.status
        ));
    }
}

/// The image with its multiboot magic cleared, or None if it has no multiboot header.
fn without_multiboot(image: &[u8]) -> Option<Vec<u8>> {
    let limit = image.len().min(MULTIBOOT_SEARCH);
    let at = (0..limit.saturating_sub(3))
        .step_by(4)
        .find(|&i| image[i..i + 4] == MULTIBOOT_MAGIC)?;
    let mut out = image.to_vec();
    out[at..at + 4].fill(0);
    Some(out)
}

/// Writes `dir/name` atomically (write a temporary file, then rename), so concurrent outer
/// builds never expose a half-written image.
fn publish(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let dest = dir.join(name);
    if fs::read(&dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, &dest)
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}
