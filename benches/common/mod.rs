//! Shared bench setup: the example gateway pair and frame builders.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;

use crossbeam_queue::ArrayQueue;
use espd::config::Config;
use espd::datapath::pipeline::{Dataplane, PipelineConfig};
use espd::datapath::{CoreStats, SaEvent};
use espd::wire::checksum;

pub struct Gw {
    pub dp: Dataplane,
    pub stats: CoreStats,
    pub events: ArrayQueue<SaEvent>,
    pub pcfg: PipelineConfig,
}

pub fn gw(name: &str) -> Gw {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let cfg = Config::load(&path).unwrap();
    Gw {
        dp: cfg.build_dataplane(1).unwrap(),
        stats: CoreStats::default(),
        events: ArrayQueue::new(1 << 16),
        pcfg: cfg.pipeline_config(),
    }
}

/// Ethernet + IPv4 + UDP frame whose IP packet is `ip_len` bytes (≥ 28), A's LAN → B's LAN.
pub fn udp_frame(ip_len: usize) -> Vec<u8> {
    udp_frame_to(ip_len, Ipv4Addr::new(198, 51, 100, 20))
}

/// [`udp_frame`] to another host `dst` on B's side.
pub fn udp_frame_to(ip_len: usize, dst: Ipv4Addr) -> Vec<u8> {
    let src = Ipv4Addr::new(192, 0, 2, 10);
    let mut f = vec![0u8; 14 + ip_len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0xa, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0xa, 2]);
    f[12..14].copy_from_slice(&[8, 0]);
    espd::wire::ipv4::Ipv4Repr {
        src,
        dst,
        protocol: 17,
        payload_len: ip_len - 20,
        tos: 0,
        ttl: 64,
        dont_frag: true,
    }
    .emit(&mut f[14..]);
    let u = &mut f[34..];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&5001u16.to_be_bytes());
    u[4..6].copy_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    for (i, b) in u[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = !checksum::fold(checksum::sum(
        checksum::pseudo_v4(src, dst, 17, (ip_len - 20) as u16),
        u,
    ));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    f
}
