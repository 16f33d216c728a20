//! Where a new VM goes: the host with the most free capacity that fits it. Pure.

use crate::error::{Error, Result};

/// A host's size and what its VMs take (vmctl reserves what each VM is defined with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub host: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub used_cpus: u32,
    pub used_memory_mib: u64,
}

impl Capacity {
    pub fn free_cpus(&self) -> u32 {
        self.cpus.saturating_sub(self.used_cpus)
    }

    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }

    pub fn fits(&self, cpus: u32, memory_mib: u64) -> bool {
        self.free_cpus() >= cpus && self.free_memory_mib() >= memory_mib
    }
}

/// The host for a VM of `cpus` and `memory_mib`: the one with the most free memory, then the
/// most free CPUs, then the first in the cluster file. With `wanted`, that host if it fits.
pub fn choose(
    hosts: &[Capacity],
    wanted: Option<&str>,
    cpus: u32,
    memory_mib: u64,
) -> Result<String> {
    let candidates: Vec<&Capacity> = hosts
        .iter()
        .filter(|h| wanted.is_none_or(|w| h.host == w))
        .collect();
    let best = candidates
        .iter()
        .filter(|h| h.fits(cpus, memory_mib))
        .rev()
        .max_by_key(|h| (h.free_memory_mib(), h.free_cpus()));
    match best {
        Some(host) => Ok(host.host.clone()),
        None => Err(Error::NoCapacity {
            cpus,
            memory_mib,
            free: candidates
                .iter()
                .map(|h| {
                    format!(
                        "{}: {} CPUs, {} MiB free",
                        h.host,
                        h.free_cpus(),
                        h.free_memory_mib()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, used_cpus: u32, used_memory_mib: u64) -> Capacity {
        Capacity {
            host: name.into(),
            cpus: 4,
            memory_mib: 4096,
            used_cpus,
            used_memory_mib,
        }
    }

    #[test]
    fn the_host_with_most_room_wins() {
        let hosts = [
            host("h1", 1, 2048),
            host("h2", 1, 1024),
            host("h3", 0, 1024),
        ];
        assert_eq!(choose(&hosts, None, 1, 512).expect("room"), "h3");
        assert_eq!(choose(&hosts, Some("h1"), 1, 512).expect("room"), "h1");
        let equal = [host("h1", 0, 0), host("h2", 0, 0)];
        assert_eq!(choose(&equal, None, 1, 512).expect("room"), "h1");
    }

    #[test]
    fn no_room_is_an_error_naming_what_is_free() {
        let hosts = [host("h1", 4, 0), host("h2", 0, 4000)];
        let error = choose(&hosts, None, 1, 512).expect_err("full");
        let message = error.to_string();
        assert!(message.contains("h1: 0 CPUs, 4096 MiB free"), "{message}");
        assert!(message.contains("h2: 4 CPUs, 96 MiB free"), "{message}");
        assert!(choose(&hosts, Some("h2"), 1, 512).is_err());
    }
}
