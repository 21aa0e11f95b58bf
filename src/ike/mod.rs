//! The built-in IKEv1 (RFC 2409): ISAKMP wire format, the key schedule and its primitives, and
//! (to come) a sans-I/O state machine per exchange driven by a thin UDP loop.
//!
//! Pure modules: nothing here does I/O, reads a clock or panics on peer input.

pub mod crypto;
