//! Places held by network addresses, capped overall and per address: connections still
//! speaking plain HTTP, connections waiting to authenticate. A slot is given back when
//! its [`Slot`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::locks::lock;

/// A table of slots by address.
#[derive(Debug)]
pub(crate) struct SlotTable {
    held: Mutex<Held>,
    max_total: usize,
    max_per_address: usize,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is taken.
    Full,
    /// This address holds its share.
    AddressFull,
}

impl SlotTable {
    /// A table of `max_total` slots, at most `max_per_address` for one address (0: no
    /// limit of that kind).
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<SlotTable> {
        Arc::new(SlotTable {
            held: Mutex::new(Held::default()),
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_address: if max_per_address == 0 {
                usize::MAX
            } else {
                max_per_address
            },
        })
    }

    /// Takes a slot for `address` (`None`: an unknown address, counted in the total only).
    pub(crate) fn take(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Slot, Refused> {
        let mut held = lock(&self.held);
        if held.total >= self.max_total {
            return Err(Refused::Full);
        }
        if let Some(ip) = address {
            let n = held.by_address.entry(ip).or_default();
            if *n >= self.max_per_address {
                return Err(Refused::AddressFull);
            }
            *n += 1;
        }
        held.total += 1;
        Ok(Slot {
            table: Arc::clone(self),
            address,
        })
    }

    /// Slots held now, in all.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        lock(&self.held).total
    }

    fn give_back(&self, address: Option<IpAddr>) {
        let mut held = lock(&self.held);
        held.total = held.total.saturating_sub(1);
        if let Some(ip) = address {
            if let Some(n) = held.by_address.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    held.by_address.remove(&ip);
                }
            }
        }
    }
}

/// A slot held; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<SlotTable>,
    address: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.give_back(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_overall_and_per_address_and_gives_back_on_drop() {
        let table = SlotTable::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = table.take(Some(a)).unwrap();
        let _a2 = table.take(Some(a)).unwrap();
        assert_eq!(table.take(Some(a)).unwrap_err(), Refused::AddressFull);
        let _b1 = table.take(Some(b)).unwrap();
        assert_eq!(table.take(Some(b)).unwrap_err(), Refused::Full);
        assert_eq!(table.held(), 3);
        drop(a1);
        assert_eq!(table.held(), 2);
        let _a3 = table.take(Some(a)).unwrap();
        assert_eq!(lock(&table.held).by_address.len(), 2);
    }

    #[test]
    fn zero_means_no_limit_and_addresses_are_forgotten_when_empty() {
        let table = SlotTable::new(0, 0);
        let slots: Vec<Slot> = (0..1000).map(|_| table.take(None).unwrap()).collect();
        assert_eq!(table.held(), 1000);
        drop(slots);
        let ip: IpAddr = "::1".parse().unwrap();
        drop(table.take(Some(ip)).unwrap());
        assert!(lock(&table.held).by_address.is_empty());
        assert_eq!(table.held(), 0);
    }
}
