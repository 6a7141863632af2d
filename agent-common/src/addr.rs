//! The one form in which a TCP rule's address and a connect's destination are compared, so
//! that no other spelling of the same destination walks around an address-limited rule.

/// `AF_INET`.
pub const AF_INET: u32 = 2;
/// `AF_INET6`.
pub const AF_INET6: u32 = 10;

/// `127.0.0.1`, the canonical loopback destination.
const LOOPBACK_V4: [u8; 4] = [127, 0, 0, 1];

/// The canonical form of destination `addr` (IPv4 in the first 4 bytes) of family `family`:
///
/// - an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what an `AF_INET6` socket connects to an
///   IPv4 host with) is that IPv4 address;
/// - every form of this host's loopback — `127.0.0.0/8`, `::1`, and the unspecified addresses
///   `0.0.0.0` and `::` (Linux connects those to the local host) — is `127.0.0.1`: a server
///   listening on the wildcard or dual-stack address answers them all.
///
/// Other families are returned unchanged.
#[inline(always)]
pub fn canonical_destination(family: u32, addr: [u8; 16]) -> (u32, [u8; 16]) {
    let (family, addr) = if family == AF_INET6 && is_v4_mapped(&addr) {
        let mut v4 = [0u8; 16];
        v4[0] = addr[12];
        v4[1] = addr[13];
        v4[2] = addr[14];
        v4[3] = addr[15];
        (AF_INET, v4)
    } else {
        (family, addr)
    };
    let loopback = match family {
        AF_INET => addr[0] == 127 || (addr[0] | addr[1] | addr[2] | addr[3]) == 0,
        AF_INET6 => leading_zero_bytes(&addr) >= 15 && addr[15] <= 1,
        _ => false,
    };
    if loopback {
        let mut v4 = [0u8; 16];
        v4[0] = LOOPBACK_V4[0];
        v4[1] = LOOPBACK_V4[1];
        v4[2] = LOOPBACK_V4[2];
        v4[3] = LOOPBACK_V4[3];
        return (AF_INET, v4);
    }
    if family == AF_INET {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&addr[..4]);
        return (AF_INET, v4);
    }
    (family, addr)
}

/// `::ffff:0:0/96`.
#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    leading_zero_bytes(addr) >= 10 && addr[10] == 0xff && addr[11] == 0xff
}

/// How many of the first 15 bytes are zero before the first that is not (at most 15).
#[inline(always)]
fn leading_zero_bytes(addr: &[u8; 16]) -> usize {
    let mut n = 0;
    while n < 15 && addr[n] == 0 {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    fn v4(text: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&text.parse::<std::net::Ipv4Addr>().unwrap().octets());
        out
    }

    #[test]
    fn every_form_of_the_loopback_is_one_destination() {
        let loopback = (AF_INET, v4("127.0.0.1"));
        for (family, addr) in [
            (AF_INET, v4("127.0.0.1")),
            (AF_INET, v4("127.0.0.2")),
            (AF_INET, v4("127.255.255.254")),
            (AF_INET, v4("0.0.0.0")),
            (AF_INET6, v6("::1")),
            (AF_INET6, v6("::")),
            (AF_INET6, v6("::ffff:127.0.0.1")),
            (AF_INET6, v6("::ffff:127.1.2.3")),
            (AF_INET6, v6("::ffff:0.0.0.0")),
        ] {
            assert_eq!(canonical_destination(family, addr), loopback, "{addr:?}");
        }
    }

    #[test]
    fn a_mapped_address_is_the_ipv4_address() {
        assert_eq!(
            canonical_destination(AF_INET6, v6("::ffff:10.1.2.3")),
            (AF_INET, v4("10.1.2.3"))
        );
    }

    #[test]
    fn other_addresses_stay_themselves() {
        for (family, addr) in [
            (AF_INET, v4("10.1.2.3")),
            (AF_INET, v4("1.0.0.0")),
            (AF_INET6, v6("2001:db8::1")),
            (AF_INET6, v6("::2")),
            (AF_INET6, v6("::ffff:0:0:1")),
            (AF_INET6, v6("fe80::1")),
            // The deprecated IPv4-compatible form is IPv6 to Linux, not IPv4.
            (AF_INET6, v6("::10.1.2.3")),
        ] {
            assert_eq!(
                canonical_destination(family, addr),
                (family, addr),
                "{addr:?}"
            );
        }
    }

    #[test]
    fn ipv4_bytes_past_the_address_do_not_count() {
        let mut noisy = v4("10.1.2.3");
        noisy[9] = 7;
        assert_eq!(
            canonical_destination(AF_INET, noisy),
            (AF_INET, v4("10.1.2.3"))
        );
    }
}
