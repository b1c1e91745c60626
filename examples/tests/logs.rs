//! Log output of the example programs when stderr is not a terminal.
#![cfg(feature = "tcp")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn logs_to_a_pipe_carry_no_ansi_colour_codes() {
    // A subscriber pointed at a port nobody listens on logs its retries and
    // gives up after its timeout; stderr is a pipe here.
    let mut child = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args([
            "--endpoint",
            "tcp://127.0.0.1:9",
            "--count",
            "1",
            "--timeout",
            "1",
        ])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start subscriber");
    // Read stderr while the program runs, so a full pipe cannot stall it.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut pipe, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("poll subscriber").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the subscriber did not give up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = reader.join().expect("stderr reader");
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        !stderr.trim().is_empty(),
        "expected some log lines at debug"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in a piped log:\n{stderr}"
    );
}
