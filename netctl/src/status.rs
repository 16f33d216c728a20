//! `status`: per host, its bridges, tunnels and their state, ports, flow counts, exposures,
//! and its drift from the cluster file.

use std::fmt;

use crate::alloc;
use crate::apply;
use crate::controller::{Exposure, Netctl};
use crate::desired::PortRole;
use crate::error::Error;
use crate::ovs::Actual;
use crate::plan::HostPlan;

#[derive(Debug, Clone)]
pub struct Status {
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone)]
pub struct HostStatus {
    pub host: String,
    /// The host as read, or why it could not be read.
    pub view: Result<HostView, String>,
}

#[derive(Debug, Clone)]
pub struct HostView {
    /// The integration bridge and the external bridge, and whether each exists.
    pub bridges: Vec<(String, bool)>,
    pub tunnels: Vec<PortStatus>,
    pub ports: Vec<PortStatus>,
    /// Per bridge: netctl flows present and wanted.
    pub flows: Vec<(String, usize, usize)>,
    pub exposures: Vec<Exposure>,
    /// What `apply` would change here; empty when the host matches the file.
    pub drift: HostPlan,
    /// Why the host would fail a read-back check, if it would.
    pub problem: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PortStatus {
    pub name: String,
    pub role: String,
    /// `up`, `down`, `waiting for device`, `missing`, or the interface's error.
    pub state: String,
}

impl Netctl {
    /// Reads every host; an unreachable host is reported in its entry, not as an error.
    pub fn status(&self) -> Result<Status, Error> {
        let mut state = self.store().read()?;
        alloc::reconcile(self.cluster(), &mut state)?;
        let exposures = self.exposures()?;
        let hosts = self
            .survey_hosts(&state)
            .into_iter()
            .map(|(ovs, desired, planned)| {
                let view = planned.map_err(|e| e.to_string()).map(|(actual, drift)| {
                    let problem = apply::check_ports(&desired, &actual)
                        .err()
                        .map(|e| e.to_string());
                    let bridges: Vec<String> =
                        desired.bridges().into_iter().map(str::to_string).collect();
                    let mut flows = vec![(
                        desired.bridge.clone(),
                        present(&actual, &desired.bridge, true),
                        desired.flows.len(),
                    )];
                    if let Some((bridge, _)) = &desired.external {
                        let count = present(&actual, bridge, false);
                        flows.push((bridge.clone(), count, desired.external_flows.len()));
                    }
                    let mut specs: Vec<_> = desired.ports.iter().collect();
                    specs.extend(desired.external.as_ref().map(|(_, p)| p));
                    let (tunnels, ports) = specs
                        .into_iter()
                        .map(|spec| {
                            let status = PortStatus {
                                name: spec.name.clone(),
                                role: spec.role.to_string(),
                                state: port_state(&actual, &spec.name),
                            };
                            (matches!(spec.role, PortRole::Tunnel { .. }), status)
                        })
                        .partition::<Vec<_>, _>(|(tunnel, _)| *tunnel);
                    HostView {
                        bridges: bridges
                            .into_iter()
                            .map(|b| {
                                let exists = actual.bridges.contains_key(&b);
                                (b, exists)
                            })
                            .collect(),
                        tunnels: tunnels.into_iter().map(|(_, s)| s).collect(),
                        ports: ports.into_iter().map(|(_, s)| s).collect(),
                        flows,
                        exposures: exposures
                            .iter()
                            .filter(|e| e.host == ovs.host)
                            .cloned()
                            .collect(),
                        drift,
                        problem,
                    }
                });
                HostStatus {
                    host: ovs.host.clone(),
                    view,
                }
            })
            .collect();
        Ok(Status { hosts })
    }
}

/// netctl's flows on a bridge (all flows on the integration bridge).
fn present(actual: &Actual, bridge: &str, owned: bool) -> usize {
    let prefix =
        |c: &&u64| owned || **c & crate::flows::COOKIE_PREFIX_MASK == crate::flows::COOKIE_PREFIX;
    actual
        .flows
        .get(bridge)
        .map_or(0, |cookies| cookies.iter().filter(prefix).count())
}

fn port_state(actual: &Actual, name: &str) -> String {
    let Some(port) = actual.ports.get(name) else {
        return "missing".to_string();
    };
    match (&port.error, &port.bfd_state, &port.link_state) {
        (Some(error), _, _) if error.contains("No such device") => "waiting for device".to_string(),
        (Some(error), _, _) => format!("error: {error}"),
        (None, Some(bfd), _) => format!("bfd {bfd}"),
        (None, None, Some(link)) => link.clone(),
        (None, None, None) => "unknown".to_string(),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for host in &self.hosts {
            let view = match &host.view {
                Ok(view) => view,
                Err(error) => {
                    writeln!(f, "host {}: UNREACHABLE: {error}", host.host)?;
                    continue;
                }
            };
            writeln!(f, "host {}:", host.host)?;
            for (bridge, exists) in &view.bridges {
                let state = if *exists { "present" } else { "MISSING" };
                writeln!(f, "  bridge {bridge}: {state}")?;
            }
            for port in view.tunnels.iter().chain(&view.ports) {
                writeln!(f, "  port {} ({}): {}", port.name, port.role, port.state)?;
            }
            for (bridge, present, wanted) in &view.flows {
                writeln!(f, "  flows on {bridge}: {present} (file wants {wanted})")?;
            }
            for exposure in &view.exposures {
                writeln!(f, "  exposure {exposure}")?;
            }
            if let Some(problem) = &view.problem {
                writeln!(f, "  problem: {problem}")?;
            }
            if view.drift.is_empty() {
                writeln!(f, "  drift: none")?;
            } else {
                writeln!(
                    f,
                    "  drift: {} changes pending (see plan)",
                    view.drift.change_count()
                )?;
            }
        }
        Ok(())
    }
}
