//! The vault VM benchmark (run by `benches/vmctl.sh`, as root): on vmctl's two-host lab with
//! storaged as the VM network's TLS service on h2, the vault guest on h1 started with alice's
//! key. Per start: the time from `vmctl start` to the vault mounted in the guest (what `start`
//! waits for), split by the guest's own clock into the time before it started (QEMU, firmware,
//! loading kernel and initramfs), boot to network up, and network up to mounted (taking the
//! key, logging in over TLS, mounting), and the QEMU resident set with the vault mounted. One VM: its first start, then restarts on the same host. Prints a table.
//!
//!   usage: vault_bench [--runs N]

mod support;
mod vault_site;

use std::time::Duration;

use support::argument;
use vault_site::VaultSite;

struct Run {
    mounted_s: f64,
    network_uptime_s: f64,
    mounted_uptime_s: f64,
    rss_mib: f64,
}

fn main() {
    let runs = argument("--runs", 3);
    let vault = VaultSite::new("vb");
    let name = "b1";
    vault.create_vm(name);
    let owner = vault.owner_key();
    let vmctl = &vault.site.vmctl;
    let mut results = Vec::new();
    for run in 1..=runs {
        let started = vmctl
            .start(name, Some(&owner), Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("start {name} (run {run}): {e}"));
        let console = vmctl.console(name).expect("console");
        let status = vmctl.status(name).expect("status");
        // The guest ignores ACPI: off at once.
        vmctl.stop(name, Duration::ZERO).expect("stop");
        results.push(Run {
            mounted_s: started.elapsed.as_secs_f64(),
            network_uptime_s: uptime_at(&console, "vault-guest: ready"),
            mounted_uptime_s: uptime_at(&console, "vault-guest: vault mounted"),
            rss_mib: status.rss_kib.unwrap_or(0) as f64 / 1024.0,
        });
    }
    vmctl.destroy(name).expect("destroy");
    print_table(&results);
}

/// The guest's uptime the console line holding `marker` gives (`... uptime=12.34s`).
fn uptime_at(console: &str, marker: &str) -> f64 {
    console
        .lines()
        .find(|line| line.contains(marker))
        .and_then(|line| line.split("uptime=").nth(1))
        .and_then(|rest| rest.trim().trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no `{marker} ... uptime=` line in the console:\n{console}"))
}

fn print_table(results: &[Run]) {
    println!(
        "vmctl: vault guest (1 vCPU, 512 MiB, TCG) mounting the vault over TLS from the other \
         host, {} runs: one VM, its first start then restarts on the same host",
        results.len()
    );
    println!();
    println!(
        "| run | vmctl start -> vault mounted (s) | before the guest's clock (s) | guest boot -> network up (s) | network up -> vault mounted (s) | QEMU RSS mounted (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let row = |label: &str, r: &Run| {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.mounted_s,
            r.mounted_s - r.mounted_uptime_s,
            r.network_uptime_s,
            r.mounted_uptime_s - r.network_uptime_s,
            r.rss_mib
        );
    };
    for (i, run) in results.iter().enumerate() {
        row(&(i + 1).to_string(), run);
    }
    let median = |value: fn(&Run) -> f64| {
        let mut values: Vec<f64> = results.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let network = median(|r| r.network_uptime_s);
    let median_run = Run {
        mounted_s: median(|r| r.mounted_s),
        network_uptime_s: network,
        mounted_uptime_s: network + median(|r| r.mounted_uptime_s - r.network_uptime_s),
        rss_mib: median(|r| r.rss_mib),
    };
    row("median", &median_run);
}
