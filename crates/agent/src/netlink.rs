//! Links and addresses set over rtnetlink, as `ip link set` and `ip addr
//! replace` do, without starting `ip`: under TCG each `ip` costs about
//! 0.1 s of the node's only vCPU, and activation ran four or five of them
//! on the path of every node's readiness.
//!
//! Only requests and their acknowledgements: no dumps. A caller that needs
//! to know what is there (a container whose engine set its addresses and
//! that may not change them) falls back to `ip` when a request fails.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;

/// What to change on one link.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkChange {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// Applies `change` to the link with index `index`.
pub fn set_link(index: u32, change: &LinkChange) -> io::Result<()> {
    request(&link_message(1, index, change))
}

/// Gives the link `index` the address `address/prefix`, replacing it if
/// it is there (as `ip addr replace`).
pub fn replace_address(index: u32, address: IpAddr, prefix: u8) -> io::Result<()> {
    request(&address_message(1, index, address, prefix))
}

/// A link's index, from sysfs.
pub fn index_of(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("ifindex {text:?}")))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `ADDRESS/PREFIX` (IPv4 or IPv6).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((address, prefix))
}

/// Sends one request on a fresh socket and waits for its acknowledgement.
fn request(message: &[u8]) -> io::Result<()> {
    // Protocol 0 is NETLINK_ROUTE (which rustix cannot name: its protocols
    // are non-zero).
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    )?;
    rustix::net::sendto(
        &fd,
        message,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
    acknowledgement(&buf[..n], 1)
}

/// The answer to request `seq`: `Ok` for an acknowledgement with no error,
/// the kernel's error otherwise.
fn acknowledgement(reply: &[u8], seq: u32) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if reply.len() < 20 {
        return Err(invalid("a short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let reply_seq = u32::from_ne_bytes([reply[8], reply[9], reply[10], reply[11]]);
    if kind != NLMSG_ERROR || reply_seq != seq {
        return Err(invalid("a netlink reply that is no acknowledgement"));
    }
    let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match error {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

/// A netlink message: header, then `body`.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Appends a route attribute, padded to 4 bytes.
fn attribute(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn link_message(seq: u32, index: u32, change: &LinkChange) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut body = vec![AF_UNSPEC, 0, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    let (flags, mask) = if change.up { (IFF_UP, IFF_UP) } else { (0, 0) };
    body.extend_from_slice(&flags.to_ne_bytes());
    body.extend_from_slice(&mask.to_ne_bytes());
    if let Some(mac) = &change.mac {
        attribute(&mut body, IFLA_ADDRESS, mac);
    }
    if let Some(mtu) = change.mtu {
        attribute(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
    }
    message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &body)
}

fn address_message(seq: u32, index: u32, address: IpAddr, prefix: u8) -> Vec<u8> {
    let (family, bytes) = match address {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    // struct ifaddrmsg: family, prefix length, flags, scope (universe), index.
    let mut body = vec![family, prefix, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    attribute(&mut body, IFA_LOCAL, &bytes);
    attribute(&mut body, IFA_ADDRESS, &bytes);
    message(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(buf: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([buf[i], buf[i + 1]])
    }

    fn u32_at(buf: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]])
    }

    #[test]
    fn a_link_change_is_laid_out_as_the_kernel_reads_it() {
        let change = LinkChange {
            mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            mtu: Some(1400),
            up: true,
        };
        let msg = link_message(7, 3, &change);
        assert_eq!(u32_at(&msg, 0) as usize, msg.len());
        assert_eq!(u16_at(&msg, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&msg, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&msg, 8), 7);
        // ifinfomsg: the index, IFF_UP in flags and in the change mask.
        assert_eq!(u32_at(&msg, 20), 3);
        assert_eq!(u32_at(&msg, 24), IFF_UP);
        assert_eq!(u32_at(&msg, 28), IFF_UP);
        // The MAC: 4 + 6 bytes, padded to 12; then the MTU.
        assert_eq!(u16_at(&msg, 32), 10);
        assert_eq!(u16_at(&msg, 34), IFLA_ADDRESS);
        assert_eq!(&msg[36..42], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(u16_at(&msg, 44), 8);
        assert_eq!(u16_at(&msg, 46), IFLA_MTU);
        assert_eq!(u32_at(&msg, 48), 1400);
        assert_eq!(msg.len(), 52);
        // Nothing asked: no attribute, no flag.
        let msg = link_message(1, 3, &LinkChange::default());
        assert_eq!(msg.len(), 32);
        assert_eq!(u32_at(&msg, 28), 0);
    }

    #[test]
    fn an_address_replaces_as_ip_addr_replace_does() {
        let (address, prefix) = parse_cidr("10.44.0.11/24").unwrap();
        let msg = address_message(1, 2, address, prefix);
        assert_eq!(u16_at(&msg, 4), RTM_NEWADDR);
        assert_eq!(
            u16_at(&msg, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(&msg[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&msg, 20), 2);
        assert_eq!(u16_at(&msg, 26), IFA_LOCAL);
        assert_eq!(&msg[28..32], &[10, 44, 0, 11]);
        assert_eq!(u16_at(&msg, 34), IFA_ADDRESS);
        assert_eq!(&msg[36..40], &[10, 44, 0, 11]);
        let (v6, prefix) = parse_cidr("fd00::5/64").unwrap();
        let msg = address_message(1, 2, v6, prefix);
        assert_eq!(&msg[16..18], &[AF_INET6, 64]);
        assert_eq!(u16_at(&msg, 24), 20);
        assert_eq!(msg.len(), 16 + 8 + 20 + 20);
    }

    #[test]
    fn addresses_and_macs_are_parsed_or_refused() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:ef:01"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:zz"), None);
        assert!(parse_cidr("10.0.0.1/33").is_none());
        assert!(parse_cidr("10.0.0.1").is_none());
        assert!(parse_cidr("fd00::1/129").is_none());
        assert_eq!(parse_cidr("fd00::1/128").unwrap().1, 128);
    }

    #[test]
    fn acknowledgements_and_errors_are_read() {
        let ack = |seq: u32, error: i32| {
            let mut body = error.to_ne_bytes().to_vec();
            body.extend_from_slice(&[0; 16]);
            message(NLMSG_ERROR, 0, seq, &body)
        };
        assert!(acknowledgement(&ack(1, 0), 1).is_ok());
        let denied = acknowledgement(&ack(1, -1), 1).unwrap_err();
        assert_eq!(denied.raw_os_error(), Some(1));
        assert!(acknowledgement(&ack(2, 0), 1).is_err());
        assert!(acknowledgement(&ack(1, 0)[..10], 1).is_err());
        let other = message(RTM_NEWLINK, 0, 1, &[0; 16]);
        assert!(acknowledgement(&other, 1).is_err());
    }
}
