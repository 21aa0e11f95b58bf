//! The built-in IKEv1 (RFC 2409 over ISAKMP, RFC 2408): [`wire`] holds the ISAKMP message
//! parser and builder (pure, sans-I/O; nothing in it panics on any input).

pub mod wire;
