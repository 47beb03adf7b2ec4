//! What one client address may take from the daemon: open sessions (in total and per address)
//! and the pace of failed logins. Each session holds a [`SessionPermit`]; whether a login may
//! reach the provider at all, and how long a failed one waits for its answer, is
//! [`logins::Logins`].

pub mod budget;
pub mod logins;
pub mod memory;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Sessions open now, in total and per client address.
#[derive(Default)]
pub struct Sessions {
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away; the text follows `* BYE [UNAVAILABLE] `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Total => "Too many connections",
            Refused::PerAddress => "Too many connections from your address",
        })
    }
}

/// One admitted session; dropping it frees the place.
pub struct SessionPermit {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Sessions {
    /// Admits a session from `peer` if that keeps within both maxima.
    pub fn admit(&self, peer: IpAddr, max_total: usize, max_per_address: usize) -> Result<SessionPermit, Refused> {
        let address = group(peer);
        let mut open = self.open.lock().expect("sessions");
        if open.total >= max_total {
            return Err(Refused::Total);
        }
        let mine = open.per_address.entry(address).or_default();
        if *mine >= max_per_address {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        open.total += 1;
        Ok(SessionPermit { open: self.open.clone(), address })
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("sessions");
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one host usually has a whole
/// /64 to pick addresses from).
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_per_address_and_freed_on_drop() {
        let sessions = Sessions::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = sessions.admit(a, 3, 2).unwrap();
        let _second = sessions.admit(a, 3, 2).unwrap();
        assert_eq!(sessions.admit(a, 3, 2).err(), Some(Refused::PerAddress));
        let _third = sessions.admit(b, 3, 2).unwrap();
        assert_eq!(sessions.admit(b, 3, 2).err(), Some(Refused::Total));
        drop(first);
        assert!(sessions.admit(a, 3, 2).is_ok());
    }

    #[test]
    fn ipv6_hosts_count_per_64() {
        let sessions = Sessions::default();
        let _one = sessions.admit("2001:db8::1".parse().unwrap(), 10, 1).unwrap();
        assert!(sessions.admit("2001:db8::2".parse().unwrap(), 10, 1).is_err());
        assert!(sessions.admit("2001:db8:0:1::1".parse().unwrap(), 10, 1).is_ok());
    }
}
