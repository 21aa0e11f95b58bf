//! The audit log of the control socket: one line (tracing target `espd::audit`) for every
//! request that can change state: who sent it (the peer's uid and pid, from SO_PEERCRED),
//! what it asked (the op and its non-secret fields: tunnel, SPI, direction, index, counts)
//! and the result (ok, or the error). Read-only requests (list, get, stats, subscribe) are
//! not logged: `api::Request::audited` decides, by an exhaustive match over the requests; a
//! request that does not parse is logged whatever its op. Key material never reaches the line: requests are read through [`View`],
//! which has no field for a key (serde skips the `key` members without keeping them), and
//! values that could hold anything are shown only when they have the shape of what they
//! name (an SPI is a number, names are cut short).

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// Who sent a request (SO_PEERCRED of the socket's peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: u32,
}

/// The non-secret fields of an SA in a request.
#[derive(Deserialize, Default)]
struct SaView {
    tunnel: Option<Value>,
    direction: Option<Value>,
    spi: Option<Value>,
}

/// What the audit line shows of a request: no field can hold a key.
#[derive(Deserialize)]
struct View {
    op: String,
    tunnel: Option<Value>,
    name: Option<Value>,
    spi: Option<Value>,
    direction: Option<Value>,
    index: Option<Value>,
    sa: Option<SaView>,
    outbound: Option<SaView>,
    inbound: Option<SaView>,
    retire_inbound: Option<Value>,
    sas: Option<Vec<IgnoredAny>>,
    policies: Option<Vec<IgnoredAny>>,
    src: Option<Value>,
    dst: Option<Value>,
    action: Option<Value>,
    icookie: Option<Value>,
    rcookie: Option<Value>,
    peer: Option<Value>,
}

/// Just the op, for a request whose other fields do not have the expected shape.
#[derive(Deserialize)]
struct OpOnly {
    op: String,
}

/// What to log about one request; `None` for read-only (and unreadable) requests.
pub struct Audit {
    what: String,
}

/// Longest name shown (tunnel names, addresses); longer values are cut.
const MAX_SHOWN: usize = 64;

/// A short, quoted rendering of a name-like value.
fn name(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let cut: String = s.chars().take(MAX_SHOWN).collect();
            format!("{cut:?}")
        }
        Value::Number(n) => n.to_string(),
        _ => "(invalid)".into(),
    }
}

/// An SPI, only if it looks like one (a number, or up to 8 hex digits after `0x`).
fn spi(v: &Value) -> String {
    match v {
        Value::Number(n) if n.as_u64().is_some_and(|x| x <= u32::MAX as u64) => {
            format!("{:#010x}", n.as_u64().unwrap_or(0))
        }
        Value::String(s) => {
            let t = s.trim();
            let ok = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => {
                    !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit())
                }
                None => !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()),
            };
            if ok {
                t.to_string()
            } else {
                "(invalid)".into()
            }
        }
        _ => "(invalid)".into(),
    }
}

fn put(out: &mut String, k: &str, v: String) {
    let _ = write!(out, " {k}={v}");
}

fn put_sa(out: &mut String, prefix: &str, s: &SaView) {
    if let Some(t) = &s.tunnel {
        put(out, &format!("{prefix}tunnel"), name(t));
    }
    if let Some(d) = &s.direction {
        put(out, &format!("{prefix}direction"), name(d));
    }
    if let Some(x) = &s.spi {
        put(out, &format!("{prefix}spi"), spi(x));
    }
}

impl Audit {
    /// Reads what the audit line needs from a request line; `None` when it has no `op`.
    /// Whether the request is audited at all is `api::Request::audited`'s call.
    pub fn of(line: &str) -> Option<Audit> {
        let (op, view) = match serde_json::from_str::<View>(line) {
            Ok(v) => (v.op.clone(), Some(v)),
            Err(_) => (serde_json::from_str::<OpOnly>(line).ok()?.op, None),
        };
        let mut what = format!("op={}", name(&Value::String(op)));
        if let Some(v) = view {
            for (k, x) in [
                ("tunnel", &v.tunnel),
                ("name", &v.name),
                ("direction", &v.direction),
                ("index", &v.index),
                ("src", &v.src),
                ("dst", &v.dst),
                ("action", &v.action),
                ("icookie", &v.icookie),
                ("rcookie", &v.rcookie),
                ("peer", &v.peer),
            ] {
                if let Some(x) = x {
                    put(&mut what, k, name(x));
                }
            }
            if let Some(x) = &v.spi {
                put(&mut what, "spi", spi(x));
            }
            if let Some(s) = &v.sa {
                put_sa(&mut what, "sa.", s);
            }
            if let Some(s) = &v.outbound {
                put_sa(&mut what, "outbound.", s);
            }
            if let Some(s) = &v.inbound {
                put_sa(&mut what, "inbound.", s);
            }
            if let Some(x) = &v.retire_inbound {
                put(&mut what, "retire_inbound", spi(x));
            }
            if let Some(s) = &v.sas {
                put(&mut what, "sas", s.len().to_string());
            }
            if let Some(p) = &v.policies {
                put(&mut what, "policies", p.len().to_string());
            }
        }
        Some(Audit { what })
    }

    /// The audit line for this request from `peer` with `result` (`Err`: the error text).
    pub fn line(&self, peer: Option<Peer>, result: &Result<(), String>) -> String {
        let who = match peer {
            Some(p) => format!("uid={} pid={}", p.uid, p.pid),
            None => "uid=- pid=- (in process)".into(),
        };
        let result = match result {
            Ok(()) => "result=ok".to_string(),
            Err(e) => format!("result=error error={e:?}"),
        };
        format!("{who} {} {result}", self.what)
    }

    /// Logs the audit line (target `espd::audit`).
    pub fn log(&self, peer: Option<Peer>, result: &Result<(), String>) {
        tracing::info!(target: "espd::audit", "{}", self.line(peer, result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff0a0b0c0d";
    const KEY2: &str = "ffeeddccbbaa99887766554433221100f0e0d0c0";

    #[test]
    fn read_only_requests_are_not_audited() {
        use crate::control::api::audited;
        for r in [
            r#"{"op":"sa_get","spi":"0x100","direction":"in"}"#,
            r#"{"op":"sa_list"}"#,
            r#"{"op":"policy_list"}"#,
            r#"{"op":"tunnel_list"}"#,
            r#"{"op":"mm_list"}"#,
            r#"{"op":"ike_list"}"#,
            r#"{"op":"stats"}"#,
            r#"{"op":"subscribe"}"#,
        ] {
            assert!(!audited(r), "{r}");
        }
        for r in [
            r#"{"op":"sa_delete","spi":"0x100","direction":"in"}"#,
            r#"{"op":"load"}"#,
            r#"{"op":"sa_export"}"#,
            r#"{"op":"allocate_spi"}"#,
            r#"{"op":"capture","seconds":1}"#,
            // Does not parse: audited whatever its op says.
            r#"{"op":"sa_list","limit":"all"}"#,
            r#"{"op":"no_such_op"}"#,
        ] {
            assert!(audited(r), "{r}");
        }
        assert!(Audit::of("not json").is_none());
    }

    #[test]
    fn audit_lines_name_the_op_and_never_a_key() {
        let peer = Some(Peer { uid: 0, pid: 4242 });
        let reqs = [
            format!(
                "{{\"op\":\"sa_add\",\"sa\":{{\"tunnel\":\"to-b\",\"direction\":\"out\",\"spi\":\"0x1001\",\"key\":\"{KEY}\"}}}}"
            ),
            format!(
                "{{\"op\":\"rekey\",\"tunnel\":\"to-b\",\"outbound\":{{\"tunnel\":\"to-b\",\"direction\":\"out\",\"spi\":4098,\"key\":\"{KEY}\"}},\"inbound\":{{\"tunnel\":\"to-b\",\"direction\":\"in\",\"spi\":\"0x2002\",\"key\":\"{KEY2}\"}},\"retire_inbound\":\"0x2001\"}}"
            ),
            format!(
                "{{\"op\":\"sa_add_batch\",\"sas\":[{{\"tunnel\":\"to-b\",\"direction\":\"in\",\"spi\":300,\"key\":\"{KEY}\"}},{{\"key\":\"{KEY2}\"}}]}}"
            ),
            // Keys in the wrong places: shown as (invalid), not quoted.
            format!("{{\"op\":\"sa_delete\",\"spi\":\"{KEY}\",\"direction\":\"in\"}}"),
            format!("{{\"op\":\"sa_update\",\"sa\":{{\"spi\":\"0x{KEY2}\"}},\"key\":\"{KEY}\"}}"),
            // A request whose fields have unexpected shapes: the op alone.
            format!("{{\"op\":\"sa_add\",\"sa\":\"{KEY}\"}}"),
        ];
        for r in &reqs {
            let a = Audit::of(r).expect("audited");
            for result in [Ok(()), Err("key: expected 40 hex digits".to_string())] {
                let l = a.line(peer, &result);
                assert!(l.starts_with("uid=0 pid=4242 op="), "{l}");
                for k in [KEY, KEY2, &KEY[..16], &KEY2[..16]] {
                    assert!(!l.contains(k), "key bytes in the audit line: {l}");
                }
            }
        }
        let l = Audit::of(&reqs[1]).unwrap().line(peer, &Ok(()));
        assert_eq!(
            l,
            "uid=0 pid=4242 op=\"rekey\" tunnel=\"to-b\" outbound.tunnel=\"to-b\" outbound.direction=\"out\" outbound.spi=0x00001002 inbound.tunnel=\"to-b\" inbound.direction=\"in\" inbound.spi=0x2002 retire_inbound=0x2001 result=ok"
        );
        let l = Audit::of(&reqs[2])
            .unwrap()
            .line(None, &Err("sas[1]: spi".into()));
        assert_eq!(
            l,
            "uid=- pid=- (in process) op=\"sa_add_batch\" sas=2 result=error error=\"sas[1]: spi\""
        );
        assert!(
            Audit::of(&reqs[3])
                .unwrap()
                .line(peer, &Ok(()))
                .contains("spi=(invalid)")
        );
        assert_eq!(
            Audit::of(&reqs[5]).unwrap().line(peer, &Ok(())),
            "uid=0 pid=4242 op=\"sa_add\" result=ok"
        );
    }
}
