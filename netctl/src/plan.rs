//! The difference between what a host should have and what it has, as OVS commands.

use std::collections::BTreeMap;
use std::fmt;

use crate::desired::{HostDesired, PortSpec};
use crate::error::OvsError;
use crate::flows::{self, COOKIE_PREFIX, COOKIE_PREFIX_MASK, FlowSet};
use crate::ovs::{Actual, ActualBridge};

/// The integration bridge's settings.
pub const DATAPATH_TYPE: &str = "netdev";
pub const FAIL_MODE: &str = "secure";
pub const PROTOCOLS: [&str; 4] = ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"];

/// What one host needs to match its desired configuration.
#[derive(Debug, Clone, Default)]
pub struct HostPlan {
    pub host: String,
    pub bridge: Option<BridgeChange>,
    pub ports: Vec<PortChange>,
    pub flows: Vec<FlowChanges>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeChange {
    Create(String),
    Reconfigure(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChange {
    Add(PortSpec),
    Replace(PortSpec),
    Remove { bridge: String, name: String },
}

/// Flow additions and deletions on one bridge, as `ovs-ofctl add-flows` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowChanges {
    pub bridge: String,
    /// Whether netctl owns every flow on the bridge (the integration bridge) and may apply
    /// the changes as one atomic OpenFlow bundle.
    pub owned: bool,
    pub deletes: Vec<u64>,
    pub adds: Vec<String>,
}

impl HostPlan {
    pub fn is_empty(&self) -> bool {
        self.bridge.is_none() && self.ports.is_empty() && self.flows.is_empty()
    }

    /// How many changes: one per bridge or port change, one per flow added or deleted.
    pub fn change_count(&self) -> usize {
        let flows: usize = self
            .flows
            .iter()
            .map(|f| f.adds.len() + f.deletes.len())
            .sum();
        usize::from(self.bridge.is_some()) + self.ports.len() + flows
    }

    /// The `ovs-vsctl` arguments of the database changes, for one transaction.
    pub fn vsctl_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let push = |args: &mut Vec<String>, items: &[&str]| {
            args.extend(items.iter().map(|s| s.to_string()));
        };
        match &self.bridge {
            Some(BridgeChange::Create(bridge)) => push(&mut args, &["--", "add-br", bridge]),
            Some(BridgeChange::Reconfigure(_)) | None => {}
        }
        if let Some(BridgeChange::Create(bridge) | BridgeChange::Reconfigure(bridge)) = &self.bridge
        {
            let protocols = format!("protocols={}", PROTOCOLS.join(","));
            let datapath = format!("datapath_type={DATAPATH_TYPE}");
            let fail_mode = format!("fail_mode={FAIL_MODE}");
            push(
                &mut args,
                &[
                    "--", "set", "Bridge", bridge, &datapath, &fail_mode, &protocols,
                ],
            );
        }
        for change in &self.ports {
            match change {
                PortChange::Remove { bridge, name } => {
                    push(&mut args, &["--", "--if-exists", "del-port", bridge, name]);
                }
                PortChange::Add(spec) | PortChange::Replace(spec) => {
                    if matches!(change, PortChange::Replace(_)) {
                        push(&mut args, &["--", "--if-exists", "del-port", &spec.name]);
                    }
                    push(&mut args, &["--", "add-port", &spec.bridge, &spec.name]);
                    push(&mut args, &["--", "set", "Interface", &spec.name]);
                    args.extend(spec.interface_settings());
                    let spec_id = format!("external_ids:netctl-spec={}", spec.spec_hash());
                    push(&mut args, &["--", "set", "Port", &spec.name, &spec_id]);
                }
            }
        }
        args
    }
}

/// Compares a host's desired configuration with what it has.
pub fn plan_host(desired: &HostDesired, actual: &Actual) -> Result<HostPlan, OvsError> {
    let mut plan = HostPlan {
        host: desired.host.clone(),
        ..HostPlan::default()
    };
    let wanted = ActualBridge {
        datapath_type: DATAPATH_TYPE.to_string(),
        fail_mode: FAIL_MODE.to_string(),
        protocols: PROTOCOLS.iter().map(|p| p.to_string()).collect(),
    };
    plan.bridge = match actual.bridges.get(&desired.bridge) {
        None => Some(BridgeChange::Create(desired.bridge.clone())),
        Some(bridge) if !same_bridge(bridge, &wanted) => {
            Some(BridgeChange::Reconfigure(desired.bridge.clone()))
        }
        Some(_) => None,
    };
    let mut specs: Vec<&PortSpec> = desired.ports.iter().collect();
    if let Some((bridge, patch)) = &desired.external {
        if !actual.bridges.contains_key(bridge) {
            return Err(OvsError::MissingBridge {
                bridge: bridge.clone(),
            });
        }
        specs.push(patch);
    }
    for spec in &specs {
        match actual.ports.get(&spec.name) {
            None => plan.ports.push(PortChange::Add((*spec).clone())),
            Some(port)
                if port.bridge.as_deref() != Some(&spec.bridge)
                    || port.spec.as_deref() != Some(&spec.spec_hash())
                    || (port.error.is_none() && port.ofport != i64::from(spec.ofport)) =>
            {
                plan.ports.push(PortChange::Replace((*spec).clone()));
            }
            Some(_) => {}
        }
    }
    for (name, port) in &actual.ports {
        let Some(bridge) = &port.bridge else { continue };
        let on_integration = *bridge == desired.bridge && *name != desired.bridge;
        let ours = port.spec.is_some();
        let wanted = specs.iter().any(|s| s.name == *name);
        if (on_integration || ours) && !wanted {
            plan.ports.push(PortChange::Remove {
                bridge: bridge.clone(),
                name: name.clone(),
            });
        }
    }
    let integration = actual
        .flows
        .get(&desired.bridge)
        .map(Vec::as_slice)
        .unwrap_or_default();
    push_flows(
        &mut plan,
        &desired.bridge,
        true,
        &desired.flows,
        integration,
    );
    if let Some((bridge, _)) = &desired.external {
        let present = actual
            .flows
            .get(bridge)
            .map(Vec::as_slice)
            .unwrap_or_default();
        push_flows(&mut plan, bridge, false, &desired.external_flows, present);
    }
    Ok(plan)
}

fn same_bridge(actual: &ActualBridge, wanted: &ActualBridge) -> bool {
    let mut protocols = actual.protocols.clone();
    protocols.sort();
    let mut expected = wanted.protocols.clone();
    expected.sort();
    actual.datapath_type == wanted.datapath_type
        && actual.fail_mode == wanted.fail_mode
        && protocols == expected
}

/// Deletes every cookie that is not wanted or appears more than once (someone else's flow
/// with netctl's cookie), and adds every wanted flow that is not there exactly once. On a
/// bridge netctl does not own, flows without netctl's cookie prefix are left alone.
fn push_flows(plan: &mut HostPlan, bridge: &str, owned: bool, wanted: &FlowSet, present: &[u64]) {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for cookie in present {
        if owned || cookie & COOKIE_PREFIX_MASK == COOKIE_PREFIX {
            *counts.entry(*cookie).or_default() += 1;
        }
    }
    let deletes: Vec<u64> = counts
        .iter()
        .filter(|(cookie, count)| !wanted.contains(**cookie) || **count > 1)
        .map(|(cookie, _)| *cookie)
        .collect();
    let adds: Vec<String> = wanted
        .cookies()
        .filter(|cookie| counts.get(cookie) != Some(&1))
        .filter_map(|cookie| wanted.add_line(cookie))
        .collect();
    if !deletes.is_empty() || !adds.is_empty() {
        plan.flows.push(FlowChanges {
            bridge: bridge.to_string(),
            owned,
            deletes,
            adds,
        });
    }
}

impl FlowChanges {
    /// The `ovs-ofctl add-flows` input: deletions first, then additions.
    pub fn lines(&self) -> String {
        let mut text = String::new();
        for cookie in &self.deletes {
            text.push_str(&flows::delete_line(*cookie));
            text.push('\n');
        }
        for line in &self.adds {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

impl fmt::Display for HostPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "host {}: no changes", self.host);
        }
        writeln!(f, "host {}:", self.host)?;
        match &self.bridge {
            Some(BridgeChange::Create(bridge)) => writeln!(
                f,
                "  + bridge {bridge} (datapath {DATAPATH_TYPE}, fail_mode {FAIL_MODE})"
            )?,
            Some(BridgeChange::Reconfigure(bridge)) => writeln!(
                f,
                "  ~ bridge {bridge}: set datapath {DATAPATH_TYPE}, fail_mode {FAIL_MODE}, OpenFlow versions"
            )?,
            None => {}
        }
        for change in &self.ports {
            match change {
                PortChange::Add(spec) => writeln!(f, "  + port {}: {}", spec.name, spec.role)?,
                PortChange::Replace(spec) => writeln!(
                    f,
                    "  ~ port {}: {} (differs, recreate)",
                    spec.name, spec.role
                )?,
                PortChange::Remove { bridge, name } => {
                    writeln!(f, "  - port {name} (on {bridge})")?
                }
            }
        }
        for flows in &self.flows {
            writeln!(
                f,
                "  flows on {}: +{} -{}",
                flows.bridge,
                flows.adds.len(),
                flows.deletes.len()
            )?;
        }
        Ok(())
    }
}
