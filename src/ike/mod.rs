//! The built-in IKE (IKEv1 now: main mode, quick mode, informational; IKEv2 next). Sans-I/O
//! like quinn-proto: `wire` parses and builds ISAKMP messages, `crypto` holds the key
//! schedule, the state machine turns bytes and time into bytes and control actions, and a thin
//! UDP loop drives it and calls the control thread's typed API.

pub mod config;
pub mod crypto;
pub mod driver;
pub mod engine;
pub mod types;
pub mod wire;
