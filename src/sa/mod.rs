//! Security associations: parameters, per-core state, lifetimes, the lock-free SA table and the
//! security policy database.

pub mod lifetime;
pub mod policy;
#[allow(clippy::module_inception)]
pub mod sa;
pub mod table;

pub use lifetime::{Admit, Limits};
pub use policy::{PolicyAction, Selector, Spd};
pub use sa::{
    Direction, Endpoints, Mode, Sa, SaFailure, SaParams, SaState, SeqCounter, SeqShort, UdpEncap,
};
pub use table::SaTable;
