//! The vmctl benchmark (run by `benches/vmctl.sh`, as root): on a two-host lab with a real
//! libvirtd per host and the tiny TCG guest, the time from `start` to the guest's readiness marker and
//! to its address answering a ping from another VM of its project, and the host memory
//! (QEMU's resident set) of the idle VM. One VM, started once per run: its first start, then
//! restarts on the same host. Prints a table.
//!
//!   usage: bench [--runs N] [--idle SECONDS] [--memory MIB]

mod support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use netctl::PortRequest;
use support::lab::ping;
use support::{Site, argument};

struct Run {
    ready_s: f64,
    answer_s: f64,
    rss_mib: f64,
}

fn main() {
    let runs = argument("--runs", 3);
    let idle_s = argument("--idle", 5);
    let memory_mib = argument("--memory", 256);
    // The probe is on the other host, the path the integration test proves.
    let mut site = Site::new("bench", 2, 8192);
    let memory = memory_mib.to_string();
    let probe = site
        .vmctl
        .network()
        .allocate_port(&PortRequest {
            vm: "probe".into(),
            host: "h2".into(),
            project: "alpha".into(),
            network: "research".into(),
            address: None,
        })
        .expect("probe port");
    site.vmctl.network().apply().expect("apply");
    let probe = site.lab.attach(&probe);

    // One VM, started once per run: the first run is its first start, every later one a
    // restart on the same host after a forced stop.
    let name = "b1";
    let args = [
        "create",
        name,
        "--image",
        "tiny",
        "--cpus",
        "1",
        "--memory",
        &memory,
        "--project",
        "alpha",
        "--host",
        "h1",
    ];
    let created = site.cli(&args);
    assert!(created.status.success(), "create {name}: {created:?}");
    let address = site.vmctl.network().port(name).expect("port").ip;
    let mut results = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let output = site.cli(&["start", name]);
        assert!(
            output.status.success(),
            "start {name} (run {run}): {output:?}"
        );
        let ready_s = ready_seconds(&String::from_utf8_lossy(&output.stdout));
        // The time a successful ping was sent (each waits up to 1 s for its answer).
        let answer_s = (0..120)
            .find_map(|_| {
                let sent = started.elapsed().as_secs_f64();
                ping(&probe, address).then_some(sent)
            })
            .unwrap_or_else(|| panic!("{name} did not answer within 2 minutes (run {run})"));
        sleep(Duration::from_secs(idle_s));
        let status = site.vmctl.status(name).expect("status");
        // The tiny guest ignores ACPI: off at once.
        site.vmctl.stop(name, Duration::ZERO).expect("stop");
        results.push(Run {
            ready_s,
            answer_s,
            rss_mib: status.rss_kib.unwrap_or(0) as f64 / 1024.0,
        });
    }
    site.vmctl.destroy(name).expect("destroy");
    print_table(&results, memory_mib, idle_s);
}

fn print_table(results: &[Run], memory_mib: u64, idle_s: u64) {
    println!(
        "vmctl: tiny TCG guest (1 vCPU, {memory_mib} MiB), {} runs: one VM, its first start \
         then restarts on the same host",
        results.len()
    );
    println!();
    println!(
        "| run | start -> ready marker (s) | start -> answers ping (s) | idle QEMU RSS after {idle_s} s (MiB) |"
    );
    println!("|---:|---:|---:|---:|");
    for (i, run) in results.iter().enumerate() {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} |",
            i + 1,
            run.ready_s,
            run.answer_s,
            run.rss_mib
        );
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "| median | {:.2} | {:.2} | {:.0} |",
        median(results.iter().map(|r| r.ready_s).collect()),
        median(results.iter().map(|r| r.answer_s).collect()),
        median(results.iter().map(|r| r.rss_mib).collect())
    );
}

/// The seconds in `started b1 on h1 in 5.3 s: ...`.
fn ready_seconds(line: &str) -> f64 {
    line.split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no time in `{line}`"))
}
