// TEMPORARY until the test guests land: an empty demo image so the binary builds.
fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    let dir = std::path::Path::new(&out).join("guests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.elf"), b"").unwrap();
    println!("cargo:rustc-env=TROUPE_GUEST_DIR={}", dir.display());
}
