//! Compiles the XDP program in `bpf/` with clang and leaves the object in OUT_DIR, where
//! `include_bytes!` embeds it into the binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/xdp_espd.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("xdp_espd.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .args([
            "-I/usr/include/x86_64-linux-gnu",
            "-I/usr/include/aarch64-linux-gnu",
        ])
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to compile {src} ({s}); see the errors above"),
        Err(e) => panic!(
            "espd needs clang to build its XDP program ({src}): `{clang}` could not run: {e}. \
             Install it (Debian: apt-get install clang llvm libelf-dev) or set CLANG=/path/to/clang"
        ),
    }
}
