//! The control API's typed errors. Each names the field it is about ([`ControlError::field`]),
//! and its text (`"field: reason"`) is what the control socket answers.

use super::dir_name;
use super::events::spi_str;
use crate::sa::Direction;
use crate::sa::sa::{SaError, SuccessorError};
use crate::sa::table::TableError;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// An argument is out of range or malformed.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("spi: {} ({}) is not installed", spi_str(*spi), dir_name(*direction))]
    NotInstalled { spi: u32, direction: Direction },
    #[error("spi: {} ({}) is already installed", spi_str(*spi), dir_name(*direction))]
    AlreadyInstalled { spi: u32, direction: Direction },
    /// RFC 4106 §3.1: one key on two SAs would repeat GCM nonces.
    #[error(
        "key: already in use by {} SA {} (RFC 4106: one key on two SAs repeats GCM nonces); every SA needs its own key",
        dir_name(*direction),
        spi_str(*spi)
    )]
    KeyInUse { direction: Direction, spi: u32 },
    /// The key served the other direction before (a peer could reflect our packets).
    #[error(
        "key: was used by an {} SA before; a key serves one direction only (a peer could reflect packets back)",
        dir_name(*direction)
    )]
    KeyOtherDirection { direction: Direction },
    /// `field` names a tunnel that does not exist.
    #[error("{field}: no tunnel named `{name}`")]
    NoTunnel { field: &'static str, name: String },
    #[error("name: tunnel `{0}` exists")]
    TunnelExists(String),
    #[error("name: no tunnel slot left (capacity {0})")]
    NoTunnelSlot(u32),
    /// A second outbound SA for a tunnel: the swap is `rekey`'s job.
    #[error("tunnel: already has outbound SA {}; use rekey", spi_str(*spi))]
    OutboundInUse { spi: u32 },
    #[error("icookie/rcookie: no main mode {icookie:016x}/{rcookie:016x}")]
    NoMainMode { icookie: u64, rcookie: u64 },
    #[error(transparent)]
    Sa(#[from] SaError),
    #[error(transparent)]
    Successor(#[from] SuccessorError),
    #[error(transparent)]
    Table(#[from] TableError),
    /// The error of a part of the request (`inbound`, `outbound`, `policies[3]`).
    #[error("{part}.{source}")]
    In {
        part: String,
        source: Box<ControlError>,
    },
    /// A batch stopped at element `index`; the elements before it are installed.
    #[error("sas[{index}].{source} ({installed} installed before it)")]
    Batch {
        index: usize,
        installed: usize,
        source: Box<ControlError>,
    },
}

impl ControlError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ControlError {
        ControlError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// This error as the error of part `part` of a request.
    pub fn within(self, part: impl Into<String>) -> ControlError {
        ControlError::In {
            part: part.into(),
            source: Box::new(self),
        }
    }

    /// The field the error is about, with its path (`outbound.key`, `sas[2].spi`).
    pub fn field(&self) -> String {
        match self {
            ControlError::Invalid { field, .. } => field.clone(),
            ControlError::NoTunnel { field, .. } => (*field).to_string(),
            ControlError::In { part, source } => format!("{part}.{}", source.field()),
            ControlError::Batch { index, source, .. } => format!("sas[{index}].{}", source.field()),
            // The remaining texts all start with their field.
            e => e
                .to_string()
                .split_once(':')
                .map_or(String::new(), |(f, _)| f.to_string()),
        }
    }
}

impl From<(&'static str, String)> for ControlError {
    /// The `(field, reason)` errors of the config layer.
    fn from((field, reason): (&'static str, String)) -> ControlError {
        ControlError::invalid(field, reason)
    }
}

pub type Result<T> = std::result::Result<T, ControlError>;
