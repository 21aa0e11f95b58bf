//! Review tests (h-review) of the control thread: reloads (half-applied, refused live
//! settings, IKE proxy IDs, tunnel totals) and the audit line of `capture`.

use std::path::Path;
use std::sync::Arc;

use espd::config::Config;
use espd::control::Control;

const BASE: &str = r#"
[dataplane]
workers = 1
[interfaces.plain]
name = "lan0"
addresses = ["192.0.2.1"]
next_hop_mac = "02:00:00:00:00:02"
[interfaces.cipher]
name = "wan0"
addresses = ["203.0.113.1"]
next_hop_mac = "02:00:00:00:00:03"
[[tunnels]]
name = "to-b"
local = "203.0.113.1"
remote = "203.0.113.2"
[[policies]]
src = "192.0.2.0/24"
dst = "198.51.100.0/24"
action = "protect"
tunnel = "to-b"
[[sas]]
tunnel = "to-b"
direction = "in"
spi = 0xb001
key = "ffeeddccbbaa99887766554433221100a0b0c0d0"
[control]
socket = ""
"#;

const TUNNEL_C: &str =
    "[[tunnels]]\nname = \"to-c\"\nlocal = \"203.0.113.1\"\nremote = \"203.0.113.3\"\n";

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("t.toml"), text).unwrap()
}

/// The file moves the inbound key to a new SPI (0xb001 -> 0xb002) and adds a tunnel.
/// `check` allows the key because its old SA is being removed, but `apply` installs the new SA
/// (step 5) before it removes the old one (step 6): `install` refuses the key as in use, after
/// the tunnel was already added. Expected: either the reload succeeds, or nothing changed.
#[test]
fn a_reload_that_fails_while_applying_changes_nothing() {
    let c0 = cfg(BASE);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp);
    let new = BASE
        .replace("0xb001", "0xb002")
        .replace("[[policies]]", &format!("{TUNNEL_C}[[policies]]"));
    let tunnels_before = ctl.tunnels().len();
    match ctl.apply_config(cfg(&new), 10) {
        Ok(_) => {}
        Err(e) => {
            assert_eq!(
                ctl.tunnels().len(),
                tunnels_before,
                "refused ({e}) yet tunnel `to-c` was added: half-applied"
            );
        }
    }
}

/// After such a failure the control thread still diffs against the old file: the same reload
/// again (or a fixed file) finds `to-c` "already running" and is refused until a restart.
#[test]
fn a_failed_reload_does_not_block_the_next_one() {
    let c0 = cfg(BASE);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp);
    let new = BASE
        .replace("0xb001", "0xb002")
        .replace("[[policies]]", &format!("{TUNNEL_C}[[policies]]"));
    let _ = ctl.apply_config(cfg(&new), 10);
    // The operator fixes the file: a new key for the new SPI.
    let fixed = new.replace("a0b0c0d0", "a0b0c0d1");
    let again = ctl.apply_config(cfg(&fixed), 20);
    assert!(
        again.is_ok(),
        "the same reload again: {:?}",
        again.err().map(|e| e.to_string())
    );
}

/// `dataplane.replay_window` is documented as a live setting, but every static SA that takes
/// the default gets it resolved at parse time, and an installed SA keeps its window under its
/// key. (reloadfix: the setting is live for SAs added later; with static SAs taking the
/// default, the reload is refused as restart-only, naming the SAs and how to keep them. Set
/// explicitly on those SAs, the setting reloads live.)
#[test]
fn the_live_replay_window_setting_reloads_with_static_sas() {
    let old = cfg(BASE);
    let new = BASE.replace("workers = 1", "workers = 1\nreplay_window = 256");
    let d = espd::control::reload::diff(&old, &cfg(&new));
    assert_eq!(d.settings, vec!["dataplane.replay_window"]);
    assert!(d.refused.is_empty(), "refused: {:?}", d.refused);
    assert_eq!(d.restart.len(), 1, "{:?}", d.restart);
    assert!(
        d.restart[0].starts_with(
            "dataplane.replay_window (the window of static SA(s) sas[0] that take the default;"
        ) && d.restart[0].contains(&format!(
            "set `replay_window = {}` on them",
            old.replay_window
        )),
        "{}",
        d.restart[0]
    );
    // With the SA's window written out, the setting reloads live.
    let pinned = new.replace(
        "spi = 0xb001\n",
        &format!("spi = 0xb001\nreplay_window = {}\n", old.replay_window),
    );
    let d = espd::control::reload::diff(&old, &cfg(&pinned));
    assert_eq!(d.settings, vec!["dataplane.replay_window"]);
    assert!(d.refused.is_empty() && d.restart.is_empty(), "{d:?}");
    assert!(d.sas_changed.is_empty(), "{:?}", d.sas_changed);
}

/// A `[[ike.peers]]` tunnel takes its quick-mode proxy IDs from the tunnel's first protect
/// policy, computed when the daemon starts. A reload that changes that policy leaves `[ike]`
/// as written unchanged (`ike_raw`), so it is applied live while the IKE engine keeps
/// proposing the old selectors: the SPD and the negotiated SAs disagree after the next rekey.
#[test]
fn a_policy_change_on_an_ike_tunnel_is_not_silently_live() {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("espd-review-ike-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let psk = d.join("psk");
    std::fs::write(&psk, "secret\n").unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let no_sas = &BASE[..BASE.find("[[sas]]").unwrap()];
    let with_ike = format!(
        "{no_sas}[control]\nsocket = \"\"\n[[ike.peers]]\ntunnel = \"to-b\"\npsk_file = \"{}\"\n",
        psk.display()
    );
    let old = Config::parse(&d.join("gw.toml"), &with_ike);
    let new = Config::parse(
        &d.join("gw.toml"),
        &with_ike.replace("198.51.100.0/24", "198.51.100.0/25"),
    );
    let _ = std::fs::remove_dir_all(&d);
    let (old, new) = (old.unwrap(), new.unwrap());
    let diff = espd::control::reload::diff(&old, &new);
    assert!(
        !diff.restart.is_empty() || !diff.refused.is_empty(),
        "applied live: policies {:?}, restart {:?}",
        diff.policy_counts,
        diff.restart
    );
}

const OUT_A001: &str = "[[sas]]\ntunnel = \"to-b\"\ndirection = \"out\"\nspi = 0xa001\nkey = \"00112233445566778899aabbccddeeff01020304\"\n";

/// A reload that rekeys the static outbound SA (new SPI, new key) replaces it in
/// `install_static_outbound` with a bare `set_outbound`, not through `bank`: the old SA's
/// packets vanish from the tunnel's totals (`tunnel_list`, `espd_tunnel_*` metrics), which
/// are documented to survive rekeys. A Prometheus counter that steps back reads as a reset.
#[test]
fn a_file_rekey_keeps_the_tunnel_totals() {
    let text = format!("{BASE}{OUT_A001}");
    let c0 = cfg(&text);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp.clone());
    let (tx, rx) = std::sync::mpsc::channel::<espd::control::reload::SeqTrack>();
    ctl.set_seq_tracker(tx);
    let answer = std::thread::spawn(move || {
        for t in rx {
            let _ = t.reply.send(Ok(()));
        }
    });
    {
        let g = crossbeam_epoch::pin();
        let t = ctl.tunnels()[0].index;
        let sa = dp.sas.outbound(t, &g).unwrap();
        for _ in 0..10 {
            sa.count(0, 100);
        }
    }
    let before = ctl.tunnel_list()[0].outbound.packets;
    assert_eq!(before, 10);
    let new = text
        .replace("0xa001", "0xa002")
        .replace("01020304\"\n", "01020399\"\n");
    ctl.apply_config(cfg(&new), 10).unwrap();
    let after = ctl.tunnel_list()[0].outbound.packets;
    drop(ctl);
    answer.join().unwrap();
    assert!(
        after >= before,
        "tunnel outbound packets went from {before} to {after}"
    );
}

/// `check` verifies SPIs are not installed but not that their slot in the inbound table is
/// free (`spi & (sa_capacity - 1)`): a new inbound SPI colliding with a running SA passes the
/// checks and fails in `apply`, after the new tunnel went in.
#[test]
fn an_inbound_slot_collision_is_refused_before_anything_changes() {
    let text = BASE.replace("workers = 1", "workers = 1\nsa_capacity = 256");
    let c0 = cfg(&text);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp);
    // 0xb101 & 0xff == 0xb001 & 0xff: the same slot.
    let new = format!(
        "{}[[sas]]\ntunnel = \"to-c\"\ndirection = \"in\"\nspi = 0xb101\nkey = \"aaeeddccbbaa99887766554433221100a0b0c0d0\"\n",
        text.replace("[[policies]]", &format!("{TUNNEL_C}[[policies]]"))
    );
    let r = ctl.apply_config(cfg(&new), 10);
    if let Err(e) = &r {
        assert_eq!(ctl.tunnels().len(), 1, "refused ({e}) after adding `to-c`");
    }
}
