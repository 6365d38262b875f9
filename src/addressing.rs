//! Fixed addresses on evi-net, so that clients find evi-state without DNS.
//!
//! Podman's name resolution on a user network is not something a client can
//! count on: with CNI and no DNS plugin (Podman 4.3 installed without its
//! recommends) names do not resolve at all, and aardvark-dns 1.4 (Debian 12)
//! drops queries for up to a minute after containers come and go. So evi-state
//! runs at a fixed address and every container evi-install creates that talks
//! to it carries an `/etc/hosts` entry `evi-state:<address>`.
//!
//! A static address is reserved only while its container runs, and with CNI
//! (host-local IPAM) dynamic leases are handed out across the whole subnet, so
//! a stopped evi-state's address could be taken. Hence every container
//! evi-install creates on evi-net has a fixed address, from the lower half of
//! the subnet; on netavark the dynamic range is the upper half, which keeps
//! foreign containers off ours too (CNI refuses a static address outside the
//! dynamic range, so there the range is the whole subnet). Pure.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Offsets from the subnet's first address. `.1` is the gateway; `.3` was
/// the rotation job's, before the rotation needed none.
const STATE_OFFSET: u32 = 2;
const PROBE_OFFSET: u32 = 4;
/// Client `i` has the two addresses `CLIENTS_OFFSET + 2i` and `+ 2i + 1`: one
/// for the running container, one for its successor during a replacement.
const CLIENTS_OFFSET: u32 = 10;
/// The largest prefix allowed: 64 addresses, 32 of them ours.
const MAX_PREFIX: u8 = 26;
const MIN_PREFIX: u8 = 16;

/// Parses and checks `network_subnet`; the error is the problem, in words.
pub fn parse_subnet(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 subnet in CIDR form"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "`{text}` has host bits set (the subnet is {})",
            net.trunc()
        ));
    }
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
        return Err(format!(
            "`{text}` is a /{}; evi-net needs a /{MIN_PREFIX} to /{MAX_PREFIX}",
            net.prefix_len()
        ));
    }
    if !net.addr().is_private() {
        return Err(format!("`{text}` is not a private (RFC 1918) range"));
    }
    Ok(net)
}

fn nth(subnet: Ipv4Net, offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + offset)
}

pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    nth(subnet, 1)
}

pub fn state_address(subnet: Ipv4Net) -> Ipv4Addr {
    nth(subnet, STATE_OFFSET)
}

pub fn probe_address(subnet: Ipv4Net) -> Ipv4Addr {
    nth(subnet, PROBE_OFFSET)
}

/// The two addresses of client number `index` (evi-be is 0, evi-worker 1).
pub fn client_addresses(subnet: Ipv4Net, index: u32) -> [Ipv4Addr; 2] {
    let first = CLIENTS_OFFSET + 2 * index;
    [nth(subnet, first), nth(subnet, first + 1)]
}

/// The client index of replica `replica` (from 1) of the service in `slot`
/// (evi-be 0, evi-worker 1): the services interleave, so a replica's index,
/// and with it its addresses, never shifts when the other service scales.
/// Replica 1 keeps the index the service always had.
pub fn replica_index(slot: u32, replica: u32) -> u32 {
    2 * (replica.max(1) - 1) + slot
}

/// How many replicas of the service in `slot` fit the subnet's fixed address
/// plan: their addresses must stay below the dynamic range (the upper half).
pub fn max_replicas(subnet: Ipv4Net, slot: u32) -> u32 {
    let half = (1u32 << (32 - subnet.prefix_len())) / 2;
    // The last index whose second address is below `half`.
    let last_index = (half - CLIENTS_OFFSET - 2) / 2;
    if last_index < slot {
        0
    } else {
        (last_index - slot) / 2 + 1
    }
}

/// The MAC address that goes with a fixed address: locally administered
/// (`0a:e1:`) plus the address's four bytes. Podman otherwise gives a
/// re-created or restarted container a new MAC on the same address, and every
/// client's ARP cache keeps the old one: measured here, clients then stall for
/// 28-42 s after evi-state is re-created. Same address, same MAC.
pub fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("0a:e1:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// What evi-net is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where dynamic leases come from where the backend allows a static
    /// address outside it (netavark): the upper half of the subnet.
    pub dynamic_range: (Ipv4Addr, Ipv4Addr),
}

pub fn network_spec(subnet: Ipv4Net) -> NetworkSpec {
    let size = 1u32 << (32 - subnet.prefix_len());
    NetworkSpec {
        subnet,
        gateway: gateway(subnet),
        dynamic_range: (nth(subnet, size / 2), nth(subnet, size - 2)),
    }
}

/// Another network or a host route that covers part of `subnet`: either
/// containers could not reach evi-state, or the host could not reach that
/// network any more.
pub fn first_overlap<'a>(
    subnet: Ipv4Net,
    others: impl IntoIterator<Item = (&'a str, Ipv4Net)>,
) -> Option<(&'a str, Ipv4Net)> {
    others
        .into_iter()
        .find(|(_, other)| other.contains(&subnet.network()) || subnet.contains(&other.network()))
}

/// The IPv4 routes of the host, from `/proc/net/route` text: (interface,
/// destination). The default route is left out: it overlaps everything.
pub fn parse_routes(text: &str) -> Vec<(String, Ipv4Net)> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            if mask == 0 {
                return None;
            }
            let prefix = mask.leading_ones() as u8;
            let net = Ipv4Net::new(Ipv4Addr::from(dest), prefix).ok()?;
            Some((f[0].to_string(), net))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_checked() {
        assert_eq!(parse_subnet("10.90.213.0/24"), Ok(net("10.90.213.0/24")));
        for (text, problem) in [
            ("10.90.213.0", "not an IPv4 subnet"),
            ("banana", "not an IPv4 subnet"),
            (
                "10.90.213.7/24",
                "host bits set (the subnet is 10.90.213.0/24)",
            ),
            ("10.90.213.0/28", "is a /28"),
            ("10.0.0.0/8", "is a /8"),
            ("8.8.8.0/24", "not a private"),
        ] {
            let err = parse_subnet(text).unwrap_err();
            assert!(err.contains(problem), "{text}: {err}");
        }
    }

    #[test]
    fn the_address_plan_keeps_ours_below_the_dynamic_range() {
        let s = net("10.90.213.0/24");
        assert_eq!(state_address(s), Ipv4Addr::new(10, 90, 213, 2));
        assert_eq!(crate::desired::state_host_entry(s), "evi-state:10.90.213.2");
        assert_eq!(
            client_addresses(s, 1),
            [
                Ipv4Addr::new(10, 90, 213, 12),
                Ipv4Addr::new(10, 90, 213, 13)
            ]
        );
        let spec = network_spec(s);
        assert_eq!(spec.gateway, Ipv4Addr::new(10, 90, 213, 1));
        assert_eq!(
            spec.dynamic_range,
            (
                Ipv4Addr::new(10, 90, 213, 128),
                Ipv4Addr::new(10, 90, 213, 254)
            )
        );
        let small = net("10.1.2.64/26");
        assert_eq!(
            network_spec(small).dynamic_range,
            (Ipv4Addr::new(10, 1, 2, 96), Ipv4Addr::new(10, 1, 2, 126))
        );
        assert!(client_addresses(small, 9)[1] < network_spec(small).dynamic_range.0);
    }

    #[test]
    fn replicas_interleave_and_stay_below_the_dynamic_range() {
        let s = net("10.90.213.0/24");
        // Replica 1 keeps today's addresses; replica 2 of evi-be sits after evi-worker.
        assert_eq!(replica_index(0, 1), 0);
        assert_eq!(replica_index(1, 1), 1);
        assert_eq!(replica_index(0, 2), 2);
        assert_eq!(replica_index(1, 3), 5);
        assert_eq!((max_replicas(s, 0), max_replicas(s, 1)), (30, 29));
        for (subnet, slot) in [
            (s, 0),
            (s, 1),
            (net("10.1.2.64/26"), 0),
            (net("10.1.2.64/26"), 1),
        ] {
            let top = max_replicas(subnet, slot);
            let last = client_addresses(subnet, replica_index(slot, top))[1];
            assert!(
                last < network_spec(subnet).dynamic_range.0,
                "{subnet} {slot}"
            );
            let over = client_addresses(subnet, replica_index(slot, top + 1))[1];
            assert!(
                over >= network_spec(subnet).dynamic_range.0,
                "{subnet} {slot}"
            );
        }
        assert_eq!(max_replicas(net("10.1.2.64/26"), 0), 6);
        assert_eq!(max_replicas(net("10.1.2.64/26"), 1), 5);
    }

    #[test]
    fn a_fixed_address_has_a_fixed_locally_administered_mac() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 90, 213, 2)), "0a:e1:0a:5a:d5:02");
        // Locally administered (bit 1), unicast (bit 0 clear).
        assert_eq!(0x0a & 0b11, 0b10);
    }

    #[test]
    fn overlaps_are_found_both_ways() {
        let s = net("10.90.213.0/24");
        let others = [
            ("podman", net("10.88.0.0/16")),
            ("wide", net("10.90.0.0/16")),
        ];
        assert_eq!(
            first_overlap(s, others),
            Some(("wide", net("10.90.0.0/16")))
        );
        assert_eq!(
            first_overlap(s, [("narrow", net("10.90.213.128/25"))]),
            Some(("narrow", net("10.90.213.128/25")))
        );
        assert_eq!(first_overlap(s, [("next", net("10.90.214.0/24"))]), None);
    }

    #[test]
    fn routes_are_read_from_proc() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    podman1\t00D55A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_routes(text),
            [
                ("eth0".to_string(), net("192.168.2.0/24")),
                ("podman1".to_string(), net("10.90.213.0/24")),
            ]
        );
    }
}
