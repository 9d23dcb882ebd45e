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
    // Only src/ffi is the C ABI: parse its files and nothing else.
    let mut builder = cbindgen::Builder::new().with_config(config);
    let mut sources: Vec<PathBuf> = fs::read_dir(crate_dir.join("src").join("ffi"))
        .expect("src/ffi exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    sources.sort();
    for source in sources {
        builder = builder.with_src(source);
    }
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
