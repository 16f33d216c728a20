//! Address types: an IPv4 network in CIDR notation and an Ethernet MAC address.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network such as `10.10.0.0/24`; the address must be the network's first address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// The network `network/prefix_len`; `None` if host bits are set or the prefix exceeds 32.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let cidr = Self {
            network,
            prefix_len,
        };
        (prefix_len <= 32 && u32::from(network) & !cidr.mask() == 0).then_some(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// Whether an address may be given to a host: inside, and neither the network's own address
    /// nor its broadcast address.
    pub fn is_usable(&self, address: Ipv4Addr) -> bool {
        self.contains(address) && address != self.network && address != self.broadcast()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The usable addresses in ascending order.
    pub fn usable(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network).saturating_add(1);
        let last = u32::from(self.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an IPv4 network in CIDR notation such as 10.10.0.0/24 ({reason})")]
pub struct CidrError {
    text: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| CidrError {
            text: text.to_string(),
            reason,
        };
        let (address, prefix) = text.split_once('/').ok_or_else(|| error("no /prefix"))?;
        let address: Ipv4Addr = address.parse().map_err(|_| error("bad address"))?;
        let prefix_len: u8 = prefix.parse().map_err(|_| error("bad prefix length"))?;
        if prefix_len > 32 {
            return Err(error("prefix length above 32"));
        }
        Cidr::new(address, prefix_len).ok_or_else(|| error("host bits set"))
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a MAC string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address such as 02:6e:63:00:00:01")]
pub struct MacError(String);

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| MacError(text.to_string()))?;
            if part.len() != 2 {
                return Err(MacError(text.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacError(text.to_string()))?;
        }
        match parts.next() {
            Some(_) => Err(MacError(text.to_string())),
            None => Ok(Mac(bytes)),
        }
    }
}

impl TryFrom<String> for Mac {
    type Error = MacError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> Self {
        mac.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_bounds() {
        let cidr: Cidr = "10.10.0.0/24".parse().expect("valid");
        assert_eq!(cidr.broadcast(), Ipv4Addr::new(10, 10, 0, 255));
        assert!(cidr.is_usable(Ipv4Addr::new(10, 10, 0, 1)));
        assert!(!cidr.is_usable(Ipv4Addr::new(10, 10, 0, 0)));
        assert!(!cidr.is_usable(Ipv4Addr::new(10, 10, 0, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 10, 1, 1)));
        assert_eq!(cidr.usable().count(), 254);
        for bad in [
            "10.10.0.1/24",
            "10.10.0.0",
            "10.10.0.0/33",
            "ten/8",
            "10.10.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let wide: Cidr = "10.0.0.0/8".parse().expect("valid");
        assert!(wide.overlaps(&cidr) && cidr.overlaps(&wide));
        let other: Cidr = "10.10.1.0/24".parse().expect("valid");
        assert!(!other.overlaps(&cidr));
    }

    #[test]
    fn mac_round_trips() {
        let mac: Mac = "02:6e:63:00:0a:ff".parse().expect("valid");
        assert_eq!(mac.to_string(), "02:6e:63:00:0a:ff");
        for bad in [
            "02:6e:63:00:0a",
            "02:6e:63:00:0a:ff:00",
            "02-6e-63-00-0a-ff",
            "2:6e:63:0:a:f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
