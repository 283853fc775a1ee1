//! IPv4 subnets and the deterministic address and MAC assignment.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::units::Invalid;

/// Addresses below this offset in every subnet are kept for testbed itself
/// (`.1` is the host side of container networks and a future gateway); nodes
/// get addresses from `network + FIRST_HOST_OFFSET` on.
pub const FIRST_HOST_OFFSET: u32 = 11;

/// An IPv4 network in CIDR form, with host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Builds a subnet; `network` must have its host bits zero.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Option<Subnet> {
        if prefix > 32 {
            return None;
        }
        let s = Subnet { network, prefix };
        (u32::from(network) & s.mask() == u32::from(network)).then_some(s)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The netmask in dotted form.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.network) & m == u32::from(other.network) & m
    }

    /// How many node addresses the subnet offers (network, broadcast and the
    /// reserved low addresses excluded).
    pub fn capacity(&self) -> u32 {
        let size: u64 = 1u64 << (32 - u32::from(self.prefix));
        size.saturating_sub(u64::from(FIRST_HOST_OFFSET) + 1)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// The `i`-th node address (0-based), if the subnet has room for it.
    pub fn host(&self, i: u32) -> Option<Ipv4Addr> {
        (i < self.capacity())
            .then(|| Ipv4Addr::from(u32::from(self.network) + FIRST_HOST_OFFSET + i))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Subnet {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Subnet, Invalid> {
        let help = "use an IPv4 network in CIDR form, e.g. \"10.44.0.0/24\"";
        let bad = || Invalid {
            message: format!("bad subnet \"{text}\""),
            help: help.to_string(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        if !(8..=28).contains(&prefix) {
            return Err(Invalid {
                message: format!("subnet \"{text}\" has an unusable prefix length /{prefix}"),
                help: "use a prefix between /8 and /28, e.g. \"10.44.0.0/24\"".to_string(),
            });
        }
        let masked = Subnet {
            network: Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - prefix))),
            prefix,
        };
        if masked.network != addr {
            return Err(Invalid {
                message: format!("subnet \"{text}\" has host bits set"),
                help: format!("did you mean \"{masked}\"?"),
            });
        }
        Ok(masked)
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC of a node's NIC: `52:54` (locally administered, QEMU's usual
    /// prefix), the network's index, then the low three bytes of the node's
    /// address. Unique per segment because addresses are, and readable: the
    /// tail of the MAC is the tail of the IP.
    pub fn for_nic(network_index: usize, ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        // Network indices are bounded by validation well below 256.
        let n = u8::try_from(network_index).unwrap_or(u8::MAX);
        Mac([0x52, 0x54, n, o[1], o[2], o[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_overlap() {
        let a: Subnet = "10.44.0.0/24".parse().unwrap();
        let b: Subnet = "10.44.0.0/16".parse().unwrap();
        let c: Subnet = "10.45.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert_eq!(a.capacity(), 256 - 12);
        assert_eq!(a.host(0), Some(Ipv4Addr::new(10, 44, 0, 11)));
        assert_eq!(a.host(243), Some(Ipv4Addr::new(10, 44, 0, 254)));
        assert_eq!(a.host(244), None);
        assert_eq!(a.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        let e = "10.44.0.1/24".parse::<Subnet>().unwrap_err();
        assert_eq!(e.help, "did you mean \"10.44.0.0/24\"?");
        assert!("10.44.0.0".parse::<Subnet>().is_err());
        assert!("10.44.0.0/30".parse::<Subnet>().is_err());
        assert!("10.44.0.0/33".parse::<Subnet>().is_err());
        assert!("300.1.1.0/24".parse::<Subnet>().is_err());
    }

    #[test]
    fn macs() {
        let m = Mac::for_nic(1, Ipv4Addr::new(10, 44, 0, 12));
        assert_eq!(m.to_string(), "52:54:01:2c:00:0c");
    }
}
