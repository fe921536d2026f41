//! Link flags for the `imperium` binary.

fn main() {
    // Packed relative relocations (DT_RELR, glibc 2.36+, binutils 2.38+):
    // the 600 KB table of relative relocations a PIE carries, which the
    // dynamic loader reads in full at start-up, shrinks to a few KB, and
    // with it the emperor's resident memory.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
