//! What the manager reports: `/metrics` and `/status` while a download runs.

use std::process::Command;
use std::time::{Duration, Instant};

use handoff_core::protocol::Framing;

use crate::common::{data, file_with, free_port, hand_over, http_get, job, read_all, Manager};

#[test]
fn metrics_and_status_show_a_live_download_on_several_loops() {
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Manager::start(&["--metrics", &addr, "--threads", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(16 * 1024 * 1024);
    let file = file_with(dir.path(), &body);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &file);
        clients.push(client);
    }
    // The boards refresh every 250 ms: wait (bounded) until all three show.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(&addr, "/metrics");
        if metrics.contains("\nhandoff_downloads_active 3\n") {
            let status = Command::new(env!("CARGO_BIN_EXE_handoff-manager"))
                .args(["status", "--metrics", &addr])
                .output()
                .expect("run status");
            let text = String::from_utf8_lossy(&status.stdout);
            if text.matches("data.bin").count() == 3 {
                assert!(text.starts_with("active 3"), "{text}");
                assert!(text.contains("16.0 MiB"), "{text}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed 3 live downloads"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    for client in clients {
        assert!(read_all(client).ends_with(&body));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(&addr, "/metrics").contains("\nhandoff_downloads_complete_total 3\n") {
        assert!(Instant::now() < deadline, "completions not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}
