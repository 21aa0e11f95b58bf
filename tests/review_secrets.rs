//! Review tests (h-review): errors about files holding keys must not quote key material.

use std::os::unix::fs::PermissionsExt;

use espd::config::Config;

const BASE: &str = r#"
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
[[sas]]
tunnel = "to-b"
direction = "in"
spi = 0xb001
"#;

/// A secrets file whose key lost its quotes: the error names the entry, not its digits.
#[test]
fn a_secrets_file_error_does_not_quote_the_key() {
    let d = std::env::temp_dir().join(format!("espd-review-secrets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let s = d.join("secrets.toml");
    let mut errors = Vec::new();
    for (value, digits) in [
        ("1122334455667788", "1122334455667788"),
        ("11223344.5566", "11223344"),
    ] {
        std::fs::write(&s, format!("[keys]\nb = {value}\n")).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!("secrets_file = \"{}\"\n{BASE}secret = \"b\"\n", s.display());
        let e = Config::parse(&d.join("gw.toml"), &text)
            .map(|_| ())
            .unwrap_err();
        errors.push((e.to_string(), digits));
    }
    let _ = std::fs::remove_dir_all(&d);
    for (e, digits) in errors {
        assert!(!e.contains(digits), "the error quotes the key: {e}");
    }
}

/// The same mistake in the config file itself (`key = 1122...` without quotes).
#[test]
fn a_config_error_does_not_quote_an_inline_key() {
    let text = format!("{BASE}key = 1122334455667788\n");
    let e = Config::parse(std::path::Path::new("gw.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("1122334455667788"),
        "the error quotes the key: {e}"
    );
}
