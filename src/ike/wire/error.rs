//! Why an ISAKMP message was refused: the part (header or payload) and the field, each mapped
//! to the Windows IPsec code it surfaces as and to the RFC 2408 notify type a responder may
//! answer with.

use super::consts::notify;
use crate::codes::{self, Code};

/// The header, or the payload an error was found in (nested SA parts have their own names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Header,
    Sa,
    Proposal,
    Transform,
    Attribute,
    KeyExchange,
    Id,
    Cert,
    CertRequest,
    Hash,
    Signature,
    Nonce,
    Notify,
    Delete,
    VendorId,
    NatD,
    NatOa,
}

/// The field that was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// A length: the message's, a payload's (generic header: < 4 or past the end), or a
    /// fixed part the payload is too short for.
    Length,
    /// A RESERVED field (RFC 2408: must be zero).
    Reserved,
    /// The major version (only 1 is accepted).
    MajorVersion,
    /// The minor version (only 0 is accepted).
    MinorVersion,
    /// The exchange type (not main, quick, informational or aggressive).
    Exchange,
    /// Undefined flag bits.
    Flags,
    /// The initiator cookie is zero.
    Cookie,
    /// Message id 0 in quick mode, or non-zero in main mode.
    MessageId,
    /// A nested next-payload field (a proposal not followed by a proposal, a transform not
    /// followed by a transform).
    NextPayload,
    Doi,
    Situation,
    Protocol,
    SpiSize,
    /// A count that does not match what follows (transforms, SPIs), or zero.
    Count,
    /// An attribute type (0 is reserved).
    AttrType,
    /// A numeric attribute in variable form with an empty or more than 8-byte value.
    AttrValue,
    /// An identification type espd does not know.
    IdType,
    /// The payload's data has the wrong size for its type (address, nonce, hash, DPD seq...).
    Data,
    /// Bytes after the last proposal, transform or payload where none may follow.
    Trailing,
}

/// A refused ISAKMP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// A field of the header or of a payload is malformed.
    #[error("ISAKMP {part:?} payload: bad {field:?}")]
    Malformed { part: Part, field: Field },
    /// RFC 2408 §5.2: an unknown (or misplaced: proposal, transform) payload type.
    #[error("ISAKMP payload type {0} is invalid here")]
    InvalidPayloadType(u8),
    /// An aggressive-mode exchange (4): refused by policy, not malformed.
    #[error("ISAKMP aggressive mode refused")]
    AggressiveMode,
    /// The payloads of a message with the encryption flag were asked for before decryption.
    #[error("ISAKMP message body is encrypted")]
    Encrypted,
}

impl WireError {
    pub(crate) const fn at(part: Part, field: Field) -> Self {
        WireError::Malformed { part, field }
    }

    /// The Windows IPsec code this refusal surfaces as (in `mm_failed`/`qm_failed` events).
    pub fn code(&self) -> Code {
        let (part, field) = match *self {
            WireError::Malformed { part, field } => (part, field),
            WireError::InvalidPayloadType(_) => return codes::IKE_INVALID_PAYLOAD,
            // No phase-1 policy allows aggressive mode.
            WireError::AggressiveMode => return codes::IKE_NO_MM_POLICY,
            WireError::Encrypted => return codes::IKE_DECRYPT,
        };
        match (part, field) {
            (Part::Header, Field::MajorVersion | Field::MinorVersion) => {
                codes::IKE_INVALID_MAJOR_VERSION
            }
            (Part::Header, Field::Cookie) => codes::IKE_INVALID_COOKIE,
            (Part::Header, Field::MessageId) => codes::IKE_UNEXPECTED_MESSAGE_ID,
            (Part::Header, _) => codes::IKE_INVALID_HEADER,
            // Framing (a payload's length or reserved bytes) rather than its content.
            (_, Field::Length | Field::Reserved | Field::Trailing) => codes::IKE_INVALID_PAYLOAD,
            (_, Field::Doi) => codes::IKE_UNKNOWN_DOI,
            (_, Field::Situation) => codes::IKE_INVALID_SITUATION,
            (Part::Id, Field::IdType) => codes::IKE_UNSUPPORTED_ID,
            (Part::Sa, _) => codes::IKE_PROCESS_ERR_SA,
            (Part::Proposal, _) => codes::IKE_PROCESS_ERR_PROP,
            (Part::Transform | Part::Attribute, _) => codes::IKE_PROCESS_ERR_TRANS,
            (Part::KeyExchange, _) => codes::IKE_PROCESS_ERR_KE,
            (Part::Id, _) => codes::IKE_PROCESS_ERR_ID,
            (Part::Cert, _) => codes::IKE_PROCESS_ERR_CERT,
            (Part::CertRequest, _) => codes::IKE_PROCESS_ERR_CERT_REQ,
            (Part::Hash, _) => codes::IKE_PROCESS_ERR_HASH,
            (Part::Signature, _) => codes::IKE_PROCESS_ERR_SIG,
            (Part::Nonce, _) => codes::IKE_PROCESS_ERR_NONCE,
            (Part::Notify, _) => codes::IKE_PROCESS_ERR_NOTIFY,
            (Part::Delete, _) => codes::IKE_PROCESS_ERR_DELETE,
            (Part::VendorId, _) => codes::IKE_PROCESS_ERR_VENDOR,
            (Part::NatOa, _) => codes::IKE_PROCESS_ERR_NATOA,
            (Part::NatD, _) => codes::IKE_INVALID_PAYLOAD,
        }
    }

    /// The RFC 2408 §3.14.1 notify type a responder may answer with (RFC 2408 §5: only in
    /// an informational exchange, and only where policy allows answering unauthenticated
    /// input at all).
    pub fn notify_type(&self) -> u16 {
        let (part, field) = match *self {
            WireError::Malformed { part, field } => (part, field),
            WireError::InvalidPayloadType(_) => return notify::INVALID_PAYLOAD_TYPE,
            WireError::AggressiveMode => return notify::UNSUPPORTED_EXCHANGE_TYPE,
            WireError::Encrypted => return notify::PAYLOAD_MALFORMED,
        };
        match (part, field) {
            (Part::Header, Field::MajorVersion) => notify::INVALID_MAJOR_VERSION,
            (Part::Header, Field::MinorVersion) => notify::INVALID_MINOR_VERSION,
            (Part::Header, Field::Exchange) => notify::INVALID_EXCHANGE_TYPE,
            (Part::Header, Field::Flags) => notify::INVALID_FLAGS,
            (Part::Header, Field::Cookie) => notify::INVALID_COOKIE,
            (Part::Header, Field::MessageId) => notify::INVALID_MESSAGE_ID,
            (Part::Header, Field::Length) => notify::UNEQUAL_PAYLOAD_LENGTHS,
            (_, Field::Doi) => notify::DOI_NOT_SUPPORTED,
            (_, Field::Situation) => notify::SITUATION_NOT_SUPPORTED,
            (_, Field::Protocol) => notify::INVALID_PROTOCOL_ID,
            (_, Field::SpiSize) => notify::INVALID_SPI,
            (Part::Sa | Part::Proposal | Part::Transform | Part::Attribute, _) => {
                notify::BAD_PROPOSAL_SYNTAX
            }
            (Part::KeyExchange, _) => notify::INVALID_KEY_INFORMATION,
            (Part::Id, _) => notify::INVALID_ID_INFORMATION,
            (Part::Hash, _) => notify::INVALID_HASH_INFORMATION,
            (Part::Cert, _) => notify::INVALID_CERT_ENCODING,
            _ => notify::PAYLOAD_MALFORMED,
        }
    }
}
