//! Files holding keys (a config with inline keys, a `key_file`, the `secrets_file`) must be
//! mode 0600 and root-owned or espd refuses them, naming the file, its mode and its owner;
//! `espd check-config` says the same. Also: the control socket's default and how to turn it
//! off, and the packaged example config (dist/espd.toml) is valid.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use espd::config::Config;

const EXE: &str = env!("CARGO_BIN_EXE_espd");
const KEY_OUT: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_IN: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("espd-secrets-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// gw-a.toml with its two `key = "..."` lines replaced by `out` and `inn`.
fn example_with(out: &str, inn: &str) -> String {
    common::example_text("gw-a.toml")
        .replace(&format!("key = \"{KEY_OUT}\""), out)
        .replace(&format!("key = \"{KEY_IN}\""), inn)
}

fn check_config(path: &Path) -> (bool, String) {
    let o = std::process::Command::new(EXE)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn a_world_readable_config_with_inline_keys_is_refused() {
    let d = dir("inline");
    let p = d.join("gw.toml");
    write(&p, &common::example_text("gw-a.toml"), 0o644);
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: holds inline keys ([[sas]] key) but is mode 0644 owned by uid",
            p.display()
        )),
        "{e}"
    );
    assert!(e.contains("must be mode 0600"), "{e}");
    assert!(
        !e.contains(KEY_OUT) && !e.contains(KEY_IN),
        "keys leaked: {e}"
    );
    let (ok, out) = check_config(&p);
    assert!(!ok && out.contains("is mode 0644"), "{out}");
    // Owner-only: accepted, by the library and by check-config.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    Config::load_checked(&p).unwrap();
    let (ok, out) = check_config(&p);
    assert!(ok, "{out}");
    // Without inline keys the config itself may be world-readable.
    let q = d.join("nokeys.toml");
    let text = common::example_text("gw-a.toml");
    let text = &text[..text.find("# A → B").unwrap()];
    write(&q, text, 0o644);
    Config::load_checked(&q).unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn key_files_are_read_and_a_group_readable_one_is_refused() {
    let d = dir("keyfile");
    write(&d.join("out.key"), &format!("{KEY_OUT}\n"), 0o600);
    write(&d.join("in.key"), KEY_IN, 0o640);
    let p = d.join("gw.toml");
    write(
        &p,
        &example_with(
            "key_file = \"out.key\"",
            &format!("key_file = \"{}\"", d.join("in.key").display()),
        ),
        0o644,
    );
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "sas[1].key_file: {} holds keys but is mode 0640 owned by uid",
            d.join("in.key").display()
        )),
        "{e}"
    );
    let (ok, out) = check_config(&p);
    assert!(!ok && out.contains("is mode 0640"), "{out}");
    std::fs::set_permissions(d.join("in.key"), std::fs::Permissions::from_mode(0o400)).unwrap();
    // The config holds no key itself: 0644 is fine for it.
    let c = Config::load_checked(&p).unwrap();
    assert!(!c.inline_keys);
    assert_eq!(c.sas.len(), 2);
    assert_eq!(c.sas[0].1.keymat[..4], [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(c.sas[1].1.keymat[..4], [0xff, 0xee, 0xdd, 0xcc]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_secrets_file_names_the_keys() {
    let d = dir("secretsfile");
    let secrets = d.join("secrets.toml");
    write(
        &secrets,
        &format!("[keys]\na-to-b = \"{KEY_OUT}\"\nb-to-a = \"{KEY_IN}\"\n"),
        0o600,
    );
    let p = d.join("gw.toml");
    let text = format!(
        "secrets_file = \"secrets.toml\"\n{}",
        example_with("secret = \"a-to-b\"", "secret = \"b-to-a\"")
    );
    write(&p, &text, 0o644);
    let c = Config::load_checked(&p).unwrap();
    assert_eq!(c.sas[1].1.keymat[..2], [0xff, 0xee]);
    // A name it does not have; a world-readable secrets file; two key sources for one SA.
    write(&p, &text.replace("\"b-to-a\"", "\"nope\""), 0o644);
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(e.contains("sas[1].secret: `nope` is not in"), "{e}");
    write(&p, &text, 0o644);
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o604)).unwrap();
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(
        e.contains("secrets_file: ") && e.contains("is mode 0604"),
        "{e}"
    );
    let (ok, out) = check_config(&p);
    assert!(!ok && out.contains("is mode 0604"), "{out}");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    write(
        &p,
        &text.replace(
            "secret = \"a-to-b\"",
            &format!("secret = \"a-to-b\"\nkey = \"{KEY_OUT}\""),
        ),
        0o600,
    );
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(
        e.contains("sas[0].key: give exactly one of key, key_file or secret"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_key_file_not_owned_by_root_is_refused() {
    if !espd::sys::is_root() {
        // chown to another user needs root; as a user every file we make is our own.
        eprintln!("SKIPPED a_key_file_not_owned_by_root_is_refused: needs root (chown)");
        return;
    }
    let d = dir("owner");
    let k = d.join("out.key");
    write(&k, KEY_OUT, 0o600);
    write(&d.join("in.key"), KEY_IN, 0o600);
    let st = std::process::Command::new("chown")
        .arg("65534")
        .arg(&k)
        .status()
        .unwrap();
    assert!(st.success());
    let p = d.join("gw.toml");
    write(
        &p,
        &example_with("key_file = \"out.key\"", "key_file = \"in.key\""),
        0o644,
    );
    let e = Config::load_checked(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "sas[0].key_file: {} holds keys but is mode 0600 owned by uid 65534",
            k.display()
        )),
        "{e}"
    );
    let (ok, out) = check_config(&p);
    assert!(!ok && out.contains("owned by uid 65534"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_control_socket_is_on_by_default_and_can_be_turned_off() {
    let text = common::example_text("gw-a.toml");
    let c = Config::parse(Path::new("gw.toml"), &text).unwrap();
    assert_eq!(
        c.control.socket.as_deref(),
        Some(Path::new(espd::config::DEFAULT_SOCKET))
    );
    assert_eq!(espd::config::DEFAULT_SOCKET, "/run/espd/espd.sock");
    let off = Config::parse(
        Path::new("gw.toml"),
        &format!("{text}\n[control]\nsocket = \"\"\n"),
    )
    .unwrap();
    assert_eq!(off.control.socket, None);
}

#[test]
fn the_packaged_example_config_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/espd.toml");
    let c = Config::load_checked(&p).unwrap();
    c.build_dataplane(1).unwrap();
    assert!(!c.inline_keys, "the example keeps keys out of the config");
    let (ok, out) = check_config(&p);
    assert!(ok, "{out}");
}
