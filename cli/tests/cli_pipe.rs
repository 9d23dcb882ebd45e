//! The `autostandby` binary writing into a closed pipe (`autostandby watch … | head -1`)
//! stops quietly: no panic, no backtrace, exit status 0.

#[path = "../../tests/root_check/mod.rs"]
mod root_check;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_autostandby");

fn require_root() {
    root_check::require_root("autostandby watch reads conntrack");
}

/// Waits for `child` up to `limit`, killing it if it is still running then.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > until {
            child.kill().ok();
            panic!("autostandby did not exit within {limit:?} after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn help_into_a_closed_pipe_exits_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(BIN)
        .arg("--help")
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autostandby");
    let status = wait_for(&mut child, Duration::from_secs(10));
    let err = stderr_of(&mut child);
    assert!(status.success(), "exit status {status:?}, stderr:\n{err}");
    assert!(err.is_empty(), "stderr should be empty:\n{err}");
}

#[test]
fn watch_into_a_pipe_closed_after_one_line_exits_quietly() {
    require_root();
    let mut child = Command::new(BIN)
        .args(["watch", "--ip", "10.255.0.2", "--json"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autostandby");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read the first line");
    // The reader is dropped here, as `head -1` exits: the next tick writes into a
    // closed pipe.
    assert!(line.contains("\"address\":\"10.255.0.2\""), "{line}");
    let status = wait_for(&mut child, Duration::from_secs(10));
    let err = stderr_of(&mut child);
    assert!(status.success(), "exit status {status:?}, stderr:\n{err}");
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    assert!(err.is_empty(), "stderr should be empty:\n{err}");
}
