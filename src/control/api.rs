//! The control protocol (JSON lines, PROTOCOL.md) as a thin adapter over the typed control API:
//! parse a request, call the `Control` method, serialise its result. The socket I/O is in
//! `socket.rs`; nothing here touches the tables directly.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::events::{MmCause, spi_str};
use super::types::{MainMode, MainModeInfo, Rekey, SaInfo};
use super::{Control, ControlError, Result, dir, dir_name, mm};
use crate::config::{NewSa, PolicySpec, SaSpec, SpiValue, TunnelSpec};
use crate::sa::Direction;

pub use super::socket::{ApiMsg, Client, Line, LineReader, MAX_LINE, serve};

/// A control request (one JSON object per line, `"op"` names it). Unknown fields are errors.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // parsed once per request, never stored
pub enum Request {
    AllocateSpi {},
    SaAdd {
        sa: SaSpec,
    },
    SaAddBatch {
        sas: Vec<SaSpec>,
    },
    SaUpdate {
        sa: SaSpec,
    },
    SaDelete {
        spi: SpiValue,
        direction: String,
    },
    SaGet {
        spi: SpiValue,
        direction: String,
    },
    SaList {
        direction: Option<String>,
        limit: Option<usize>,
    },
    SaFlush {
        direction: Option<String>,
    },
    TunnelAdd {
        name: String,
        local: String,
        remote: String,
        mode: Option<String>,
        encap: Option<String>,
        mtu: Option<u16>,
    },
    TunnelDelete {
        name: String,
    },
    PolicyAdd(PolicyItem),
    /// Several policies appended with one SPD rebuild (all or none).
    PolicyAddBatch {
        policies: Vec<PolicyItem>,
    },
    PolicyDelete {
        index: usize,
    },
    PolicyList {},
    /// The tunnels: configuration, SAs and counters summed over their SAs.
    TunnelList {},
    /// Make-before-break: install `inbound` (if given), make `outbound` the tunnel's SA, and
    /// retire `retire_inbound` after the grace period.
    Rekey {
        tunnel: String,
        outbound: SaSpec,
        inbound: Option<SaSpec>,
        retire_inbound: Option<SpiValue>,
        #[serde(default, deserialize_with = "crate::config::deserialize_grace_ms")]
        grace_ms: Option<u64>,
    },
    MmAdd {
        icookie: String,
        rcookie: String,
        peer: String,
        lifetime_s: u64,
        lifetime_kb: Option<u64>,
        #[serde(default)]
        children: Vec<mm::ChildSpec>,
    },
    MmDelete {
        icookie: String,
        rcookie: String,
    },
    MmList {},
    /// The built-in IKE's peers, main modes and children.
    IkeList {},
    IkeInitiate {
        tunnel: String,
    },
    IkeTerminate {
        tunnel: String,
    },
    Stats {},
    Subscribe {},
    /// Re-read the config file (`path`, default: the file last loaded) and apply what changed
    /// (see `reload.rs`); refused as a whole when something needs a restart.
    Load {
        path: Option<String>,
    },
    /// Every SA with its key, for Wireshark (the one request whose answer holds keys).
    SaExport {},
    /// Copies of what the workers receive and send for `seconds`, as pcapng (base64); answered
    /// when the capture ends, by a thread of its own.
    Capture {
        seconds: f64,
        snaplen: Option<u32>,
        max_bytes: Option<u64>,
    },
}

impl Request {
    /// Whether the request can change state (or hands out keys): those leave an audit line.
    /// An exhaustive match, so a new request must be classified here to compile.
    pub fn audited(&self) -> bool {
        match self {
            Request::SaGet { .. }
            | Request::SaList { .. }
            | Request::PolicyList {}
            | Request::TunnelList {}
            | Request::MmList {}
            | Request::IkeList {}
            | Request::Stats {}
            | Request::Subscribe {} => false,
            Request::AllocateSpi {}
            | Request::SaAdd { .. }
            | Request::SaAddBatch { .. }
            | Request::SaUpdate { .. }
            | Request::SaDelete { .. }
            | Request::SaFlush { .. }
            | Request::TunnelAdd { .. }
            | Request::TunnelDelete { .. }
            | Request::PolicyAdd(_)
            | Request::PolicyAddBatch { .. }
            | Request::PolicyDelete { .. }
            | Request::Rekey { .. }
            | Request::MmAdd { .. }
            | Request::MmDelete { .. }
            | Request::IkeInitiate { .. }
            | Request::IkeTerminate { .. }
            | Request::Load { .. }
            | Request::SaExport {}
            | Request::Capture { .. } => true,
        }
    }
}

/// Whether a request line leaves an audit line: as [`Request::audited`] says, and always when
/// it does not parse (its op cannot be trusted to be read-only).
pub fn audited(line: &str) -> bool {
    serde_json::from_str::<Request>(line).map_or(true, |r| r.audited())
}

/// One policy (`policy_add`, an element of `policy_add_batch`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyItem {
    src: String,
    dst: String,
    protocol: Option<u8>,
    src_ports: Option<String>,
    dst_ports: Option<String>,
    action: String,
    tunnel: Option<String>,
}

impl PolicyItem {
    fn parse(&self) -> Result<crate::config::NewPolicy> {
        Ok(PolicySpec {
            src: &self.src,
            dst: &self.dst,
            protocol: self.protocol,
            src_ports: self.src_ports.as_deref(),
            dst_ports: self.dst_ports.as_deref(),
            action: &self.action,
            tunnel: self.tunnel.as_deref(),
        }
        .parse()?)
    }
}

/// What [`handle`] tells the socket layer.
pub enum Reply {
    /// One JSON line.
    Line(String),
    /// Start streaming events to this connection.
    Subscribe,
}

/// Serves one message from the socket's connection threads or a [`super::ControlHandle`] on
/// the control thread.
pub fn deliver(ctl: &mut Control, msg: ApiMsg, now: u64) {
    match msg {
        ApiMsg::Request {
            line,
            reply,
            peer,
            closed,
        } => {
            // A capture answers from its own thread when it ends; audited once claimed or
            // refused, with that result.
            if let Some(started) = deferred(ctl, &line, closed) {
                if let Some(a) = super::audit::Audit::of(&line).filter(|_| audited(&line)) {
                    a.log(peer, &started.as_ref().map(|_| ()).map_err(String::clone));
                }
                return match started {
                    Ok(start) => start(reply),
                    Err(e) => {
                        let _ = reply.send(Some(Zeroizing::new(error_line(&e))));
                    }
                };
            }
            let answer = match handle_from(ctl, &line, now, peer) {
                Reply::Line(l) => Some(Zeroizing::new(l)),
                Reply::Subscribe => None,
            };
            let _ = reply.send(answer);
        }
        ApiMsg::Subscribe { tx } => ctl.subscribe(tx),
        ApiMsg::Call(f) => f(ctl, now),
    }
}

/// Handles one request line; never panics on input.
pub fn handle(ctl: &mut Control, line: &str, now: u64) -> Reply {
    handle_from(ctl, line, now, None)
}

/// Handles one request line from `peer` (`None`: in process); a request that can change
/// state leaves an audit line (`audit.rs`) with its result.
pub fn handle_from(
    ctl: &mut Control,
    line: &str,
    now: u64,
    peer: Option<super::audit::Peer>,
) -> Reply {
    let parsed = serde_json::from_str::<Request>(line);
    // Read-only requests build no audit line at all.
    let audit = match &parsed {
        Ok(r) if !r.audited() => None,
        _ => super::audit::Audit::of(line),
    };
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            if let Some(a) = &audit {
                // serde's message can quote values of the request: not in the log.
                a.log(peer, &Err("request did not parse".into()));
            }
            return Reply::Line(error_line(&format!("request: {e}")));
        }
    };
    if let Request::Subscribe {} = req {
        return Reply::Subscribe;
    }
    if let Request::SaExport {} = req {
        if let Some(a) = &audit {
            a.log(peer, &Ok(()));
        }
        // The line's buffer moves into the reply without a copy; `deliver` hands it to the
        // socket as a `Zeroizing` again (in-process callers of `handle` own the only copy).
        let mut line = sa_export_line(ctl);
        return Reply::Line(std::mem::take(&mut *line));
    }
    if let Request::Capture { .. } = req {
        return Reply::Line(error_line(
            "capture: answered over the control socket of a running daemon only",
        ));
    }
    let result = dispatch(ctl, req, now);
    if let Some(a) = &audit {
        a.log(
            peer,
            &result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
    }
    Reply::Line(match result {
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.insert("ok".into(), Value::Bool(true));
            }
            v.to_string()
        }
        Err(e) => error_line(&e.to_string()),
    })
}

fn error_line(e: &str) -> String {
    json!({ "ok": false, "error": e }).to_string()
}

fn sa(spec: &SaSpec) -> Result<NewSa> {
    Ok(spec.to_new_sa()?)
}

fn spi(v: SpiValue, field: &str) -> Result<u32> {
    v.get().map_err(|e| ControlError::invalid(field, e))
}

fn direction(s: &str) -> Result<Direction> {
    dir(s).map_err(|e| {
        let (f, r) = e.split_once(": ").unwrap_or(("direction", &e));
        ControlError::invalid(f, r)
    })
}

fn cookie(field: &str, s: &str) -> Result<u64> {
    let t = s.trim_start_matches("0x");
    if t.is_empty() || t.len() > 16 {
        return Err(ControlError::invalid(
            field,
            format!("expected 1 to 16 hex digits (8 bytes), got {}", t.len()),
        ));
    }
    u64::from_str_radix(t, 16)
        .map_err(|_| ControlError::invalid(field, format!("`{s}` is not hexadecimal")))
}

fn dispatch(ctl: &mut Control, req: Request, now: u64) -> Result<Value> {
    Ok(match req {
        Request::AllocateSpi {} => json!({ "spi": spi_str(ctl.allocate_spi()?) }),
        Request::SaAdd { sa: s } => json!({ "spi": spi_str(ctl.install_sa(&sa(&s)?, now)?) }),
        Request::SaAddBatch { sas } => {
            json!({ "installed": ctl.install_sas(sas.iter().map(sa), now)? })
        }
        Request::SaUpdate { sa: s } => json!({ "spi": spi_str(ctl.update_sa(&sa(&s)?, now)?) }),
        Request::SaDelete {
            spi: s,
            direction: d,
        } => {
            ctl.remove_sa(spi(s, "spi")?, direction(&d)?, now)?;
            json!({})
        }
        Request::SaGet {
            spi: s,
            direction: d,
        } => sa_json(&ctl.sa(spi(s, "spi")?, direction(&d)?, now)?),
        Request::SaList {
            direction: d,
            limit,
        } => {
            let d = d.as_deref().map(direction).transpose()?;
            let list = ctl.sa_list(d, limit.unwrap_or(1000), now);
            json!({ "total": list.total, "sas": list.sas.iter().map(sa_json).collect::<Vec<_>>() })
        }
        Request::SaFlush { direction: d } => {
            let d = d.as_deref().map(direction).transpose()?;
            json!({ "removed": ctl.flush_sas(d) })
        }
        Request::TunnelAdd {
            name,
            local,
            remote,
            mode,
            encap,
            mtu,
        } => {
            let t = TunnelSpec {
                name: &name,
                local: &local,
                remote: &remote,
                mode: mode.as_deref(),
                encap: encap.as_deref(),
                udp_src_port: None,
                udp_dst_port: None,
                mtu: mtu.map(u32::from),
            }
            .parse()?;
            json!({ "index": ctl.add_tunnel(t)? })
        }
        Request::TunnelDelete { name } => {
            ctl.remove_tunnel(&name)?;
            json!({})
        }
        Request::PolicyAdd(p) => json!({ "index": ctl.add_policy(&p.parse()?)? }),
        Request::PolicyAddBatch { policies } => {
            let parsed = policies
                .iter()
                .enumerate()
                .map(|(i, p)| p.parse().map_err(|e| e.within(format!("policies[{i}]"))))
                .collect::<Result<Vec<_>>>()?;
            json!({ "first_index": ctl.add_policies(&parsed)?, "added": parsed.len() })
        }
        Request::PolicyDelete { index } => {
            ctl.remove_policy(index)?;
            json!({})
        }
        Request::PolicyList {} => {
            let list: Vec<Value> = ctl
                .policies()
                .iter()
                .map(|p| {
                    let mut v = json!({ "src": p.selector.src.to_string(), "dst": p.selector.dst.to_string(), "protocol": p.selector.protocol, "action": format!("{:?}", p.action) });
                    policy_extra(ctl, p, &mut v);
                    v
                })
                .collect();
            json!({ "policies": list })
        }
        Request::Rekey {
            tunnel,
            outbound,
            inbound,
            retire_inbound,
            grace_ms,
        } => {
            let r = Rekey {
                outbound: sa(&outbound).map_err(|e| e.within("outbound"))?,
                inbound: inbound
                    .as_ref()
                    .map(sa)
                    .transpose()
                    .map_err(|e| e.within("inbound"))?,
                retire_inbound: retire_inbound
                    .map(|s| spi(s, "retire_inbound"))
                    .transpose()?,
                tunnel,
                grace_ms,
            };
            let done = ctl.rekey(r, now)?;
            json!({ "old_spi": done.old_spi.map(spi_str), "new_spi": spi_str(done.new_spi) })
        }
        Request::MmAdd {
            icookie,
            rcookie,
            peer,
            lifetime_s,
            lifetime_kb,
            children,
        } => {
            let mm = MainMode {
                icookie: cookie("icookie", &icookie)?,
                rcookie: cookie("rcookie", &rcookie)?,
                peer: peer.parse().map_err(|_| {
                    ControlError::invalid("peer", format!("`{peer}` is not an IP address"))
                })?,
                lifetime_s,
                lifetime_kb,
                children: children
                    .into_iter()
                    .enumerate()
                    .map(|(n, c)| {
                        c.get()
                            .map_err(|e| ControlError::invalid(format!("children[{n}]"), e))
                    })
                    .collect::<Result<Vec<_>>>()?,
            };
            ctl.main_mode_up(mm, now)?;
            json!({})
        }
        Request::MmDelete { icookie, rcookie } => {
            let (i, r) = (cookie("icookie", &icookie)?, cookie("rcookie", &rcookie)?);
            ctl.main_mode_delete(i, r, MmCause::PeerDelete, now)?;
            json!({})
        }
        Request::MmList {} => {
            let list: Vec<Value> = ctl.main_modes(now).iter().map(mm_json).collect();
            json!({ "main_modes": list })
        }
        Request::IkeList {} => json!({ "peers": ctl.ike_status(), "counters": ctl.ike_counters() }),
        Request::IkeInitiate { tunnel } => {
            ctl.ike_command(&tunnel, true)?;
            json!({})
        }
        Request::IkeTerminate { tunnel } => {
            ctl.ike_command(&tunnel, false)?;
            json!({})
        }
        Request::TunnelList {} => json!({ "tunnels": ctl.tunnel_list() }),
        Request::Stats {} => {
            let s = ctl.stats();
            let mut v = json!({ "sas": s.sas, "tunnels": s.tunnels, "policies": s.policies, "main_modes": s.main_modes, "control": s.control });
            stats_extra(&s, &mut v);
            v
        }
        Request::Load { path } => {
            serde_json::to_value(ctl.reload(path.as_deref().map(std::path::Path::new), now)?)
                .unwrap_or_default()
        }
        // Answered by `handle` and `deliver`.
        Request::Subscribe {} | Request::SaExport {} | Request::Capture { .. } => json!({}),
    })
}

/// A request answered later, from another thread, with the reply channel it is given.
type Deferred = Box<dyn FnOnce(std::sync::mpsc::Sender<Option<Zeroizing<String>>>) + Send>;

/// `capture` requests: claims the capture now (a second one is refused at once) and returns
/// what starts its thread, or why the request is refused. `None` for every other line (and
/// for a capture request that does not parse: `handle` answers it). Cheap for other requests:
/// their lines never hold the name. `closed`: set when the client hangs up (ends the capture).
fn deferred(
    ctl: &mut Control,
    line: &str,
    closed: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Option<std::result::Result<Deferred, String>> {
    if !line.contains("\"capture\"") {
        return None;
    }
    let Ok(Request::Capture {
        seconds,
        snaplen,
        max_bytes,
    }) = serde_json::from_str::<Request>(line)
    else {
        return None;
    };
    use crate::datapath::capture::{Capture, Params};
    let p = match Params::new(seconds, snaplen, max_bytes) {
        Ok(p) => p,
        Err((f, r)) => return Some(Err(ControlError::invalid(f, r).to_string())),
    };
    let Some(cap) = ctl.capture() else {
        return Some(Err("capture: no workers run in this process".into()));
    };
    let Some(mut claim) = cap.claim() else {
        return Some(Err("capture: another capture is running".into()));
    };
    if let Some(c) = closed {
        claim = claim.ends_when(c);
    }
    Some(Ok(Box::new(move |reply| {
        let r2 = reply.clone();
        let spawned = std::thread::Builder::new()
            .name("espd-capture".into())
            .spawn(move || {
                let line = match Capture::run(claim, &p) {
                    Ok(o) => capture_line(o, &p),
                    Err(e) => error_line(&format!("capture: {e}")),
                };
                let _ = reply.send(Some(Zeroizing::new(line)));
            });
        if let Err(e) = spawned {
            let _ = r2.send(Some(Zeroizing::new(error_line(&format!(
                "capture: no thread: {e}"
            )))));
        }
    })))
}

/// The `capture` answer: the counts, then the file's base64 written straight into the one
/// answer string (sized once; no other copy of the text), each chunk of the file freed once
/// encoded.
fn capture_line(
    o: crate::datapath::capture::Outcome,
    p: &crate::datapath::capture::Params,
) -> String {
    use crate::datapath::capture::Point;
    let by: Map<String, Value> = Point::ALL
        .iter()
        .map(|pt| {
            let side = match pt {
                Point::PlainRx | Point::PlainTx => "plain",
                Point::CipherRx | Point::CipherTx => "cipher",
            };
            (
                format!("{side}_{}", pt.way()),
                json!(o.frames[*pt as usize]),
            )
        })
        .collect();
    let head = json!({
        "ok": true,
        "seconds": p.duration.as_secs_f64(),
        "snaplen": p.snaplen,
        "frames": o.frames.iter().sum::<u64>(),
        "by_point": by,
        "dropped_ring_full": o.dropped_ring_full,
        "dropped_size_limit": o.dropped_size_limit,
        "dropped_late": o.dropped_late,
        "bytes": o.pcapng.len(),
    })
    .to_string();
    let Some(head) = head.strip_suffix('}') else {
        return error_line("capture: no answer");
    };
    let mut line = Vec::with_capacity(head.len() + o.pcapng.base64_len() + 16);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(b",\"pcapng\":\"");
    o.pcapng.base64_into(&mut line);
    line.extend_from_slice(b"\"}");
    // JSON text and base64: UTF-8, checked without a copy.
    String::from_utf8(line).unwrap_or_else(|_| error_line("capture: answer not UTF-8"))
}

/// The `sa_export` answer, serialised straight from the wiped key strings (no JSON tree holds
/// a copy of the keys) into a buffer that is wiped when it grows and when dropped: the answer
/// line itself is the one copy left, and it wipes itself.
fn sa_export_line(ctl: &Control) -> Zeroizing<String> {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        spi: String,
        direction: &'static str,
        tunnel: Option<&'a str>,
        src: Option<String>,
        dst: Option<String>,
        encap: Option<String>,
        esn: bool,
        cipher: String,
        key: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        ok: bool,
        sas: Vec<Item<'a>>,
    }
    let sas = ctl.sa_export();
    let a = Answer {
        ok: true,
        sas: sas
            .iter()
            .map(|s| Item {
                spi: spi_str(s.spi),
                direction: dir_name(s.direction),
                tunnel: s.tunnel.as_deref(),
                src: s.src.map(|a| a.to_string()),
                dst: s.dst.map(|a| a.to_string()),
                encap: s
                    .encap
                    .map(|e| format!("udp {}:{}", e.src_port, e.dst_port)),
                esn: s.esn,
                cipher: format!("aes-gcm-{}", s.key_bits),
                key: &s.key_hex,
            })
            .collect(),
    };
    // Sized for the usual answer (an SA serialises to about 300 bytes), so it rarely grows;
    // when it does, the old buffer is wiped.
    let mut out = super::socket::WipingBuf::with_capacity(64 + 400 * a.sas.len());
    if let Err(e) = serde_json::to_writer(&mut out, &a) {
        return Zeroizing::new(error_line(&format!("sa_export: {e}")));
    }
    out.into_string()
        .unwrap_or_else(|| Zeroizing::new(error_line("sa_export: the answer is not UTF-8")))
}

fn sa_json(s: &SaInfo) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("spi", json!(spi_str(s.spi)));
    put("direction", json!(dir_name(s.direction)));
    put("tunnel", json!(s.tunnel));
    put("mode", json!(format!("{:?}", s.mode).to_lowercase()));
    put("cipher", json!(format!("aes-gcm-{}", s.key_bits)));
    put("backend", json!(s.backend.to_string()));
    put("esn", json!(s.esn));
    put("packets", json!(s.packets));
    put("bytes", json!(s.bytes));
    put("last_seq", json!(s.last_seq));
    put("lifetime", json!(s.lifetime));
    put("consumed", json!(s.consumed));
    put("expired", json!(s.expired));
    put("age_s", json!(s.age_s));
    put("state", json!(s.state));
    put("replay_failures", json!(s.replay_failures));
    put("integrity_failures", json!(s.integrity_failures));
    put("lifetime_left_s", json!(s.lifetime_left_s));
    Value::Object(m)
}

/// `stats`'s fields for operators: uptime, workers, SAs by direction, IKE peers up and the
/// workers' counters.
fn stats_extra(s: &super::Stats, v: &mut Value) {
    if let Value::Object(m) = v {
        m.insert("uptime_s".into(), json!(s.uptime_s));
        m.insert("workers".into(), json!(s.workers));
        m.insert("sas_inbound".into(), json!(s.sas_inbound));
        m.insert("sas_outbound".into(), json!(s.sas_outbound));
        m.insert("ike_peers_up".into(), json!(s.ike_peers_up));
        m.insert("dataplane".into(), json!(s.dataplane));
    }
}

/// `policy_list`'s fields beyond the selector: index, ports, and the tunnel's name.
fn policy_extra(ctl: &Control, p: &crate::sa::policy::Policy, v: &mut Value) {
    let ports = |r: crate::sa::policy::PortRange| match (r.lo, r.hi) {
        (0, 65535) => Value::Null,
        (a, b) if a == b => json!(a.to_string()),
        (a, b) => json!(format!("{a}-{b}")),
    };
    if let Value::Object(m) = v {
        m.insert("src_ports".into(), ports(p.selector.src_ports));
        m.insert("dst_ports".into(), ports(p.selector.dst_ports));
        let tunnel = match p.action {
            crate::sa::PolicyAction::Protect(t) => ctl
                .tunnels()
                .iter()
                .find(|x| x.index == t)
                .map(|x| x.name.clone()),
            _ => None,
        };
        m.insert("tunnel".into(), json!(tunnel));
    }
}

fn mm_json(i: &MainModeInfo) -> Value {
    let r = &i.record;
    json!({
        "icookie": format!("{:016x}", r.icookie), "rcookie": format!("{:016x}", r.rcookie), "peer": r.peer,
        "lifetime_s": r.lifetime_s, "lifetime_kb": r.lifetime_kb,
        "expires_in_s": i.expires_in_s,
        "children": r.children,
    })
}
