//! OpenFlow rules as text for `ovs-ofctl`, each identified by a cookie derived from its text.
//!
//! netctl never parses flows back: a flow's cookie is a hash of the text netctl wrote, so the
//! set of cookies on a bridge says which of netctl's flows are there. A flow whose text
//! changes gets a new cookie, and the old one is deleted.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::net::Mac;

/// The high 16 bits of every netctl cookie ("nc"); on bridges netctl shares, flows with other
/// cookies belong to someone else.
pub const COOKIE_PREFIX: u64 = 0x6e63 << 48;
pub const COOKIE_PREFIX_MASK: u64 = 0xffff << 48;

/// The pipeline's tables.
pub const TABLE_CLASSIFY: u8 = 0;
pub const TABLE_ARP: u8 = 10;
pub const TABLE_FROM_LOCAL: u8 = 20;
pub const TABLE_FROM_TUNNEL: u8 = 30;
pub const TABLE_EXPOSE_IN: u8 = 40;
pub const TABLE_EXPOSE_OUT: u8 = 41;
pub const TABLES: [u8; 6] = [
    TABLE_CLASSIFY,
    TABLE_ARP,
    TABLE_FROM_LOCAL,
    TABLE_FROM_TUNNEL,
    TABLE_EXPOSE_IN,
    TABLE_EXPOSE_OUT,
];

/// The conntrack zone of exposures.
pub const EXPOSE_ZONE: u16 = 1;

/// A set of flows by cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSet {
    flows: BTreeMap<u64, String>,
}

impl FlowSet {
    /// Adds `table=T,priority=P,MATCHES actions=ACTIONS`; an identical flow is added once.
    pub fn add(&mut self, table: u8, priority: u16, matches: &str, actions: &str) {
        let separator = if matches.is_empty() { "" } else { "," };
        let body =
            format!("table={table},priority={priority}{separator}{matches} actions={actions}");
        self.flows.insert(cookie(&body), body);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.flows.contains_key(&cookie)
    }

    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.flows.keys().copied()
    }

    /// The `ovs-ofctl add-flows` line that adds the flow with this cookie.
    pub fn add_line(&self, cookie: u64) -> Option<String> {
        let body = self.flows.get(&cookie)?;
        Some(format!("add cookie={cookie:#018x},{body}"))
    }
}

/// The `ovs-ofctl add-flows` line that deletes every flow with this cookie.
pub fn delete_line(cookie: u64) -> String {
    format!("delete cookie={cookie:#x}/-1")
}

/// netctl's cookie for a flow text: the prefix and 48 bits of the text's FNV-1a hash.
pub fn cookie(text: &str) -> u64 {
    COOKIE_PREFIX | (fnv1a(text.as_bytes()) & !COOKIE_PREFIX_MASK)
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Actions that answer an ARP request for `ip` with `mac`, out of the port it came in on.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr) -> String {
    format!(
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{mac}->eth_src,\
         set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
         move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:{mac}->arp_sha,\
         set_field:{ip}->arp_spa,in_port"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_stable_and_prefixed() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let c = cookie("table=0,priority=0 actions=drop");
        assert_eq!(c & COOKIE_PREFIX_MASK, COOKIE_PREFIX);
        assert_ne!(c, cookie("table=0,priority=1 actions=drop"));
    }

    #[test]
    fn identical_flows_are_added_once() {
        let mut flows = FlowSet::default();
        flows.add(0, 0, "", "drop");
        flows.add(0, 0, "", "drop");
        flows.add(10, 0, "", "drop");
        assert_eq!(flows.len(), 2);
        let cookie = flows.cookies().next().expect("a flow");
        let line = flows.add_line(cookie).expect("line");
        assert!(line.starts_with("add cookie=0x6e63"), "{line}");
        assert_eq!(delete_line(1), "delete cookie=0x1/-1");
    }
}
