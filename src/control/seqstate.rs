//! Persisted sequence-number high-water marks of static outbound SAs (RFC 4106 §3.1: a nonce
//! must never repeat under one key, and the IV is the sequence number).
//!
//! A static SA (from the config file) keeps its key across restarts, so its sequence counter
//! must too. Before any worker may use a number, this module writes a high-water mark past it
//! to the state file (write to a temporary file, fsync, rename, fsync the directory), and
//! only then raises the SA's counter cap to that mark. After a restart, or a crash at any
//! point, the SA resumes after the saved mark: every number a previous run could have used is
//! at or below it. The cost is at most one block ([`BLOCK`]) of numbers skipped per restart.
//!
//! The file (mode 0600) holds one line per key: the SPI it last had, a fingerprint of the key
//! (SHA-256 of a label and the key material, 128 bits: names the key without revealing it),
//! and the mark. A key is found by its fingerprint whatever its SPI; a key the file has never
//! seen is refused unless the operator says it is fresh (`espd run --fresh-keys`), since its
//! previous numbers are unknown. Lines are never dropped, so a key that comes back (a
//! rollback, another SPI) continues after its mark. One process at a time holds the file
//! (an exclusive lock on `FILE.lock`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::config::Config;
use crate::datapath::pipeline::Dataplane;
use crate::esp::replay::ReplayWindow;
use crate::sa::{Direction, SeqCounter};

/// Numbers saved ahead of use. The control thread extends the mark when less than half a
/// block is left (checked every 20 ms): at 10^6 packets per second on one SA that is half a
/// second of margin for the fsync.
pub const BLOCK: u64 = 1 << 20;

const HEADER: &str = "# espd sequence state v1: spi key-fingerprint high-water-mark";

#[derive(Debug, thiserror::Error)]
pub enum SeqStateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "sas[{index}]: outbound SA {spi:#010x} has no saved sequence state in {path}: its earlier sequence numbers (GCM nonces) are unknown. If its key is new, start once with --fresh-keys; otherwise restore the state file"
    )]
    Missing {
        index: usize,
        spi: u32,
        path: String,
    },
    #[error(
        "{path}: in use by another espd process (a daemon or `espd pcap` on the same config); two processes would send the same sequence numbers under one key"
    )]
    Busy { path: String },
    #[error(
        "sas[{index}]: outbound SA {spi:#010x} has used its whole sequence space under this key (state file {path}); configure a new key"
    )]
    Exhausted {
        index: usize,
        spi: u32,
        path: String,
    },
}

/// Names key material without revealing it: SHA-256 of a label and the key, 128 bits.
pub fn fingerprint(keymat: &[u8]) -> [u8; 16] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"espd sequence state v1\0");
    ctx.update(keymat);
    let d = ctx.finish();
    let mut f = [0u8; 16];
    f.copy_from_slice(&d.as_ref()[..16]);
    f
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Line {
    spi: u32,
    fp: [u8; 16],
    mark: u64,
}

/// A static inbound SA: the highest number its window accepted is saved (at most once per
/// [`INBOUND_EVERY`]), so after a restart it refuses what it accepted before.
struct TrackedIn {
    line: Line,
    window: Arc<ReplayWindow>,
}

/// How often a static inbound SA's replay top is saved: packets accepted within this long
/// before a crash can be replayed once after the restart.
pub const INBOUND_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Tracked {
    line: Line,
    seq: Arc<CachePadded<SeqCounter>>,
}

/// The state file and the static outbound SAs it covers. Holds an exclusive lock on
/// `FILE.lock` for its life: a second process on the same file (another daemon, `espd pcap`
/// on the running daemon's config) is refused instead of continuing the same numbers.
pub struct SeqStore {
    path: PathBuf,
    tracked: Vec<Tracked>,
    inbound: Vec<TrackedIn>,
    inbound_saved: std::time::Instant,
    /// Every line of the file by key fingerprint (the highest mark of each key ever seen),
    /// kept for good: a key that comes back (rollback, another SPI) continues after it.
    lines: HashMap<[u8; 16], Line>,
    _lock: std::fs::File,
}

/// The default state file of a config: next to it, the config's file name plus `.seq`
/// (`gw.toml` → `gw.toml.seq`), so two configs never share one.
pub fn default_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".seq");
    config.with_file_name(name)
}

fn hexfp(fp: &[u8; 16]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn read(path: &Path) -> Result<Option<Vec<Line>>, SeqStateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SeqStateError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| SeqStateError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let f: Vec<&str> = l.split_whitespace().collect();
        let [spi, fp, mark] = f[..] else {
            return Err(bad("expected `spi fingerprint mark`"));
        };
        let spi = u32::from_str_radix(spi.trim_start_matches("0x"), 16)
            .map_err(|_| bad("spi: not a hexadecimal 32-bit number"))?;
        if fp.len() != 32 || !fp.is_ascii() {
            return Err(bad("fingerprint: expected 32 hex digits"));
        }
        let mut fpb = [0u8; 16];
        for (k, b) in fpb.iter_mut().enumerate() {
            *b = u8::from_str_radix(&fp[2 * k..2 * k + 2], 16)
                .map_err(|_| bad("fingerprint: not hexadecimal"))?;
        }
        let mark = mark
            .parse::<u64>()
            .map_err(|_| bad("mark: not a decimal number"))?;
        lines.push(Line { spi, fp: fpb, mark });
    }
    Ok(Some(lines))
}

fn write_atomically(path: &Path, lines: &[Line]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = sibling(path, &format!(".tmp{}", std::process::id()));
    {
        // 0600: the fingerprints confirm a guessed key to whoever can read them.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = String::from(HEADER);
        text.push('\n');
        for l in lines {
            text.push_str(&format!("{:#010x} {} {}\n", l.spi, hexfp(&l.fp), l.mark));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

fn lock(path: &Path) -> Result<std::fs::File, SeqStateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let lp = sibling(path, ".lock");
    let io = |source| SeqStateError::Io {
        path: lp.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lp)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(SeqStateError::Busy {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

impl SeqStore {
    /// Resumes every static outbound SA of `cfg` (installed in `dp`) from the state file at
    /// `path`, saves a first block ahead and caps the counters at it. Nothing is sent before
    /// this returns. A key is found by its fingerprint whatever its SPI, at the highest mark
    /// any line gives it. `fresh`: keys the file has never seen start at 1 (the operator
    /// vouches they are new); a key the file knows always continues after its mark.
    pub fn open(
        path: &Path,
        cfg: &Config,
        dp: &Dataplane,
        fresh: bool,
    ) -> Result<SeqStore, SeqStateError> {
        let lock = lock(path)?;
        let mut lines: HashMap<[u8; 16], Line> = HashMap::new();
        for l in read(path)?.unwrap_or_default() {
            let e = lines.entry(l.fp).or_insert(l);
            if l.mark > e.mark {
                *e = l;
            }
        }
        let mut tracked = Vec::new();
        let g = crossbeam_epoch::pin();
        let mut inbound = Vec::new();
        for (index, (t, p)) in cfg.sas.iter().enumerate() {
            if p.direction == Direction::Inbound {
                // RFC 4303 §3.4.3 across a restart: refuse every number up to the saved top.
                let Some(sa) = dp.sas.inbound(p.spi, &g) else {
                    continue;
                };
                let Some(window) = sa.replay.clone() else {
                    continue;
                };
                let fp = fingerprint(&p.keymat);
                let mark = lines.get(&fp).map_or(0, |l| l.mark);
                if mark > 0 {
                    let st = crate::sa::SaState {
                        replay_top: Some(mark),
                        ..Default::default()
                    };
                    sa.import_state(&st)
                        .map_err(|reason| SeqStateError::Parse {
                            path: path.display().to_string(),
                            line: 0,
                            reason,
                        })?;
                }
                let line = Line {
                    spi: p.spi,
                    fp,
                    mark,
                };
                lines.insert(fp, line);
                inbound.push(TrackedIn { line, window });
                continue;
            }
            let Some(sa) = dp.sas.outbound(*t, &g).filter(|s| s.spi == p.spi) else {
                continue;
            };
            let fp = fingerprint(&p.keymat);
            let seq = sa.seq_handle();
            let mark = match lines.get(&fp) {
                Some(l) => l.mark,
                None if fresh => 0,
                // A key the file has never seen may have been used by a run whose state is
                // lost. Only a fresh key may start at 1.
                None => {
                    return Err(SeqStateError::Missing {
                        index,
                        spi: p.spi,
                        path: path.display().to_string(),
                    });
                }
            };
            if mark >= seq.max() {
                return Err(SeqStateError::Exhausted {
                    index,
                    spi: p.spi,
                    path: path.display().to_string(),
                });
            }
            seq.advance_to(mark);
            seq.set_cap(mark);
            let line = Line {
                spi: p.spi,
                fp,
                mark,
            };
            lines.insert(fp, line);
            tracked.push(Tracked { line, seq });
        }
        drop(g);
        let mut store = SeqStore {
            path: path.to_path_buf(),
            tracked,
            inbound,
            inbound_saved: std::time::Instant::now(),
            lines,
            _lock: lock,
        };
        if !store.is_empty() {
            store.extend(true).map_err(|source| SeqStateError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(store)
    }

    /// A static outbound SA added while running (a config reload), before it is published: it
    /// resumes after the mark the file has for its key (a key the file has never seen starts
    /// at 1: it was just written into the config), a block ahead is saved and the counter is
    /// capped there, as [`SeqStore::open`] does at start.
    pub fn track(
        &mut self,
        spi: u32,
        keymat: &[u8],
        seq: Arc<CachePadded<SeqCounter>>,
    ) -> Result<(), SeqStateError> {
        let fp = fingerprint(keymat);
        let mark = self.lines.get(&fp).map_or(0, |l| l.mark);
        if mark >= seq.max() {
            return Err(SeqStateError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(format!(
                    "outbound SA {spi:#010x}: its key has used its whole sequence space; configure a new key"
                )),
            });
        }
        seq.advance_to(mark);
        seq.set_cap(mark);
        let line = Line { spi, fp, mark };
        self.lines.insert(fp, line);
        self.tracked.push(Tracked { line, seq });
        self.extend(true).map_err(|source| SeqStateError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(())
    }

    /// Path of the state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of SAs covered.
    pub fn len(&self) -> usize {
        self.tracked.len() + self.inbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extends the saved mark of every SA within half a block of it (called every 20 ms by a
    /// thread of its own, so a busy control thread cannot starve it). Returns whether the file
    /// was written. On an I/O error the caps stay where they are: workers refuse numbers past
    /// them (counted as `seq_unsaved`) rather than use numbers that a crash could make them
    /// use again.
    pub fn maintain(&mut self) -> std::io::Result<bool> {
        self.extend(false)
    }

    fn extend(&mut self, force: bool) -> std::io::Result<bool> {
        let mut due = false;
        let mut next = Vec::with_capacity(self.tracked.len());
        for t in &self.tracked {
            let last = t.seq.last();
            let mut mark = t.line.mark;
            if force || t.line.mark.saturating_sub(last) < BLOCK / 2 {
                mark = mark.max(last.saturating_add(BLOCK).min(t.seq.max()));
            }
            // Only a higher mark is worth a write (a key at the end of its space has none).
            due |= mark > t.line.mark;
            next.push(mark);
        }
        // Inbound tops ride along, or go alone at most once per INBOUND_EVERY.
        let in_due = force || self.inbound_saved.elapsed() >= INBOUND_EVERY;
        let tops: Vec<u64> = self
            .inbound
            .iter()
            .map(|t| t.window.top().max(t.line.mark))
            .collect();
        let in_moved = self
            .inbound
            .iter()
            .zip(&tops)
            .any(|(t, &top)| top > t.line.mark);
        due |= in_due && in_moved;
        if !due {
            return Ok(false);
        }
        for (t, &mark) in self.tracked.iter().zip(&next) {
            self.lines.insert(t.line.fp, Line { mark, ..t.line });
        }
        for (t, &mark) in self.inbound.iter().zip(&tops) {
            self.lines.insert(t.line.fp, Line { mark, ..t.line });
        }
        let lines: Vec<Line> = self.lines.values().copied().collect();
        // RFC 4106 §3.1: the mark reaches the disk before any number below it can be used.
        write_atomically(&self.path, &lines)?;
        for (t, mark) in self.tracked.iter_mut().zip(next) {
            t.line.mark = mark;
            t.seq.set_cap(mark);
        }
        for (t, mark) in self.inbound.iter_mut().zip(tops) {
            t.line.mark = mark;
        }
        self.inbound_saved = std::time::Instant::now();
        Ok(true)
    }
}

/// Writes a state file for `cfg` declaring every static outbound SA fresh (mark 0). For the
/// tool that generated the keys (the rig), which knows they were never used.
pub fn write_fresh(path: &Path, cfg: &Config) -> std::io::Result<()> {
    let lines: Vec<Line> = cfg
        .sas
        .iter()
        .filter(|(_, p)| p.direction == Direction::Outbound)
        .map(|(_, p)| Line {
            spi: p.spi,
            fp: fingerprint(&p.keymat),
            mark: 0,
        })
        .collect();
    write_atomically(path, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gw-a.toml");
        Config::load(&p).unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("espd-seqstate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn take_all(dp: &Dataplane, n: u64) -> Vec<u64> {
        let g = crossbeam_epoch::pin();
        let sa = dp.sas.outbound(0, &g).unwrap();
        (0..n).filter_map(|_| sa.next_seq().ok()).collect()
    }

    #[test]
    fn missing_state_is_refused_unless_fresh() {
        let d = dir("missing");
        let c = cfg();
        let dp = c.build_dataplane(1).unwrap();
        let e = SeqStore::open(&d.join("s.seq"), &c, &dp, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("sas[0]: outbound SA 0x0000a001 has no saved"),
            "{e}"
        );
        assert!(SeqStore::open(&d.join("s.seq"), &c, &dp, true).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn restarts_never_reuse_a_number_and_the_cap_holds_until_saved() {
        let d = dir("restart");
        let path = d.join("s.seq");
        let c = cfg();
        let mut used = Vec::new();
        for run in 0..3 {
            let dp = c.build_dataplane(1).unwrap();
            let mut st = SeqStore::open(&path, &c, &dp, run == 0).unwrap();
            // Up to the saved block only; past it the counter refuses until the mark moves.
            let first = take_all(&dp, BLOCK / 2 + 10);
            assert!(st.maintain().unwrap(), "half a block used: the mark moves");
            let more = take_all(&dp, 1000);
            used.extend(first);
            used.extend(more);
            // The process "crashes" here: nothing else is written.
        }
        let n = used.len();
        used.sort_unstable();
        used.dedup();
        assert_eq!(
            used.len(),
            n,
            "a sequence number was used twice across restarts"
        );
        // A saved file that disagrees about the key starts that SA afresh but keeps no
        // stale line for the old key.
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_process_at_a_time_and_a_key_is_found_under_any_spi() {
        let d = dir("lock");
        let path = d.join("s.seq");
        let c = cfg();
        let dp = c.build_dataplane(1).unwrap();
        let st = SeqStore::open(&path, &c, &dp, true).unwrap();
        let dp2 = c.build_dataplane(1).unwrap();
        let e = SeqStore::open(&path, &c, &dp2, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use by another espd process"), "{e}");
        let used = take_all(&dp, 10);
        drop(st);
        // The same key under another SPI continues after its mark, even with --fresh-keys.
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gw-a.toml"),
        )
        .unwrap()
        .replace("spi = 0x0000a001", "spi = 0x0000a0f1");
        let c2 = Config::parse(Path::new("gw.toml"), &text).unwrap();
        let dp3 = c2.build_dataplane(1).unwrap();
        let _st = SeqStore::open(&path, &c2, &dp3, true).unwrap();
        let next = take_all(&dp3, 1);
        assert!(
            next[0] > used[9],
            "a key restarted under a new SPI: {next:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_static_inbound_sa_refuses_after_a_restart_what_it_accepted_before() {
        let d = dir("inbound");
        let path = d.join("s.seq");
        let c = cfg();
        let dp = c.build_dataplane(1).unwrap();
        let mut st = SeqStore::open(&path, &c, &dp, true).unwrap();
        {
            let g = crossbeam_epoch::pin();
            let w = dp.sas.inbound(0xb001, &g).unwrap().replay.clone().unwrap();
            for s in 1..=100 {
                w.commit(s).unwrap();
            }
        }
        st.inbound_saved -= INBOUND_EVERY;
        assert!(st.maintain().unwrap());
        drop(st);
        let dp2 = c.build_dataplane(1).unwrap();
        let _st = SeqStore::open(&path, &c, &dp2, false).unwrap();
        let g = crossbeam_epoch::pin();
        let w = dp2.sas.inbound(0xb001, &g).unwrap().replay.clone().unwrap();
        assert!(
            (1..=100).all(|s| w.check(s).is_err()),
            "replays accepted after a restart"
        );
        assert!(w.check(101).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unsaved_numbers_are_refused() {
        let d = dir("cap");
        let c = cfg();
        let dp = c.build_dataplane(1).unwrap();
        let _st = SeqStore::open(&d.join("s.seq"), &c, &dp, true).unwrap();
        let got = take_all(&dp, BLOCK + 5);
        assert_eq!(got.len() as u64, BLOCK, "no number past the saved mark");
        let g = crossbeam_epoch::pin();
        assert_eq!(
            dp.sas.outbound(0, &g).unwrap().next_seq(),
            Err(crate::sa::SeqShort::Unsaved)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_line() {
        let d = dir("corrupt");
        let path = d.join("s.seq");
        std::fs::write(&path, format!("{HEADER}\n0xa001 zz 5\n")).unwrap();
        let c = cfg();
        let dp = c.build_dataplane(1).unwrap();
        let e = SeqStore::open(&path, &c, &dp, true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.ends_with("s.seq:2: fingerprint: expected 32 hex digits"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
