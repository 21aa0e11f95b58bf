//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`): arbitrary bytes into the parsers and the inbound pipeline.
//! Each must return without panicking on any input.

use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;

use crate::config::Config;
use crate::datapath::mem::Frame;
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{Action, CoreStats, Pipeline, SaEvent};
use crate::wire::{esp, ethernet, ipv4, ipv6, udp};

/// Every packet view over `data`.
pub fn wire(data: &[u8]) {
    let _ = ethernet::ethertype(data);
    if let Ok(p) = ipv4::Ipv4Packet::new_checked(data) {
        let _ = (
            p.src(),
            p.dst(),
            p.payload().len(),
            p.verify_checksum(),
            p.is_fragment(),
        );
    }
    if let Ok(p) = ipv6::Ipv6Packet::new_checked(data) {
        let _ = ipv6::upper_layer(data, p.total_len());
    }
    let _ = udp::parse(data);
    if let Ok(p) = esp::EspPacket::new_checked(data) {
        let _ = (p.spi(), p.seq(), p.iv(), p.ciphertext_len());
    }
    let _ = crate::pcap::read(data);
}

struct Gw {
    dp: Dataplane,
    cfg: crate::datapath::PipelineConfig,
}

fn gateway() -> &'static Gw {
    static GW: OnceLock<Gw> = OnceLock::new();
    GW.get_or_init(|| {
        let text = include_str!("../examples/gw-b.toml");
        let cfg = Config::parse(std::path::Path::new("gw-b.toml"), text).expect("example config");
        Gw {
            dp: cfg.build_dataplane(1).expect("example dataplane"),
            cfg: cfg.pipeline_config(),
        }
    })
}

/// `data` as a frame arriving on the cipher side of the example gateway B (and, mirrored, on
/// its plain side). Returns the inbound action.
pub fn inbound(data: &[u8]) -> Action {
    let gw = gateway();
    let stats = CoreStats::default();
    let events: ArrayQueue<SaEvent> = ArrayQueue::new(16);
    let mut p = Pipeline::new(&gw.dp, 0, &stats, &events, gw.cfg);
    let mut f = [Frame::from_packet(data)];
    let mut a = [Action::Punt];
    p.inbound(&mut f, 1, &mut a);
    let mut g = [Frame::from_packet(data)];
    let mut b = [Action::Punt];
    p.outbound(&mut g, 1, &mut b);
    a[0]
}
