//! The rig's keyer: plays the IKE daemon. It generates fresh keys, programs both gateways over
//! their control sockets (make-before-break), registers main-mode records with short lifetimes
//! and reports main-mode deletes, so the demo and the tests see rekeys and 13885 while traffic
//! flows.
//!
//! A rekey of the tunnel between A and B:
//! 1. each gateway allocates the SPI of its new inbound SA;
//! 2. both install their new inbound SA (nothing uses it yet);
//! 3. both swap their outbound SA to the new one and schedule the old inbound SA's retirement
//!    after the grace period, which covers packets still in flight on the old SAs.

use std::path::Path;

use serde_json::{Value, json};

use crate::control::api::Client;

pub struct Keyer {
    a: Client,
    b: Client,
    tunnel: String,
    /// Current inbound SPIs: of A (B→A traffic) and of B (A→B traffic).
    in_a: Option<String>,
    in_b: Option<String>,
    pub rekeys: u64,
    mm_serial: u64,
}

fn key() -> String {
    let mut b = [0u8; 20];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ok(v: Value, what: &str) -> anyhow::Result<Value> {
    if v["ok"] != true {
        anyhow::bail!("{what}: {}", v["error"]);
    }
    Ok(v)
}

impl Keyer {
    /// Connects to both gateways. `in_a`/`in_b`: the inbound SPIs installed now (config SAs).
    pub fn connect(
        a: &Path,
        b: &Path,
        tunnel: &str,
        in_a: Option<u32>,
        in_b: Option<u32>,
    ) -> anyhow::Result<Keyer> {
        Ok(Keyer {
            a: Client::connect(a).map_err(|e| anyhow::anyhow!("{}: {e}", a.display()))?,
            b: Client::connect(b).map_err(|e| anyhow::anyhow!("{}: {e}", b.display()))?,
            tunnel: tunnel.into(),
            in_a: in_a.map(|s| format!("{s:#x}")),
            in_b: in_b.map(|s| format!("{s:#x}")),
            rekeys: 0,
            mm_serial: 0,
        })
    }

    /// Connects to the rig's two gateways (control sockets `a` and `b`), whose tunnel `peer`
    /// starts with the SAs of the generated configs.
    pub fn for_rig(a: &Path, b: &Path) -> anyhow::Result<Keyer> {
        Self::connect(a, b, "peer", Some(super::SPI_BA), Some(super::SPI_AB))
    }

    /// One make-before-break rekey of both directions. Returns the new (A→B, B→A) SPIs.
    pub fn rekey(&mut self) -> anyhow::Result<(String, String)> {
        let spi_b = ok(
            self.b.call(&json!({"op": "allocate_spi"}))?,
            "gw-b allocate_spi",
        )?["spi"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let spi_a = ok(
            self.a.call(&json!({"op": "allocate_spi"}))?,
            "gw-a allocate_spi",
        )?["spi"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (k_ab, k_ba) = (key(), key());
        let t = self.tunnel.clone();
        ok(self.b.call(&json!({"op": "sa_add", "sa": {"tunnel": t, "direction": "in", "spi": spi_b, "key": k_ab}}))?, "gw-b sa_add")?;
        ok(self.a.call(&json!({"op": "sa_add", "sa": {"tunnel": t, "direction": "in", "spi": spi_a, "key": k_ba}}))?, "gw-a sa_add")?;
        ok(
            self.a.call(&json!({"op": "rekey", "tunnel": t, "outbound": {"tunnel": t, "direction": "out", "spi": spi_b, "key": k_ab}, "retire_inbound": self.in_a}))?,
            "gw-a rekey",
        )?;
        ok(
            self.b.call(&json!({"op": "rekey", "tunnel": t, "outbound": {"tunnel": t, "direction": "out", "spi": spi_a, "key": k_ba}, "retire_inbound": self.in_b}))?,
            "gw-b rekey",
        )?;
        self.in_a = Some(spi_a.clone());
        self.in_b = Some(spi_b.clone());
        self.rekeys += 1;
        Ok((spi_b, spi_a))
    }

    /// Registers one main mode on both gateways (same cookies, each sees the other as peer)
    /// with the current child SAs. Returns the cookies.
    pub fn main_mode(&mut self, lifetime_s: u64) -> anyhow::Result<(String, String)> {
        self.mm_serial += 1;
        let mut c = [0u8; 16];
        aws_lc_rs::rand::fill(&mut c).expect("system randomness");
        let ic: String = c[..8].iter().map(|x| format!("{x:02x}")).collect();
        let rc: String = c[8..].iter().map(|x| format!("{x:02x}")).collect();
        // Each side's children: its inbound SA and its outbound SA (the peer's inbound).
        let kids = |inb: &Option<String>, out: &Option<String>| -> Vec<serde_json::Value> {
            let inb = inb.iter().map(|s| json!({"spi": s, "direction": "in"}));
            inb.chain(out.iter().map(|s| json!({"spi": s, "direction": "out"})))
                .collect()
        };
        let (kids_a, kids_b) = (kids(&self.in_a, &self.in_b), kids(&self.in_b, &self.in_a));
        for (cl, peer, who, children) in [
            (&mut self.a, "203.0.113.2", "gw-a", kids_a),
            (&mut self.b, "203.0.113.1", "gw-b", kids_b),
        ] {
            ok(cl.call(&json!({"op": "mm_add", "icookie": ic, "rcookie": rc, "peer": peer, "lifetime_s": lifetime_s, "children": children}))?, who)?;
        }
        Ok((ic, rc))
    }

    /// Reports on both gateways that the peer deleted the main mode (ISAKMP Delete).
    pub fn main_mode_delete(&mut self, ic: &str, rc: &str) -> anyhow::Result<()> {
        for (cl, who) in [(&mut self.a, "gw-a"), (&mut self.b, "gw-b")] {
            ok(
                cl.call(&json!({"op": "mm_delete", "icookie": ic, "rcookie": rc}))?,
                who,
            )?;
        }
        Ok(())
    }
}
