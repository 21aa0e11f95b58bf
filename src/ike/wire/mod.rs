//! ISAKMP (RFC 2408) messages as IKEv1 (RFC 2409) uses them: parse and build, sans-I/O.
//!
//! Contract: pure functions over caller-owned buffers; no syscalls, no clock, no locks.
//! Parsing borrows the datagram (views, no copies) and allocates nothing; nothing here
//! panics on any input (the `ike_wire` fuzz target checks that, and that parse → build gives
//! the same bytes back). Building appends to a caller-provided `Vec<u8>`.
//!
//! * [`Message::parse`] checks the header: version 1.0 only, exchange main (2), quick (32) or
//!   informational (5) — aggressive mode (4) is its own [`WireError::AggressiveMode`] so the
//!   caller can refuse it — flags E/C/A (no others), a non-zero initiator cookie, message id
//!   0 in main mode and non-zero in quick mode, and a length equal to the datagram's.
//! * [`Message::payloads`] / [`parse_payloads`] walk the payload chain once: each generic
//!   header is checked once (reserved 0, length ≥ 4 and within what is left), then the
//!   payload's own fields (SA: DOI 1, SIT_IDENTITY_ONLY, proposals, transforms and
//!   attributes; NONCE 8..=256 bytes; ID types; N/D SPI sizes by protocol; ...). Unknown
//!   payload types are refused (RFC 2408 §5.2, INVALID-PAYLOAD-TYPE: IKEv1 has no critical
//!   bit). An encrypted body stays opaque until it is decrypted elsewhere and handed to
//!   [`parse_decrypted`], which allows padding after the last payload (RFC 2409 §5.3).
//! * Errors name the part and the field ([`WireError`]); [`WireError::code`] maps each to
//!   its Windows IPsec code (13824 header, 13843 framing, 13830.. per payload, ...) and
//!   [`WireError::notify_type`] to the RFC 2408 notify a responder may send.
//! * [`Builder`] writes MM1..MM6, QM1..QM3 and informational messages (N, D, DPD), chaining
//!   payloads and fixing lengths as it goes; [`Builder::finish_padded`] prepares a body for
//!   in-place encryption.

mod build;
pub mod consts;
mod error;
mod header;
mod payloads;
mod sa;

pub use build::{AttrWriter, BuildError, Builder, ProposalBuilder, SaBuilder};
pub use consts::*;
pub use error::{Field, Part, WireError};
pub use header::field as header_field;
pub use header::{Cookie, Exchange, Flags, HEADER_LEN, Header, Message, peek_cookies};
pub use payloads::{
    DeletePayload, IdPayload, Identity, NotifyPayload, Payload, PayloadIter, Payloads, RawPayload,
    Trailing, parse_decrypted, parse_payloads,
};
pub use sa::{Attr, AttrValue, MAX_NUMERIC_ATTR_LEN, Proposal, SaPayload, Transform, numeric_attr};
