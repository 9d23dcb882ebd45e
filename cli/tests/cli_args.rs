//! The `autostandby` command line: version, help of every subcommand, and the errors for
//! bad arguments, which come before anything touches conntrack (no root needed).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_autostandby");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run autostandby {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `args`, expects a usage error (exit status 2, nothing on stdout) whose message
/// contains every one of `needles`.
fn usage_error(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in:\n{err}");
    }
}

#[test]
fn version_names_the_library_and_the_abi() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = text(&out.stdout);
    assert_eq!(
        v.trim(),
        format!(
            "autostandby {} (libautostandby {}, C ABI {})",
            env!("CARGO_PKG_VERSION"),
            autostandby::VERSION,
            autostandby::ffi::AUTOSTANDBY_ABI_VERSION
        )
    );
}

#[test]
fn every_subcommand_has_help() {
    for (sub, flags) in [
        ("watch", &["--ip", "--idle", "--netns", "--json"][..]),
        ("flows", &["--ip", "--netns", "--json"][..]),
        (
            "stats",
            &[
                "--ip",
                "--for",
                "--idle",
                "--netns",
                "--json",
                "--prometheus",
            ][..],
        ),
    ] {
        for help in [&[sub, "--help"][..], &["help", sub][..]] {
            let out = run(help);
            let h = text(&out.stdout);
            assert!(out.status.success(), "{help:?}: {}", text(&out.stderr));
            assert!(h.contains(&format!("Usage: autostandby {sub}")), "{h}");
            for f in flags {
                assert!(h.contains(f), "{help:?} does not mention {f}:\n{h}");
            }
        }
    }
    let out = run(&["--help"]);
    let h = text(&out.stdout);
    assert!(out.status.success());
    for sub in ["watch", "flows", "stats"] {
        assert!(h.contains(sub), "{h}");
    }
}

#[test]
fn no_arguments_is_a_usage_error_that_shows_the_commands() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("Usage: autostandby"), "{err}");
    assert!(err.contains("watch"), "{err}");
}

#[test]
fn bad_values_are_named() {
    usage_error(
        &["watch", "--ip", "10.0.0.2", "--idle", "5x"],
        &["'5x'", "--idle", "unit"],
    );
    usage_error(
        &["watch", "--ip", "10.0.0.2", "--idle", "0s"],
        &["'0s'", "positive"],
    );
    usage_error(&["stats", "--for", "soon"], &["'soon'", "--for"]);
    usage_error(
        &["watch", "--ip", "10.0.0.2,10.0.0.300,fd00::1"],
        &["'10.0.0.300'", "--ip", "not an IPv4 or IPv6 address"],
    );
    usage_error(
        &["stats", "--ip", "10.0.0.2", "--ip", "nope"],
        &["'nope'", "--ip"],
    );
    usage_error(
        &["flows", "--ip", "10.0.0.2,10.0.0.3"],
        &["exactly one address"],
    );
    usage_error(
        &["watch", "--ip", "10.0.0.2,::ffff:10.0.0.2"],
        &["10.0.0.2 is given twice", "Usage: autostandby watch"],
    );
}

#[test]
fn unknown_flags_and_commands_are_named() {
    usage_error(
        &["watch", "--ip", "10.0.0.2", "--bogus"],
        &["unexpected argument '--bogus'"],
    );
    usage_error(&["flows", "--ip", "10.0.0.2", "--for", "1s"], &["'--for'"]);
    usage_error(&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]);
    usage_error(&["watch"], &["--ip"]);
    usage_error(&["flows"], &["--ip"]);
    usage_error(
        &["stats", "--json", "--prometheus"],
        &["cannot be used with"],
    );
}
