//! Generates `include/autostandby.h` from the files of `src/ffi` with cbindgen.
//!
//! The header is committed. It is rewritten only when its content changes, so a stale
//! committed header shows up as a diff after any build (`make header-check`).

use std::{env, fs, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    // Only src/ffi is the C ABI. cbindgen follows `mod` declarations from the module
    // root, so giving it the other files as well would declare every item twice.
    let builder = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src").join("ffi").join("mod.rs"));
    let bindings = match builder.generate() {
        Ok(bindings) => bindings,
        Err(err) => {
            // A syntax error in the crate surfaces from rustc with a better message.
            println!("cargo:warning=cbindgen could not generate the header: {err}");
            return;
        }
    };
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = crate_dir.join("include").join("autostandby.h");
    if fs::read(&path).ok().as_deref() != Some(generated.as_slice()) {
        fs::write(&path, &generated).expect("include/ is writable");
    }
}
