//! Configuration errors name the file, the key and the reason; keys never leak.

mod common;

use std::path::Path;

use espd::config::Config;

fn err(text: &str) -> String {
    Config::parse(Path::new("gw.toml"), text)
        .unwrap_err()
        .to_string()
}

fn base() -> String {
    common::example_text("gw-a.toml")
}

#[test]
fn examples_are_valid() {
    for f in ["gw-a.toml", "gw-b.toml"] {
        let c = Config::parse(Path::new(f), &common::example_text(f)).unwrap();
        c.build_dataplane(1).unwrap();
    }
}

#[test]
fn errors_name_file_key_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "key = \"00112233445566778899aabbccddeeff01020304\"",
            "key = \"0011\"",
            "gw.toml: sas[0].key: expected 40 hex digits",
        ),
        (
            "key = \"00112233445566778899aabbccddeeff01020304\"",
            "key = \"zz112233445566778899aabbccddeeff01020304\"",
            "sas[0].key: not hexadecimal",
        ),
        (
            "spi = 0x0000a001",
            "spi = 7",
            "sas[0].spi: 7 is not between 256",
        ),
        ("spi = 0x0000b001", "spi = 0x0000a001\nesn = true", ""),
        (
            "replay_window = 1024",
            "replay_window = 1000",
            "dataplane.replay_window: 1000 is not a power of two",
        ),
        (
            "workers = 1",
            "workers = 0",
            "dataplane.workers: 0 is not between 1 and 256",
        ),
        (
            "remote = \"203.0.113.2\"",
            "remote = \"fd00::2\"",
            "tunnels[0].remote: must be the same address family",
        ),
        (
            "remote = \"203.0.113.2\"",
            "remote = \"203.0.113\"",
            "tunnels[0].remote: `203.0.113` is not an IP address",
        ),
        (
            "local = \"203.0.113.1\"",
            "local = \"203.0.113.9\"",
            "tunnels[0].local: 203.0.113.9 is not one of interfaces.cipher.addresses",
        ),
        (
            "mtu = 1500",
            "mtu = 100",
            "tunnels[0].mtu: 100 is not between 576 and 9216",
        ),
        (
            "dst = \"198.51.100.0/24\"",
            "dst = \"198.51.100.0/40\"",
            "policies[0].dst: prefix length 40",
        ),
        (
            "dst = \"198.51.100.0/24\"",
            "dst = \"fd00::/8\"",
            "policies[0].dst: must be the same address family",
        ),
        (
            "action = \"protect\"\ntunnel = \"to-b\"",
            "action = \"protect\"\ntunnel = \"nowhere\"",
            "policies[0].tunnel: no tunnel named `nowhere`",
        ),
        (
            "action = \"protect\"",
            "action = \"encrypt\"",
            "policies[0].action: `encrypt` is not protect",
        ),
        (
            "direction = \"out\"",
            "direction = \"sideways\"",
            "sas[0].direction: `sideways`",
        ),
        (
            "default_policy = \"discard\"",
            "default_policy = \"maybe\"",
            "dataplane.default_policy",
        ),
        (
            "workers = 1",
            "workers = 1\nwrokers = 2",
            "unknown field `wrokers`",
        ),
        (
            "name = \"to-b\"",
            "name = \"to-b\"\nencap = \"udp\"\nmode = \"transport\"",
            "tunnels[0].encap: UDP encapsulation is only supported in tunnel mode",
        ),
        (
            "name = \"gwa-wan\"",
            "name = \"gwa-lan\"",
            "interfaces.cipher.name: must differ",
        ),
    ];
    for (from, to, want) in cases {
        let text = base().replacen(from, to, 1);
        assert_ne!(text, base(), "case {to}: nothing replaced");
        if want.is_empty() {
            Config::parse(Path::new("gw.toml"), &text).unwrap();
            continue;
        }
        let e = err(&text);
        assert!(e.starts_with("gw.toml: "), "{e}");
        assert!(e.contains(want), "want `{want}` in `{e}`");
    }
}

#[test]
fn lifetime_errors_name_the_field() {
    let text = base().replacen(
        "# B → A",
        "[sas.lifetime]\nsoft_bytes = 100\nhard_bytes = 10\n\n# B → A",
        1,
    );
    let e = err(&text);
    assert!(e.contains("sas[0].lifetime.soft_bytes"), "{e}");
    let text = base().replacen("# B → A", "[sas.lifetime]\nhard_bites = 10\n\n# B → A", 1);
    assert!(err(&text).contains("hard_bites"));
}

#[test]
fn duplicate_spis_and_slot_collisions() {
    let mut text = base();
    text.push_str("\n[[sas]]\ntunnel = \"to-b\"\ndirection = \"in\"\nspi = 0x0000b001\nkey = \"00112233445566778899aabbccddeeff01020304\"\n");
    assert!(err(&text).contains("sas[2].spi: 0xb001 is also used by sas[1]"));
    // A different SPI in the same table slot (capacity 65536): refused when building.
    let mut text = base();
    text.push_str("\n[[sas]]\ntunnel = \"to-b\"\ndirection = \"in\"\nspi = 0x0001b001\nkey = \"a0112233445566778899aabbccddeeff01020304\"\n");
    let c = Config::parse(Path::new("gw.toml"), &text).unwrap();
    let e = c.build_dataplane(1).err().unwrap().to_string();
    assert!(e.contains("sas[2]: spi: 0x1b001 needs slot"), "{e}");
}

#[test]
fn keys_never_appear_in_errors_or_debug() {
    let key = "00112233445566778899aabbccddeeff01020304";
    let c = Config::parse(Path::new("gw.toml"), &base()).unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("00112233") && !dbg.contains("ffeeddcc"),
        "key material in Debug output"
    );
    let text = base().replacen(key, &format!("{key}00"), 1);
    assert!(!err(&text).contains("0011223344"));
    let dp = c.build_dataplane(1).unwrap();
    let mut n = 0;
    dp.sas.for_each(|_, sa| {
        n += 1;
        let d = format!("{sa:?}");
        assert!(d.contains("redacted") && !d.contains("00112233"), "{d}");
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(n, 2);
}

#[test]
fn prefetch_above_defaults_and_parses() {
    let parse = |t: &str| Config::parse(Path::new("gw.toml"), t).unwrap();
    assert_eq!(parse(&base()).pipeline_config().prefetch_above, 4096);
    let t = base().replace("[dataplane]\n", "[dataplane]\nprefetch_above = 0\n");
    assert_eq!(parse(&t).pipeline_config().prefetch_above, 0);
    let t = base().replace("[dataplane]\n", "[dataplane]\nprefetch_above = -1\n");
    // A type error points at the line and column of the value (serde's TOML message).
    let e = err(&t);
    assert!(
        e.starts_with("gw.toml: line ") && e.contains("expected u32"),
        "{e}"
    );
}

#[test]
fn idle_strategy_defaults_parses_and_names_the_field() {
    use espd::datapath::worker::{Idle, IdleStrategy};
    let parse = |extra: &str| {
        let t = base().replace("[dataplane]\n", &format!("[dataplane]\n{extra}"));
        Config::parse(Path::new("gw.toml"), &t).map(|c| c.idle)
    };
    assert_eq!(parse("").unwrap(), Idle::default());
    assert_eq!(parse("").unwrap().strategy, IdleStrategy::Sleep);
    let spin = parse("idle = \"spin\"\n").unwrap();
    assert_eq!(
        (spin.strategy, spin.spin_us),
        (IdleStrategy::Spin, Idle::DEFAULT_SPIN_US)
    );
    let bp = parse("idle = \"busy_poll\"\nspin_us = 200\n").unwrap();
    assert_eq!((bp.strategy, bp.spin_us), (IdleStrategy::BusyPoll, 200));
    assert_eq!(bp.to_string(), "busy_poll 200 µs");
    let co = parse("coalesce_us = 200\n").unwrap();
    assert_eq!((co.strategy, co.coalesce_us), (IdleStrategy::Sleep, 200));
    assert_eq!(co.to_string(), "sleep, coalesce 200 µs");
    assert_eq!(parse("").unwrap().coalesce_us, 0);
    for (extra, want) in [
        (
            "coalesce_us = 1001\n",
            "gw.toml: dataplane.coalesce_us: 1001 is more than 1000",
        ),
        ("coalesce_us = -1\n", "gw.toml: line "),
        (
            "idle = \"poll\"\n",
            "gw.toml: dataplane.idle: `poll` is not sleep, spin or busy_poll",
        ),
        (
            "idle = \"spin\"\nspin_us = 0\n",
            "gw.toml: dataplane.spin_us: 0 is not between 1 and 10000",
        ),
        (
            "idle = \"busy_poll\"\nspin_us = 10001\n",
            "gw.toml: dataplane.spin_us: 10001 is not between 1 and 10000",
        ),
        (
            "spin_us = 20\n",
            "gw.toml: dataplane.spin_us: is used by idle = \"spin\" and \"busy_poll\"",
        ),
    ] {
        let e = err(&base().replace("[dataplane]\n", &format!("[dataplane]\n{extra}")));
        assert!(e.starts_with(want), "{extra:?}: {e}");
    }
}

/// Wake-up coalescing turns on only after a full window at ≥ 2 frames per period, stays on
/// while the rate holds, and turns off at the first window that spans a pause or a slower rate.
#[test]
fn coalescing_follows_the_receive_rate() {
    use espd::datapath::worker::Density;
    const MS: u64 = 1_000_000;
    let c = 200_000; // 200 µs
    let mut d = Density::default();
    let mut t = 5 * MS;
    // `n` frames, one every `gap` ns.
    let mut feed = |d: &mut Density, n: usize, gap: u64| {
        for _ in 0..n {
            t += gap;
            d.observe(t, 1, c);
        }
    };
    feed(&mut d, 1, 0); // the first window, since the clock's origin: a low rate
    assert!(!d.dense());
    feed(&mut d, 20, 50_000); // 20k pps: 4 frames per 200 µs
    assert!(d.dense(), "20k pps with 200 µs periods: coalesce");
    feed(&mut d, 20, 200_000); // 5k pps: 1 frame per 200 µs, below MIN_BATCH
    assert!(!d.dense(), "5k pps: a wake-up per frame");
    feed(&mut d, 40, 50_000);
    assert!(d.dense());
    feed(&mut d, 1, 50 * MS); // a 50 ms pause: the first window after it is sparse
    assert!(!d.dense(), "a pause ends coalescing at the next frame");
    feed(&mut d, 40, 50_000);
    assert!(d.dense());
    d.paused(); // a timed sleep that found nothing ends it at once too
    assert!(!d.dense());
    // A pause in mid-window: 100k pps for 0.5 ms, an empty timed sleep, 3 ms later one ping.
    // The window before the pause must not count: the ping is not coalesced.
    feed(&mut d, 1, 0);
    feed(&mut d, 50, 10_000);
    d.paused();
    feed(&mut d, 1, 3 * MS);
    assert!(
        !d.dense(),
        "the traffic before a pause does not turn coalescing back on"
    );
    // The sleep decision: timed sleeps while dense (and allowed), a poll(2) after a timed sleep
    // that no frame followed, and none while something forbids it.
    feed(&mut d, 40, 50_000);
    assert!(!d.nap(false), "a transmission awaits completion: poll(2)");
    assert!(d.nap(true));
    feed(&mut d, 1, 200_000); // a frame came during the nap: keep coalescing
    assert!(d.nap(true));
    assert!(!d.nap(true), "a nap that brought nothing: poll(2)");
    assert!(!d.dense() && !d.nap(true), "and measure afresh");
}
