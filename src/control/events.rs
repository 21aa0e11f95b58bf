//! Events the control thread surfaces: one JSON object per event, to subscribers of the control
//! socket, to the log and to the metrics.

use std::net::IpAddr;

use serde::Serialize;

use super::mm::Child;
use crate::codes::{self, Code};

/// Why a main-mode SA ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MmCause {
    /// The lifetime (seconds or kilobytes) ran out without a replacement.
    Lifetime,
    /// An authenticated ISAKMP DELETE from the peer for these cookies.
    PeerDelete,
    /// A new main mode from the same peer carried INITIAL-CONTACT.
    InitialContact,
    /// We reauthenticated: a new main mode replaced it, and we deleted it.
    Reauth,
    /// The operator terminated it (`espd ctl ike terminate`); we sent a DELETE.
    Terminated,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// 13885: a main-mode SA expired or the peer deleted it. Its child SAs (each with its
    /// direction) keep forwarding until their own lifetimes (IKEv1).
    MmExpired {
        code: u32,
        hex: String,
        symbol: &'static str,
        message: &'static str,
        cause: MmCause,
        peer: IpAddr,
        icookie: String,
        rcookie: String,
        children: Vec<Child>,
        time: f64,
    },
    /// A child SA crossed a soft limit: rekey it.
    SaSoftExpired {
        spi: String,
        direction: &'static str,
        tunnel: Option<String>,
        action: &'static str,
        time: f64,
    },
    /// 13895: a child SA reached a hard limit; it passes no more traffic (drops count as 13911).
    SaHardExpired {
        code: u32,
        hex: String,
        symbol: &'static str,
        message: &'static str,
        spi: String,
        direction: &'static str,
        tunnel: Option<String>,
        time: f64,
    },
    /// The outbound SA of a tunnel was swapped (make-before-break).
    Rekeyed {
        tunnel: String,
        old_spi: Option<String>,
        new_spi: String,
        retire_inbound: Option<String>,
        time: f64,
    },
    /// An SA was removed (deleted, retired after a rekey, or after hard expiry).
    SaRemoved {
        spi: String,
        direction: &'static str,
        reason: &'static str,
        time: f64,
    },
    /// The built-in IKE established a main mode.
    MmUp {
        tunnel: String,
        peer: IpAddr,
        icookie: String,
        rcookie: String,
        proposal: String,
        lifetime_s: u64,
        initiator: bool,
        time: f64,
    },
    /// The built-in IKE completed a quick mode (installed, or rekeyed make-before-break).
    QmUp {
        tunnel: String,
        peer: IpAddr,
        inbound_spi: String,
        outbound_spi: String,
        local_ts: String,
        remote_ts: String,
        rekey: bool,
        /// We started the quick mode.
        initiator: bool,
        time: f64,
    },
    /// 13886: DPD gave up on the peer; the main mode is gone without a DELETE.
    MmDead {
        code: u32,
        hex: String,
        symbol: &'static str,
        message: &'static str,
        tunnel: String,
        peer: IpAddr,
        icookie: String,
        rcookie: String,
        time: f64,
    },
    /// A main-mode negotiation failed (`code`: 13801 auth, 13868 no proposal, ...).
    MmFailed(IkeFailure),
    /// A quick-mode negotiation failed.
    QmFailed(IkeFailure),
    /// The config file was applied again (SIGHUP or `load`): what changed.
    Reloaded {
        file: String,
        tunnels: super::reload::Counts,
        policies: super::reload::Counts,
        sas: super::reload::Counts,
        settings: Vec<&'static str>,
        time: f64,
    },
}

/// The fields of `mm_failed` and `qm_failed`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IkeFailure {
    pub code: u32,
    pub hex: String,
    pub symbol: &'static str,
    pub message: &'static str,
    pub tunnel: String,
    pub peer: IpAddr,
    pub reason: String,
    pub time: f64,
}

impl Event {
    pub fn code(&self) -> Option<Code> {
        match self {
            Event::MmExpired { .. } => Some(codes::IKE_MM_EXPIRED),
            Event::SaHardExpired { .. } => Some(codes::IKE_QM_EXPIRED),
            Event::MmDead { code, .. } => codes::by_number(*code),
            Event::MmFailed(f) | Event::QmFailed(f) => codes::by_number(f.code),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::MmExpired { .. } => "mm_expired",
            Event::SaSoftExpired { .. } => "sa_soft_expired",
            Event::SaHardExpired { .. } => "sa_hard_expired",
            Event::Rekeyed { .. } => "rekeyed",
            Event::SaRemoved { .. } => "sa_removed",
            Event::MmUp { .. } => "mm_up",
            Event::QmUp { .. } => "qm_up",
            Event::MmDead { .. } => "mm_dead",
            Event::MmFailed { .. } => "mm_failed",
            Event::QmFailed { .. } => "qm_failed",
            Event::Reloaded { .. } => "reloaded",
        }
    }

    pub fn mm_expired(
        cause: MmCause,
        peer: IpAddr,
        icookie: u64,
        rcookie: u64,
        children: &[Child],
        time: f64,
    ) -> Event {
        let c = codes::IKE_MM_EXPIRED;
        Event::MmExpired {
            code: c.code,
            hex: c.hex(),
            symbol: c.symbol,
            message: c.message,
            cause,
            peer,
            icookie: format!("{icookie:016x}"),
            rcookie: format!("{rcookie:016x}"),
            children: children.to_vec(),
            time,
        }
    }

    pub fn sa_hard(spi: u32, direction: &'static str, tunnel: Option<String>, time: f64) -> Event {
        let c = codes::IKE_QM_EXPIRED;
        Event::SaHardExpired {
            code: c.code,
            hex: c.hex(),
            symbol: c.symbol,
            message: c.message,
            spi: spi_str(spi),
            direction,
            tunnel,
            time,
        }
    }
}

/// `mm_failed` (`main: true`) or `qm_failed` with its code.
pub fn ike_failed(
    main: bool,
    code: Code,
    tunnel: String,
    peer: IpAddr,
    reason: String,
    time: f64,
) -> Event {
    let f = IkeFailure {
        code: code.code,
        hex: code.hex(),
        symbol: code.symbol,
        message: code.message,
        tunnel,
        peer,
        reason,
        time,
    };
    if main {
        Event::MmFailed(f)
    } else {
        Event::QmFailed(f)
    }
}

/// 13886 for a main mode DPD gave up on.
pub fn mm_dead(tunnel: String, peer: IpAddr, icookie: u64, rcookie: u64, time: f64) -> Event {
    let c = codes::IKE_PEER_MM_ASSUMED_INVALID;
    Event::MmDead {
        code: c.code,
        hex: c.hex(),
        symbol: c.symbol,
        message: c.message,
        tunnel,
        peer,
        icookie: format!("{icookie:016x}"),
        rcookie: format!("{rcookie:016x}"),
        time,
    }
}

pub fn spi_str(spi: u32) -> String {
    format!("{spi:#010x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_expired_json_has_the_exact_fields() {
        let e = Event::mm_expired(
            MmCause::PeerDelete,
            "203.0.113.2".parse().unwrap(),
            0x1122,
            0x3344,
            &[
                Child {
                    spi: 0xa001,
                    direction: crate::sa::Direction::Inbound,
                },
                Child {
                    spi: 0xa001,
                    direction: crate::sa::Direction::Outbound,
                },
            ],
            1.5,
        );
        let j: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(j["event"], "mm_expired");
        assert_eq!(j["code"], 13885);
        assert_eq!(j["hex"], "0x363D");
        assert_eq!(j["symbol"], "ERROR_IPSEC_IKE_MM_EXPIRED");
        assert_eq!(
            j["message"],
            "Main mode SA lifetime expired or peer sent a main mode delete."
        );
        assert_eq!(j["cause"], "peer_delete");
        assert_eq!(j["peer"], "203.0.113.2");
        assert_eq!(j["icookie"], "0000000000001122");
        assert_eq!(
            j["children"],
            serde_json::json!([
                {"spi": "0x0000a001", "direction": "inbound"},
                {"spi": "0x0000a001", "direction": "outbound"}
            ])
        );
        let h = serde_json::to_value(Event::sa_hard(0xb001, "inbound", None, 2.0)).unwrap();
        assert_eq!(
            (h["code"].as_u64(), h["symbol"].as_str()),
            (Some(13895), Some("ERROR_IPSEC_IKE_QM_EXPIRED"))
        );
    }
}
