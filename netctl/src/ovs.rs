//! Open vSwitch through its command line tools: `ovs-vsctl` for the database and
//! `ovs-ofctl` for flows, one host at a time. Every command is bounded by a timeout.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::Host;
use crate::error::OvsError;

const SIGALRM: i32 = 14;

/// One host's Open vSwitch.
#[derive(Debug, Clone)]
pub struct HostOvs {
    pub host: String,
    db: String,
    openflow_dir: PathBuf,
    timeout_s: u32,
}

/// What a host's database and bridges hold, as far as netctl cares.
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub bridges: BTreeMap<String, ActualBridge>,
    /// Ports by name (names are unique within one Open vSwitch).
    pub ports: BTreeMap<String, ActualPort>,
    /// Cookies of the flows on each bridge that was read.
    pub flows: BTreeMap<String, Vec<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualBridge {
    pub datapath_type: String,
    pub fail_mode: String,
    pub protocols: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualPort {
    pub bridge: Option<String>,
    /// netctl's spec hash, if netctl made the port.
    pub spec: Option<String>,
    pub iface_type: String,
    /// -1 when the interface could not be opened.
    pub ofport: i64,
    pub error: Option<String>,
    pub bfd_state: Option<String>,
    pub link_state: Option<String>,
}

impl HostOvs {
    pub fn new(host: &Host, timeout_s: u32) -> Self {
        HostOvs {
            host: host.name.clone(),
            db: host.ovsdb.clone(),
            openflow_dir: host
                .openflow_dir()
                .unwrap_or_else(|| panic!("validated host `{}` has no openflow_dir", host.name)),
            timeout_s,
        }
    }

    /// The OpenFlow management socket of a bridge.
    pub fn openflow_target(&self, bridge: &str) -> String {
        format!(
            "unix:{}",
            self.openflow_dir.join(format!("{bridge}.mgmt")).display()
        )
    }

    /// Runs one `ovs-vsctl` invocation (one database transaction), waiting at most the
    /// timeout for ovs-vswitchd to apply it.
    pub fn vsctl(&self, args: &[String]) -> Result<String, OvsError> {
        let mut all = vec![
            format!("--db={}", self.db),
            format!("--timeout={}", self.timeout_s),
        ];
        all.extend(args.iter().cloned());
        self.run("ovs-vsctl", &all, None)
    }

    /// Runs `ovs-ofctl` against a bridge's management socket.
    pub fn ofctl(
        &self,
        command: &str,
        bridge: &str,
        extra: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, OvsError> {
        let mut all = vec![
            "-O".to_string(),
            "OpenFlow13".to_string(),
            format!("--timeout={}", self.timeout_s),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        all.push(command.to_string());
        all.push(self.openflow_target(bridge));
        if stdin.is_some() {
            all.push("-".to_string());
        }
        self.run("ovs-ofctl", &all, stdin)
    }

    fn run(
        &self,
        program: &'static str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, OvsError> {
        let shown = format!("{program} {}", shorten(&args.join(" ")));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| OvsError::Spawn { program, source })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means the program exited early; its status tells why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| OvsError::Spawn { program, source })?;
        if output.status.signal() == Some(SIGALRM) {
            return Err(OvsError::Timeout {
                command: shown,
                seconds: self.timeout_s,
            });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(OvsError::Failed {
                command: shown,
                status: output.status.to_string(),
                stderr: one_line(&stderr),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| OvsError::Output {
            command: shown,
            reason: "not UTF-8".to_string(),
        })
    }

    /// Reads bridges, ports and interfaces, and the flow cookies of each named bridge that
    /// exists. This is also the reachability check: it fails when the database or the
    /// ovs-vswitchd of an existing bridge does not answer.
    pub fn read(&self, bridges: &[&str]) -> Result<Actual, OvsError> {
        let args: Vec<String> = [
            "--format=json",
            "--",
            "--columns=name,datapath_type,fail_mode,protocols,ports",
            "list",
            "Bridge",
            "--",
            "--columns=_uuid,name,interfaces,external_ids",
            "list",
            "Port",
            "--",
            "--columns=_uuid,name,type,ofport,error,bfd_status,link_state",
            "list",
            "Interface",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let text = self.vsctl(&args)?;
        let mut actual = parse_tables(&text).map_err(|reason| OvsError::Output {
            command: "ovs-vsctl list".to_string(),
            reason,
        })?;
        for bridge in bridges {
            if actual.bridges.contains_key(*bridge) {
                let cookies = self.flow_cookies(bridge)?;
                actual.flows.insert(bridge.to_string(), cookies);
            }
        }
        Ok(actual)
    }

    /// The cookies of every flow on a bridge (one entry per flow).
    pub fn flow_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError> {
        let text = self.ofctl("dump-flows", bridge, &["--no-stats"], None)?;
        text.lines()
            .filter(|line| {
                !line.trim().is_empty() && !line.contains("_REPLY") && !line.contains(" reply ")
            })
            .map(|line| {
                parse_cookie(line).map_err(|reason| OvsError::Output {
                    command: format!("ovs-ofctl dump-flows {bridge}"),
                    reason,
                })
            })
            .collect()
    }
}

/// The cookie of a `dump-flows` line; a flow printed without one has cookie 0.
fn parse_cookie(line: &str) -> Result<u64, String> {
    let Some(rest) = line.trim_start().strip_prefix("cookie=0x") else {
        return Ok(0);
    };
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).map_err(|_| format!("bad cookie in `{line}`"))
}

fn parse_tables(text: &str) -> Result<Actual, String> {
    let mut lines = text.lines();
    let mut table = |name: &str| -> Result<Vec<BTreeMap<String, Value>>, String> {
        let line = lines.next().ok_or_else(|| format!("no {name} table"))?;
        let value: Value = serde_json::from_str(line).map_err(|e| format!("{name}: {e}"))?;
        rows(&value).ok_or_else(|| format!("{name}: not an ovs-vsctl JSON table"))
    };
    let bridges = table("Bridge")?;
    let ports = table("Port")?;
    let interfaces = table("Interface")?;
    let interfaces: BTreeMap<String, &BTreeMap<String, Value>> = interfaces
        .iter()
        .filter_map(|row| Some((uuid(row.get("_uuid")?)?.to_string(), row)))
        .collect();
    let mut port_bridge = BTreeMap::new();
    let mut actual = Actual::default();
    for row in &bridges {
        let name = string(row.get("name")).to_string();
        for port in items(row.get("ports")).filter_map(uuid) {
            port_bridge.insert(port.to_string(), name.clone());
        }
        let bridge = ActualBridge {
            datapath_type: string(row.get("datapath_type")).to_string(),
            fail_mode: items(row.get("fail_mode"))
                .filter_map(Value::as_str)
                .collect(),
            protocols: items(row.get("protocols"))
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        };
        actual.bridges.insert(name, bridge);
    }
    for row in &ports {
        let name = string(row.get("name")).to_string();
        let port_uuid = row.get("_uuid").and_then(uuid).unwrap_or_default();
        let external_ids = map(row.get("external_ids"));
        let mut port = ActualPort {
            bridge: port_bridge.get(port_uuid).cloned(),
            spec: external_ids.get("netctl-spec").cloned(),
            ofport: -1,
            ..ActualPort::default()
        };
        let interface = items(row.get("interfaces"))
            .filter_map(uuid)
            .find_map(|u| interfaces.get(u));
        if let Some(interface) = interface {
            port.iface_type = string(interface.get("type")).to_string();
            port.ofport = items(interface.get("ofport"))
                .find_map(Value::as_i64)
                .unwrap_or(-1);
            port.error = items(interface.get("error"))
                .find_map(Value::as_str)
                .map(str::to_string);
            port.bfd_state = map(interface.get("bfd_status")).get("state").cloned();
            port.link_state = items(interface.get("link_state"))
                .find_map(Value::as_str)
                .map(str::to_string);
        }
        actual.ports.insert(name, port);
    }
    Ok(actual)
}

/// The rows of an `ovs-vsctl --format=json` table as column -> value maps.
fn rows(value: &Value) -> Option<Vec<BTreeMap<String, Value>>> {
    let headings: Vec<&str> = value
        .get("headings")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    value
        .get("data")?
        .as_array()?
        .iter()
        .map(|row| {
            let cells = row.as_array()?;
            Some(
                headings
                    .iter()
                    .map(|h| h.to_string())
                    .zip(cells.iter().cloned())
                    .collect(),
            )
        })
        .collect()
}

/// The members of an OVSDB set (`["set", [...]]`), or the value itself for a one-element set.
fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    let members: Vec<&Value> = match value {
        None => Vec::new(),
        Some(Value::Array(pair)) if pair.first().and_then(Value::as_str) == Some("set") => pair
            .get(1)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(other) => vec![other],
    };
    members.into_iter()
}

fn uuid(value: &Value) -> Option<&str> {
    let pair = value.as_array()?;
    (pair.first()?.as_str()? == "uuid").then(|| pair.get(1)?.as_str())?
}

fn string(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or_default()
}

fn map(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Array(pair)) = value else {
        return BTreeMap::new();
    };
    let entries = pair.get(1).and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let kv = entry.as_array()?;
            Some((
                kv.first()?.as_str()?.to_string(),
                kv.get(1)?.as_str()?.to_string(),
            ))
        })
        .collect()
}

fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    shorten(&joined.join(" / "))
}

fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ovs_vsctl_json_tables() {
        let text = r#"{"data":[["br-int","netdev","secure",["set",["OpenFlow10","OpenFlow13"]],["set",[["uuid","p1"],["uuid","p2"]]]]],"headings":["name","datapath_type","fail_mode","protocols","ports"]}
{"data":[[["uuid","p1"],"br-int",["uuid","i1"],["map",[]]],[["uuid","p2"],"nt-h2",["uuid","i2"],["map",[["netctl-spec","abc"]]]]],"headings":["_uuid","name","interfaces","external_ids"]}
{"data":[[["uuid","i1"],"br-int","internal",65534,["set",[]],["map",[]],"down"],[["uuid","i2"],"nt-h2","geneve",12,"some error",["map",[["state","up"]]],"up"]],"headings":["_uuid","name","type","ofport","error","bfd_status","link_state"]}
"#;
        let actual = parse_tables(text).expect("parses");
        let bridge = &actual.bridges["br-int"];
        assert_eq!(bridge.fail_mode, "secure");
        assert_eq!(bridge.protocols, ["OpenFlow10", "OpenFlow13"]);
        let tunnel = &actual.ports["nt-h2"];
        assert_eq!(tunnel.bridge.as_deref(), Some("br-int"));
        assert_eq!(tunnel.spec.as_deref(), Some("abc"));
        assert_eq!(tunnel.ofport, 12);
        assert_eq!(tunnel.error.as_deref(), Some("some error"));
        assert_eq!(tunnel.bfd_state.as_deref(), Some("up"));
        assert_eq!(actual.ports["br-int"].error, None);
    }

    #[test]
    fn parses_cookies() {
        assert_eq!(
            parse_cookie(" cookie=0x6e63000000000001, priority=1 actions=drop"),
            Ok(0x6e63000000000001)
        );
        assert_eq!(parse_cookie(" priority=0 actions=NORMAL"), Ok(0));
    }
}
