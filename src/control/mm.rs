//! IKE main-mode (phase 1) SA records: cookies, peer, lifetime and the quick-mode (child) SAs
//! negotiated under each. The control thread expires them; a peer's delete removes them. Either
//! way the event is 13885, and the child SAs are left alone (IKEv1: they live until their own
//! lifetimes, while the IKE daemon sets up a new main mode).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ControlError;
use super::events::spi_str;
use crate::config::SpiValue;
use crate::sa::Direction;

/// A child SA of a main mode: SPI and direction (an inbound and an outbound SA can have the
/// same number). Serialised as `{"spi": "0x0000a001", "direction": "inbound"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Child {
    #[serde(serialize_with = "spi_hex")]
    pub spi: u32,
    pub direction: Direction,
}

fn spi_hex<S: serde::Serializer>(spi: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&spi_str(*spi))
}

/// A child as `mm_add` gives it: `{"spi": SPI, "direction": "in"|"out"}` or the short form
/// `"in:SPI"` / `"out:SPI"` (what `espd ctl mm add --child` passes).
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ChildSpec(serde_json::Value);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildObject {
    spi: SpiValue,
    direction: String,
}

impl ChildSpec {
    /// The child, checked; the error says the accepted forms (it never echoes the input).
    pub fn get(self) -> Result<Child, String> {
        let (spi, direction) = match self.0 {
            serde_json::Value::Object(_) => {
                let o: ChildObject = serde_json::from_value(self.0).map_err(|e| e.to_string())?;
                (o.spi, o.direction)
            }
            serde_json::Value::String(t) => {
                let Some((d, spi)) = t.split_once(':') else {
                    return Err(CHILD_FORMS.into());
                };
                let spi = serde_json::from_value(serde_json::Value::String(spi.into()))
                    .map_err(|e| e.to_string())?;
                (spi, d.to_string())
            }
            _ => return Err(CHILD_FORMS.into()),
        };
        Ok(Child {
            spi: spi.get().map_err(|e| format!("spi: {e}"))?,
            direction: super::dir(&direction)?,
        })
    }
}

const CHILD_FORMS: &str = "expected {\"spi\": SPI, \"direction\": \"in\" or \"out\"} or \"in:SPI\" / \"out:SPI\" (a child SA and its direction)";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MmRecord {
    pub icookie: u64,
    pub rcookie: u64,
    pub peer: IpAddr,
    pub lifetime_s: u64,
    /// IKEv1 kilobyte lifetime. espd does not carry IKE traffic; it counts the bytes of the
    /// child SAs listed here against it.
    pub lifetime_kb: Option<u64>,
    pub children: Vec<Child>,
    /// Registration time (control clock, ns).
    pub created_ns: u64,
}

impl MmRecord {
    pub fn expires_ns(&self) -> u64 {
        self.created_ns
            .saturating_add(self.lifetime_s.saturating_mul(1_000_000_000))
    }
}

/// Largest `lifetime_kb`: its byte count must fit in 64 bits.
pub const MAX_KB: u64 = u64::MAX / 1024;

/// The records, keyed by the cookie pair (the ISAKMP SA's SPI).
#[derive(Debug, Default)]
pub struct MmTable {
    records: Vec<MmRecord>,
}

impl MmTable {
    pub fn add(&mut self, r: MmRecord) -> Result<(), ControlError> {
        crate::config::check_seconds(r.lifetime_s)
            .map_err(|e| ControlError::invalid("lifetime_s", e))?;
        if let Some(kb) = r.lifetime_kb
            && kb > MAX_KB
        {
            return Err(ControlError::invalid(
                "lifetime_kb",
                format!("must be at most {MAX_KB} (2^64 bytes in KiB, minus one)"),
            ));
        }
        if self
            .records
            .iter()
            .any(|x| x.icookie == r.icookie && x.rcookie == r.rcookie)
        {
            return Err(ControlError::invalid(
                "icookie/rcookie",
                format!(
                    "main mode {:016x}/{:016x} is already registered",
                    r.icookie, r.rcookie
                ),
            ));
        }
        self.records.push(r);
        Ok(())
    }

    /// Adds a child to the record (`None`: no such main mode).
    pub fn add_child(&mut self, icookie: u64, rcookie: u64, child: Child) -> Option<()> {
        let r = self
            .records
            .iter_mut()
            .find(|x| x.icookie == icookie && x.rcookie == rcookie)?;
        if !r.children.contains(&child) {
            r.children.push(child);
        }
        Some(())
    }

    /// Removes and returns the record (the peer deleted it).
    pub fn remove(&mut self, icookie: u64, rcookie: u64) -> Option<MmRecord> {
        let i = self
            .records
            .iter()
            .position(|x| x.icookie == icookie && x.rcookie == rcookie)?;
        Some(self.records.remove(i))
    }

    /// Removes and returns the records whose lifetime ended at `now` (time, or kilobytes with
    /// `child_bytes` giving the bytes carried by a child SA, each direction counted once).
    pub fn expire(&mut self, now: u64, child_bytes: impl Fn(Child) -> u64) -> Vec<MmRecord> {
        let mut gone = Vec::new();
        self.records.retain(|r| {
            let by_kb = r.lifetime_kb.is_some_and(|kb| {
                r.children
                    .iter()
                    .map(|c| child_bytes(*c))
                    .fold(0u64, u64::saturating_add)
                    >= kb.saturating_mul(1024)
            });
            if now >= r.expires_ns() || by_kb {
                gone.push(r.clone());
                false
            } else {
                true
            }
        });
        gone
    }

    pub fn list(&self) -> &[MmRecord] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, life: u64, kb: Option<u64>) -> MmRecord {
        MmRecord {
            icookie: i,
            rcookie: i + 1,
            peer: "203.0.113.2".parse().unwrap(),
            lifetime_s: life,
            lifetime_kb: kb,
            children: vec![Child {
                spi: 0xa001,
                direction: Direction::Inbound,
            }],
            created_ns: 0,
        }
    }

    #[test]
    fn expiry_by_time_and_kilobytes() {
        let mut t = MmTable::default();
        t.add(rec(1, 10, None)).unwrap();
        t.add(rec(3, 100, Some(1))).unwrap();
        assert!(t.add(rec(1, 5, None)).is_err(), "duplicate cookies");
        assert!(t.expire(9_000_000_000, |_| 0).is_empty());
        let g = t.expire(10_000_000_000, |_| 0);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].icookie, 1);
        assert_eq!(
            t.expire(11_000_000_000, |_| 2048)[0].icookie,
            3,
            "1 KiB of child traffic ends the second"
        );
        assert!(t.list().is_empty());
        assert!(t.remove(1, 2).is_none());
    }
}
