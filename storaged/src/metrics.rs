//! Request counts, latencies and bytes per operation, served in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default, Debug, Clone)]
struct OpStats {
    ok: u64,
    failed: u64,
    seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default, Debug)]
pub struct Metrics {
    ops: Mutex<BTreeMap<&'static str, OpStats>>,
    bytes: Mutex<(u64, u64)>,
}

impl Metrics {
    pub fn record(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let mut ops = self.ops.lock().expect("metrics poisoned");
        let stats = ops.entry(op).or_default();
        if ok {
            stats.ok += 1;
        } else {
            stats.failed += 1;
        }
        let seconds = elapsed.as_secs_f64();
        stats.seconds += seconds;
        for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }

    pub fn bytes_in(&self, bytes: usize) {
        self.bytes.lock().expect("metrics poisoned").0 += bytes as u64;
    }

    pub fn bytes_out(&self, bytes: usize) {
        self.bytes.lock().expect("metrics poisoned").1 += bytes as u64;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ops = self.ops.lock().expect("metrics poisoned").clone();
        out += "# HELP vault_requests_total Requests by operation and outcome.\n";
        out += "# TYPE vault_requests_total counter\n";
        for (op, stats) in &ops {
            let _ = writeln!(
                out,
                "vault_requests_total{{op=\"{op}\",outcome=\"ok\"}} {}",
                stats.ok
            );
            let _ = writeln!(
                out,
                "vault_requests_total{{op=\"{op}\",outcome=\"error\"}} {}",
                stats.failed
            );
        }
        out += "# HELP vault_request_seconds Request latency by operation.\n";
        out += "# TYPE vault_request_seconds histogram\n";
        for (op, stats) in &ops {
            for (bound, count) in BUCKETS.iter().zip(stats.buckets) {
                let _ = writeln!(
                    out,
                    "vault_request_seconds_bucket{{op=\"{op}\",le=\"{bound}\"}} {count}"
                );
            }
            let total = stats.ok + stats.failed;
            let _ = writeln!(
                out,
                "vault_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(
                out,
                "vault_request_seconds_sum{{op=\"{op}\"}} {}",
                stats.seconds
            );
            let _ = writeln!(out, "vault_request_seconds_count{{op=\"{op}\"}} {total}");
        }
        let (bytes_in, bytes_out) = *self.bytes.lock().expect("metrics poisoned");
        out += "# HELP vault_chunk_bytes_total Chunk bytes received and sent.\n";
        out += "# TYPE vault_chunk_bytes_total counter\n";
        let _ = writeln!(
            out,
            "vault_chunk_bytes_total{{direction=\"in\"}} {bytes_in}"
        );
        let _ = writeln!(
            out,
            "vault_chunk_bytes_total{{direction=\"out\"}} {bytes_out}"
        );
        out
    }
}

/// Answers every HTTP request on `addr` with the metrics (a scraper needs nothing more).
pub async fn serve(addr: SocketAddr, metrics: std::sync::Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 4096];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
            let body = metrics.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
