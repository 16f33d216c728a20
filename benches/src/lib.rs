//! Shared helpers for the benchmark programs in `src/bin/`: timing and table printing.

use std::time::{Duration, Instant};

/// Runs `work` until at least `budget` has passed (and at least `min_runs` times), returning
/// the median duration of one run.
pub fn median_time(min_runs: usize, budget: Duration, mut work: impl FnMut()) -> Duration {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || start.elapsed() < budget {
        let run = Instant::now();
        work();
        times.push(run.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Bytes per second as GB/s (10^9).
pub fn gigabytes_per_second(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// Prints a table with a header row and aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.to_vec());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
