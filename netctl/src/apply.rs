//! Applying one host's plan, then reading back what OVS did: an `ovs-vsctl` error can exit 0,
//! so only the read-back state counts.

use crate::desired::{HostDesired, PortSpec};
use crate::error::OvsError;
use crate::flows::{COOKIE_PREFIX, COOKIE_PREFIX_MASK, FlowSet};
use crate::ovs::{Actual, HostOvs};
use crate::plan::{DATAPATH_TYPE, FAIL_MODE, HostPlan, plan_host};

/// What applying did on one host.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub plan: HostPlan,
    /// VM and service ports whose device does not exist yet (the VM is not running there);
    /// OVS attaches the device when it appears.
    pub waiting: Vec<String>,
}

/// Applies `plan` on a host: one database transaction for the bridge and ports, then one
/// flow change per bridge (an atomic bundle on the integration bridge), each read back.
pub fn apply_host(
    ovs: &HostOvs,
    desired: &HostDesired,
    plan: HostPlan,
    actual: &Actual,
) -> Result<HostReport, OvsError> {
    let args = plan.vsctl_args();
    let waiting = if args.is_empty() {
        check_ports(desired, actual)?
    } else {
        ovs.vsctl(&args)?;
        check_ports(desired, &ovs.read(&[])?)?
    };
    for changes in &plan.flows {
        let bundle: &[&str] = if changes.owned { &["--bundle"] } else { &[] };
        ovs.ofctl("add-flows", &changes.bridge, bundle, Some(&changes.lines()))?;
        let wanted = if changes.bridge == desired.bridge {
            &desired.flows
        } else {
            &desired.external_flows
        };
        check_flows(
            &changes.bridge,
            changes.owned,
            wanted,
            &ovs.flow_cookies(&changes.bridge)?,
        )?;
    }
    Ok(HostReport { plan, waiting })
}

/// Deletes port `name` and adds it again, then applies the rest of the host's plan, each
/// read back. For a device deleted and created again under the same name: OVS's userspace
/// datapath keeps receiving from the deleted device (its packet socket stays bound to the old
/// interface index) while the database shows no error. The deletion is its own transaction:
/// in one with the addition, ovs-vswitchd sees an unchanged port and keeps the old socket.
pub fn reattach_port(
    ovs: &HostOvs,
    desired: &HostDesired,
    name: &str,
) -> Result<HostReport, OvsError> {
    let bridges = desired.bridges();
    let delete = ["--", "--if-exists", "del-port", name].map(str::to_string);
    ovs.vsctl(&delete)?;
    let actual = ovs.read(&bridges)?;
    let plan = plan_host(desired, &actual)?;
    apply_host(ovs, desired, plan, &actual)
}

/// Checks the bridge and every desired port; returns the ports waiting for their device.
pub fn check_ports(desired: &HostDesired, actual: &Actual) -> Result<Vec<String>, OvsError> {
    let verify = |what: String| Err(OvsError::Verify(what));
    let Some(bridge) = actual.bridges.get(&desired.bridge) else {
        return verify(format!("bridge {} does not exist", desired.bridge));
    };
    if bridge.datapath_type != DATAPATH_TYPE || bridge.fail_mode != FAIL_MODE {
        return verify(format!(
            "bridge {} has datapath `{}` and fail_mode `{}`",
            desired.bridge, bridge.datapath_type, bridge.fail_mode
        ));
    }
    if let Some(error) = actual
        .ports
        .get(&desired.bridge)
        .and_then(|p| p.error.as_ref())
    {
        return verify(format!("bridge {}: {error}", desired.bridge));
    }
    let mut specs: Vec<&PortSpec> = desired.ports.iter().collect();
    specs.extend(desired.external.as_ref().map(|(_, patch)| patch));
    let mut waiting = Vec::new();
    for spec in specs {
        let Some(port) = actual.ports.get(&spec.name) else {
            return verify(format!("port {} is missing", spec.name));
        };
        if port.bridge.as_deref() != Some(&spec.bridge)
            || port.spec.as_deref() != Some(&spec.spec_hash())
        {
            return verify(format!("port {} is not as netctl set it", spec.name));
        }
        match &port.error {
            Some(error) if spec.is_endpoint() && error.contains("No such device") => {
                waiting.push(spec.name.clone());
                continue;
            }
            Some(error) => return verify(format!("port {}: {error}", spec.name)),
            None => {}
        }
        if port.ofport != i64::from(spec.ofport) {
            return verify(format!(
                "port {} has OpenFlow port {} instead of {} (taken by another port?)",
                spec.name, port.ofport, spec.ofport
            ));
        }
    }
    Ok(waiting)
}

/// Checks that a bridge holds exactly the wanted netctl flows (on a bridge netctl owns, and
/// nothing else either).
pub fn check_flows(
    bridge: &str,
    owned: bool,
    wanted: &FlowSet,
    present: &[u64],
) -> Result<(), OvsError> {
    let mut present: Vec<u64> = present
        .iter()
        .copied()
        .filter(|c| owned || c & COOKIE_PREFIX_MASK == COOKIE_PREFIX)
        .collect();
    present.sort_unstable();
    let expected: Vec<u64> = wanted.cookies().collect();
    if present == expected {
        return Ok(());
    }
    let missing = expected.iter().filter(|c| !present.contains(c)).count();
    let extra = present.len() + missing - expected.len();
    Err(OvsError::Verify(format!(
        "bridge {bridge} has {} netctl flows instead of {} ({missing} missing, {extra} unexpected)",
        present.len(),
        expected.len()
    )))
}
