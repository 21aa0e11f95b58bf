//! Lock-free anti-replay window (RFC 4303 §3.4.3 and Appendix A), shared by all workers.
//!
//! The window remembers which of the last `W` sequence numbers were accepted. It is a ring of
//! 64-bit words, each holding a 32-bit *block tag* (`seq >> 5`, truncated) and a 32-bit bitmap
//! for the 32 sequence numbers of that block. A word is claimed for a newer block or has a bit
//! set with one compare-and-swap, so two workers receiving packets of one SA never take a lock
//! and never both accept the same number. The ring holds `2W` numbers, so every block inside
//! the window keeps its word until the window has moved past it.
//!
//! Use: [`ReplayWindow::check`] before decryption (cheap rejection of old and duplicate
//! packets), [`ReplayWindow::commit`] only after the ICV verified: a forged packet never moves
//! the window.
//!
//! Invariants (checked by the `loom_replay_*` models and the tests below):
//!
//! * **Top first.** `commit(seq)` raises `top` to at least `seq` *before* its compare-and-swap
//!   on the word, and the swap releases that. So no word ever holds a block above `top`, and
//!   a worker that reads a word value and then `top` sees a `top` at least as high as every
//!   number committed into that word value (the "fresh top").
//! * **One live block per word.** Against a fresh top `T`, a number that is not too old
//!   (`seq + W > T`, and `seq <= T` since its own commit raised `T`) lies in one of the last
//!   `W/32 + 1` blocks, and the ring has `2W/32` words: any *other* block found in its word is
//!   at least a ring behind, i.e. every number of it is older than the window. So a word with
//!   another tag may be claimed, with no guess about whose block is newer. A word therefore
//!   only ever moves to a newer block, and once it has, every number of the old block is too
//!   old against any later fresh top: no number can be accepted twice, whatever the
//!   interleaving. (A claim or bit set that lands just after `top` moved on accepts, at worst,
//!   a number that had never been accepted and fell out of the window meanwhile.)
//! * **Tags are 32 bits.** A block 2^32 blocks (2^37 numbers) behind another has the same tag:
//!   a word left untouched while the window jumped that far ahead can make a fresh number look
//!   like a duplicate (a false reject, never a second accept). Senders count up by one, so
//!   this needs 2^37 packets skipped at once.

use crate::sync::atomic::{AtomicU64, Ordering};

pub const MIN_WINDOW: u32 = 64;
pub const MAX_WINDOW: u32 = 4096;
pub const DEFAULT_WINDOW: u32 = 1024;

const BLOCK_BITS: u32 = 5; // 32 sequence numbers per word
const BLOCK_MASK: u64 = 31;

/// Why a sequence number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Older than the window.
    TooOld,
    /// Already received.
    Duplicate,
}

#[derive(Debug)]
pub struct ReplayWindow {
    /// Highest sequence number accepted or being committed (0: none).
    top: AtomicU64,
    words: Box<[AtomicU64]>,
    window: u64,
}

/// RFC 4303 Appendix A2.2: the high 32 bits of an ESN inferred from the low 32 bits on the
/// wire, relative to the bottom of a `w` window whose top is `top`.
#[inline]
fn infer_esn(top: u64, w: u32, seq_lo: u32) -> u64 {
    let th = (top >> 32) as u32;
    let tl = top as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let hi = if tl >= w - 1 {
        // Window within one subspace.
        if seq_lo >= bottom {
            th
        } else {
            th.wrapping_add(1)
        }
    } else {
        // Window spans two subspaces.
        if seq_lo >= bottom {
            th.wrapping_sub(1)
        } else {
            th
        }
    };
    ((hi as u64) << 32) | seq_lo as u64
}

impl ReplayWindow {
    /// `window` must be a power of two in 64..=4096 (checked by the config layer; clamped here).
    pub fn new(window: u32) -> Self {
        let w = window.clamp(MIN_WINDOW, MAX_WINDOW).next_power_of_two() as u64;
        let nwords = ((2 * w) >> BLOCK_BITS) as usize;
        Self {
            top: AtomicU64::new(0),
            words: (0..nwords).map(|_| AtomicU64::new(0)).collect(),
            window: w,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Highest accepted sequence number (or one a worker is committing right now).
    #[inline]
    pub fn top(&self) -> u64 {
        self.top.load(Ordering::Acquire)
    }

    /// RFC 4303 Appendix A2.2: infers the high 32 bits of an ESN from the low 32 bits on the
    /// wire, relative to the bottom of the window.
    #[inline]
    pub fn infer_esn(&self, seq_lo: u32) -> u64 {
        infer_esn(self.top(), self.window as u32, seq_lo)
    }

    #[inline]
    fn slot(&self, seq: u64) -> (&AtomicU64, u32, u32) {
        let block = seq >> BLOCK_BITS;
        let idx = (block as usize) & (self.words.len() - 1);
        (&self.words[idx], block as u32, 1u32 << (seq & BLOCK_MASK))
    }

    /// True when `seq` is 0 or older than the window below `top` (`seq + W <= top`, without
    /// overflow at the end of the 64-bit space).
    #[inline]
    fn too_old(&self, seq: u64, top: u64) -> bool {
        seq == 0 || top.saturating_sub(seq) >= self.window
    }

    /// Starts loading the lines `check`/`commit` of sequence number `seq` (its low 32 bits
    /// suffice) will touch.
    #[inline]
    pub fn prefetch(&self, seq: u64) {
        crate::sys::prefetch(&self.top);
        crate::sys::prefetch(self.slot(seq).0);
    }

    /// Pre-check before the ICV is verified. Sequence number 0 is never valid.
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let top = self.top();
        if self.too_old(seq, top) {
            return Err(ReplayError::TooOld);
        }
        if seq > top {
            return Ok(());
        }
        let (word, tag, bit) = self.slot(seq);
        let w = word.load(Ordering::Acquire);
        if (w >> 32) as u32 == tag && (w as u32) & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Records `seq` after authentication. Exactly one of several concurrent commits of the same
    /// number succeeds; the others get `Duplicate` (or `TooOld` once the window passed it).
    #[inline]
    pub fn commit(&self, seq: u64) -> Result<(), ReplayError> {
        if self.commit_block(seq >> BLOCK_BITS, 1 << (seq & BLOCK_MASK)) != 0 {
            return Ok(());
        }
        if self.too_old(seq, self.top()) {
            Err(ReplayError::TooOld)
        } else {
            Err(ReplayError::Duplicate)
        }
    }

    /// The bits of block `block` whose numbers are not too old against `top`.
    #[inline]
    fn fresh_bits(&self, block: u64, top: u64) -> u32 {
        let base = block << BLOCK_BITS;
        // The oldest number the window still takes (0 is never valid).
        let low = top.saturating_sub(self.window - 1).max(1);
        if low <= base {
            u32::MAX
        } else if low - base >= 32 {
            0
        } else {
            u32::MAX << (low - base)
        }
    }

    /// Records, after authentication, the numbers `32 block + i` for each bit `i` of `bits`:
    /// what `commit` does for each of them, with one `fetch_max` of the top and one
    /// compare-and-swap of the word for all of them (a worker commits the numbers of a batch
    /// that share a block together, so two workers on one SA exchange the window's lines once
    /// per block rather than once per packet). Returns the bits accepted; exactly one of
    /// several concurrent commits of a number accepts it. A bit not accepted was a duplicate
    /// or is too old.
    ///
    /// The module's invariants hold as for one number: the top is raised to the highest
    /// number of `bits` before the word is touched, and every bit is judged against the fresh
    /// top read after the word value the swap replaces. The numbers of one block lie within
    /// 32 of each other, less than the smallest window, so raising the top for the highest
    /// never makes the others too old.
    #[inline]
    pub fn commit_block(&self, block: u64, bits: u32) -> u32 {
        let top = self.top();
        let bits = bits & self.fresh_bits(block, top);
        if bits == 0 {
            return 0;
        }
        let highest = (block << BLOCK_BITS) | u64::from(31 - bits.leading_zeros());
        // Top first: no word may hold a block above `top` (see the module invariants).
        if highest > top {
            self.top.fetch_max(highest, Ordering::AcqRel);
        }
        #[cfg(all(test, not(feature = "loom")))]
        tests::pause(tests::PUBLISHED);
        let idx = (block as usize) & (self.words.len() - 1);
        let (word, tag) = (&self.words[idx], block as u32);
        let mut cur = word.load(Ordering::Acquire);
        let won = loop {
            // The fresh top, read after the word value: every number in `cur` is <= it.
            let live = bits & self.fresh_bits(block, self.top());
            let (new, won) = if (cur >> 32) as u32 == tag {
                let won = live & !(cur as u32);
                (cur | u64::from(won), won)
            } else {
                // Another block: at least a ring behind ours, all of it out of the window.
                ((u64::from(tag) << 32) | u64::from(live), live)
            };
            if won == 0 {
                return 0;
            }
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break won,
                Err(actual) => cur = actual,
            }
        };
        #[cfg(all(test, not(feature = "loom")))]
        tests::pause(tests::CLAIMED);
        won
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    /// Points inside `commit` where a test can run another worker's operations, as if that
    /// worker ran while this one stalled there: after `top` was published, before the word is
    /// touched; and after the word was claimed or set.
    pub(super) const PUBLISHED: u8 = 0;
    pub(super) const CLAIMED: u8 = 1;

    type Interlude = (u8, Box<dyn FnOnce()>);
    thread_local! {
        static PAUSE: RefCell<Option<Interlude>> = const { RefCell::new(None) };
    }

    /// Runs the interlude registered for `point` (once).
    #[cfg(not(feature = "loom"))]
    pub(super) fn pause(point: u8) {
        let f = PAUSE.with(|p| {
            let mut p = p.borrow_mut();
            match &*p {
                Some((q, _)) if *q == point => p.take().map(|(_, f)| f),
                _ => None,
            }
        });
        if let Some(f) = f {
            f();
        }
    }

    /// Issue 11, defect 2, deterministically: with a 64 window, 1 is accepted; worker A commits
    /// 256 (same ring word as 1) and stalls at `point`; worker B replays 1 and 256 meanwhile;
    /// then both numbers are replayed again. Each number is accepted exactly once.
    #[test]
    fn stalled_far_commit_never_reopens_a_number() {
        for point in [CLAIMED, PUBLISHED] {
            for replays in [&[1u64, 256][..], &[256, 1], &[1], &[256]] {
                let r = std::rc::Rc::new(ReplayWindow::new(64));
                r.commit(1).unwrap();
                let b = std::rc::Rc::new(RefCell::new(Vec::new()));
                let (rb, bb, replays) = (r.clone(), b.clone(), replays.to_vec());
                PAUSE.with(|p| {
                    *p.borrow_mut() = Some((
                        point,
                        Box::new(move || {
                            for s in replays {
                                if rb.check(s).is_ok() && rb.commit(s).is_ok() {
                                    bb.borrow_mut().push(s);
                                }
                            }
                        }),
                    ))
                });
                let mut accepted = vec![1];
                if r.commit(256).is_ok() {
                    accepted.push(256);
                }
                assert!(
                    PAUSE.with(|p| p.borrow_mut().take()).is_none(),
                    "commit never reached pause point {point}"
                );
                accepted.extend(b.borrow().iter());
                for s in [1, 256] {
                    if r.check(s).is_ok() && r.commit(s).is_ok() {
                        accepted.push(s);
                    }
                }
                accepted.sort_unstable();
                assert_eq!(
                    accepted,
                    [1, 256],
                    "pause point {point}, replays {:?} during the stall",
                    b.borrow()
                );
            }
        }
    }

    /// Real threads, no delays: per round a fresh 64 window holding 1; one thread commits far
    /// ahead on the ring word of 1 (256, then 512) while two others replay 1, 256 and 512. Over
    /// all rounds no number is accepted twice, 1 never again, and 512 once.
    #[test]
    fn stress_far_commits_against_replays() {
        use std::sync::{Arc, Barrier};
        const ROUNDS: usize = 50_000;
        let windows: Arc<Vec<ReplayWindow>> = Arc::new(
            (0..ROUNDS)
                .map(|_| {
                    let r = ReplayWindow::new(64);
                    r.commit(1).unwrap();
                    r
                })
                .collect(),
        );
        let barrier = Arc::new(Barrier::new(3));
        let plans: [&'static [u64]; 3] = [&[256, 512], &[1, 256, 1, 512], &[512, 1, 256]];
        let threads: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let (windows, barrier) = (windows.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut accepted = vec![Vec::new(); ROUNDS];
                    for (r, acc) in windows.iter().zip(accepted.iter_mut()) {
                        barrier.wait();
                        for &s in plan {
                            if r.check(s).is_ok() && r.commit(s).is_ok() {
                                acc.push(s);
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        let per_thread: Vec<Vec<Vec<u64>>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut twice = 0;
        for round in 0..ROUNDS {
            let mut got: Vec<u64> = per_thread.iter().flat_map(|t| t[round].clone()).collect();
            got.sort_unstable();
            let n = got.len();
            got.dedup();
            twice += usize::from(got.len() != n);
            // 512 is the highest number: whoever commits it first accepts it. 256 may come too
            // late (after 512 it is out of the window); 1 is a replay.
            assert!(got == [512] || got == [256, 512], "round {round}: {got:?}");
        }
        assert_eq!(twice, 0, "rounds in which a number was accepted twice");
    }

    /// The reference: a set of everything accepted and the highest number.
    struct Model {
        seen: HashSet<u64>,
        top: u64,
        w: u64,
    }

    impl Model {
        fn accept(&mut self, seq: u64) -> bool {
            if seq == 0 || seq + self.w <= self.top || self.seen.contains(&seq) {
                return false;
            }
            self.seen.insert(seq);
            self.top = self.top.max(seq);
            true
        }
    }

    #[test]
    fn basic() {
        let r = ReplayWindow::new(64);
        assert_eq!(r.check(0), Err(ReplayError::TooOld));
        for s in [1, 2, 5, 4] {
            r.check(s).unwrap();
            r.commit(s).unwrap();
        }
        assert_eq!(r.check(5), Err(ReplayError::Duplicate));
        assert_eq!(r.commit(4), Err(ReplayError::Duplicate));
        r.commit(100).unwrap();
        assert_eq!(r.check(5), Err(ReplayError::TooOld));
        assert_eq!(r.check(36), Err(ReplayError::TooOld));
        r.check(37).unwrap();
        assert_eq!(r.commit(100), Err(ReplayError::Duplicate));
    }

    /// The last numbers of the 64-bit space: each accepted once (a commit sees its own number
    /// as the top; `seq + W` must not saturate into "too old").
    #[test]
    fn end_of_sequence_space() {
        let r = ReplayWindow::new(1024);
        for s in [u64::MAX - 1, u64::MAX, u64::MAX - 5] {
            r.check(s).unwrap();
            r.commit(s).unwrap();
        }
        assert_eq!(r.commit(u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(r.check(u64::MAX - 1), Err(ReplayError::Duplicate));
        assert_eq!(r.check(u64::MAX - 1024), Err(ReplayError::TooOld));
        r.commit(u64::MAX - 1023).unwrap();
    }

    #[test]
    fn esn_inference() {
        let r = ReplayWindow::new(64);
        r.commit((5u64 << 32) | 10).unwrap();
        // Window spans subspaces 4 and 5: a low number far above 10 belongs to subspace 4.
        assert_eq!(r.infer_esn(0xffff_fff0), (4u64 << 32) | 0xffff_fff0);
        assert_eq!(r.infer_esn(11), (5u64 << 32) | 11);
        let r = ReplayWindow::new(64);
        r.commit((5u64 << 32) | 0xffff_ff00).unwrap();
        // A small low half after a large top has wrapped into subspace 6.
        assert_eq!(r.infer_esn(3), (6u64 << 32) | 3);
        assert_eq!(r.infer_esn(0xffff_ff10), (5u64 << 32) | 0xffff_ff10);
    }

    proptest! {
        #[test]
        fn matches_model(window in prop::sample::select(vec![64u32, 128, 1024, 4096]),
                         seqs in prop::collection::vec(0u64..20_000, 1..2000)) {
            let r = ReplayWindow::new(window);
            let mut m = Model { seen: HashSet::new(), top: 0, w: window as u64 };
            for s in seqs {
                let got = r.check(s).is_ok() && r.commit(s).is_ok();
                prop_assert_eq!(got, m.accept(s), "seq {}", s);
            }
        }

        #[test]
        fn large_jumps(seqs in prop::collection::vec(1u64..u64::MAX / 2, 1..200)) {
            let r = ReplayWindow::new(1024);
            let mut m = Model { seen: HashSet::new(), top: 0, w: 1024 };
            for s in seqs {
                let got = r.check(s).is_ok() && r.commit(s).is_ok();
                prop_assert_eq!(got, m.accept(s));
            }
        }
    }

    /// Numbers committed in runs of one block (`commit_block`, as the pipeline commits a batch)
    /// are accepted exactly as one by one: a number repeated inside a run counts once.
    fn blocks_match_model(window: u32, seqs: &[u64]) -> Result<(), TestCaseError> {
        let r = ReplayWindow::new(window);
        let mut m = Model {
            seen: HashSet::new(),
            top: 0,
            w: window as u64,
        };
        let mut i = 0;
        while i < seqs.len() {
            let block = seqs[i] >> BLOCK_BITS;
            let n = seqs[i..]
                .iter()
                .take_while(|&&s| s >> BLOCK_BITS == block)
                .count();
            let run = &seqs[i..i + n];
            let mut bits = 0u32;
            for &s in run {
                if r.check(s).is_ok() {
                    bits |= 1 << (s & BLOCK_MASK);
                }
            }
            let won = r.commit_block(block, bits);
            let mut seen_here = 0u32;
            for &s in run {
                let bit = 1u32 << (s & BLOCK_MASK);
                let got = won & bit != 0 && seen_here & bit == 0;
                seen_here |= bit;
                prop_assert_eq!(got, m.accept(s), "seq {} in run {:?}", s, run);
            }
            prop_assert_eq!(r.top(), m.top);
            i += n;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn commit_block_matches_model(window in prop::sample::select(vec![64u32, 128, 1024]),
                                      seqs in prop::collection::vec(0u64..3_000, 1..2000)) {
            blocks_match_model(window, &seqs)?;
        }

        /// Mostly ascending runs with repeats and jumps, as batches bring them.
        #[test]
        fn commit_block_ascending(window in prop::sample::select(vec![64u32, 1024]),
                                  steps in prop::collection::vec((0u64..4, 0u64..200), 1..1000)) {
            let mut s = 1u64;
            let seqs: Vec<u64> = steps
                .iter()
                .map(|&(d, jump)| {
                    s += d + if jump == 0 { 100 } else { 0 };
                    s.saturating_sub(jump % 7)
                })
                .collect();
            blocks_match_model(window, &seqs)?;
        }
    }

    /// Four threads commit the same stream in runs of up to 32 numbers (`commit_block`), each
    /// thread in its own shuffled order of runs: each number is accepted exactly once.
    #[test]
    fn concurrent_blocks_exactly_once() {
        use rand::seq::SliceRandom;
        use rand::{RngExt, SeedableRng};
        use std::sync::Arc;
        for (w, n) in [(64u32, 20_000u64), (4096, 200_000)] {
            let r = Arc::new(ReplayWindow::new(w));
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let r = r.clone();
                    std::thread::spawn(move || {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                        let mut got = Vec::new();
                        // Chunks of a quarter window, each shuffled into runs by block.
                        let chunk = u64::from(w) / 4;
                        let mut base = 1;
                        while base <= n {
                            let mut seqs: Vec<u64> = (base..(base + chunk).min(n + 1)).collect();
                            seqs.shuffle(&mut rng);
                            seqs.sort_by_key(|s| s >> BLOCK_BITS);
                            for run in seqs.chunk_by(|a, b| a >> BLOCK_BITS == b >> BLOCK_BITS) {
                                let cut = rng.random_range(0..=run.len());
                                for part in [&run[..cut], &run[cut..]] {
                                    let Some(&first) = part.first() else { continue };
                                    let bits =
                                        part.iter().fold(0u32, |b, s| b | 1 << (s & BLOCK_MASK));
                                    let won = r.commit_block(first >> BLOCK_BITS, bits);
                                    got.extend(
                                        part.iter().filter(|&&s| won & 1 << (s & BLOCK_MASK) != 0),
                                    );
                                }
                            }
                            base += chunk;
                        }
                        got
                    })
                })
                .collect();
            let mut all: Vec<u64> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            all.sort_unstable();
            let total = all.len();
            all.dedup();
            assert_eq!(all.len(), total, "window {w}: a number was accepted twice");
            assert_eq!(total as u64, n, "window {w}: every number accepted once");
        }
    }

    /// Concurrent: four threads receive the same shuffled stream (every number four times).
    /// Each number inside the window is accepted exactly once overall.
    #[test]
    fn concurrent_exactly_once() {
        for w in [4096, 64] {
            concurrent_exactly_once_with(w, if w == 64 { 32 } else { 512 });
        }
    }

    /// Four threads receive the same stream, each shuffling chunks of `chunk` numbers. With a
    /// small window the threads drift past each other's ring often: a late commit must never
    /// clobber a newer block's word (a bug once let a number be accepted twice that way).
    fn concurrent_exactly_once_with(window: u32, chunk: usize) {
        use rand::seq::SliceRandom;
        use std::sync::Arc;
        let r = Arc::new(ReplayWindow::new(window));
        let n = 200_000u64;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::rng();
                    let mut accepted = Vec::new();
                    // Locally shuffled chunks keep the stream inside the window.
                    for chunk in (1..=n).collect::<Vec<_>>().chunks_mut(chunk) {
                        chunk.shuffle(&mut rng);
                        for &s in chunk.iter() {
                            if r.check(s).is_ok() && r.commit(s).is_ok() {
                                accepted.push(s);
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let total = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), total, "a sequence number was accepted twice");
        // The first thread to reach a chunk finds it inside the window (chunks are smaller than
        // the window), so every number is accepted by exactly one thread.
        assert_eq!(total as u64, n);
    }
}

/// Loom models of `check`/`commit` (`cargo test --release --features loom --lib loom_`): every
/// interleaving of two or three workers' atomic operations, up to a preemption bound.
#[cfg(all(test, feature = "loom"))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use std::collections::{BTreeMap, HashSet};

    /// One received packet.
    #[derive(Clone, Copy, Debug)]
    enum Pkt {
        /// 32-bit sequence numbers: the number as sent.
        Seq(u64),
        /// ESN: the sender sent this 64-bit number, the wire carries its low half; the receiver
        /// infers the high half, and a wrong guess fails the ICV (never committed).
        Esn(u64),
        /// 32-bit numbers of one block, each checked, then committed together
        /// (`commit_block`), as the pipeline commits a batch.
        Run(&'static [u64]),
    }

    /// The packets one by one (the sequential reference takes a run's numbers in order).
    fn singles(plan: &[Pkt]) -> Vec<Pkt> {
        plan.iter()
            .flat_map(|&p| match p {
                Pkt::Run(seqs) => seqs.iter().map(|&s| Pkt::Seq(s)).collect(),
                p => vec![p],
            })
            .collect()
    }

    /// What a worker does with each packet, as `decap` does: infer, check, (verify), commit.
    /// Returns the numbers it accepted.
    fn receive(r: &ReplayWindow, plan: &[Pkt]) -> Vec<u64> {
        let mut accepted = Vec::new();
        for &p in plan {
            let seq = match p {
                Pkt::Seq(s) => s,
                Pkt::Run(seqs) => {
                    let block = seqs[0] >> BLOCK_BITS;
                    let bits = seqs
                        .iter()
                        .filter(|&&s| r.check(s).is_ok())
                        .fold(0u32, |b, &s| b | 1 << (s & BLOCK_MASK));
                    let won = r.commit_block(block, bits);
                    let mut taken = 0u32;
                    for &s in seqs {
                        let bit = 1u32 << (s & BLOCK_MASK);
                        if won & bit != 0 && taken & bit == 0 {
                            accepted.push(s);
                        }
                        taken |= bit;
                    }
                    continue;
                }
                Pkt::Esn(sent) => {
                    let seq = r.infer_esn(sent as u32);
                    if seq != sent {
                        continue; // the ICV would not verify
                    }
                    seq
                }
            };
            if r.check(seq).is_ok() && r.commit(seq).is_ok() {
                accepted.push(seq);
            }
        }
        accepted
    }

    /// The sequential reference: a set of accepted numbers and the highest.
    #[derive(Clone)]
    struct Sequential {
        seen: HashSet<u64>,
        top: u64,
        w: u64,
    }

    impl Sequential {
        fn receive(&mut self, p: Pkt) -> Option<u64> {
            let seq = match p {
                Pkt::Seq(s) => s,
                Pkt::Run(_) => unreachable!("runs are taken apart by `singles`"),
                Pkt::Esn(sent) => {
                    Some(infer_esn(self.top, self.w as u32, sent as u32)).filter(|&s| s == sent)?
                }
            };
            if seq == 0 || self.top.saturating_sub(seq) >= self.w || !self.seen.insert(seq) {
                return None;
            }
            self.top = self.top.max(seq);
            Some(seq)
        }
    }

    /// Per number, the fewest and the most times it is accepted over every interleaving of the
    /// plans with each packet handled atomically.
    fn sequential_bounds(
        window: u32,
        pre: &[u64],
        plans: &[Vec<Pkt>],
    ) -> BTreeMap<u64, (usize, usize)> {
        fn walk(
            m: &Sequential,
            plans: &[Vec<Pkt>],
            pos: &mut Vec<usize>,
            got: &mut Vec<u64>,
            outcomes: &mut Vec<Vec<u64>>,
        ) {
            let mut done = true;
            for t in 0..plans.len() {
                if pos[t] < plans[t].len() {
                    done = false;
                    let mut m = m.clone();
                    let n = got.len();
                    if let Some(s) = m.receive(plans[t][pos[t]]) {
                        got.push(s);
                    }
                    pos[t] += 1;
                    walk(&m, plans, pos, got, outcomes);
                    pos[t] -= 1;
                    got.truncate(n);
                }
            }
            if done {
                outcomes.push(got.clone());
            }
        }
        let mut m = Sequential {
            seen: HashSet::new(),
            top: 0,
            w: u64::from(window.clamp(MIN_WINDOW, MAX_WINDOW).next_power_of_two()),
        };
        for &s in pre {
            m.receive(Pkt::Seq(s)).expect("prefix accepted");
        }
        let mut outcomes = Vec::new();
        walk(
            &m,
            plans,
            &mut vec![0; plans.len()],
            &mut Vec::new(),
            &mut outcomes,
        );
        let numbers: HashSet<u64> = outcomes.iter().flatten().copied().collect();
        numbers
            .into_iter()
            .map(|s| {
                let counts = outcomes
                    .iter()
                    .map(|o| o.iter().filter(|&&x| x == s).count());
                (
                    s,
                    (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0)),
                )
            })
            .collect()
    }

    /// Runs `plans` (one per worker; worker 0 is the model's main thread) on a window that
    /// accepted `pre`, in every interleaving loom explores. Asserts that no number is accepted
    /// twice, and that each is accepted at least as often as in every sequential interleaving
    /// and at most as often as in some.
    fn model(window: u32, pre: &'static [u64], plans: Vec<Vec<Pkt>>, preemptions: usize) {
        let one_by_one: Vec<Vec<Pkt>> = plans.iter().map(|p| singles(p)).collect();
        let bounds = sequential_bounds(window, pre, &one_by_one);
        let plans = std::sync::Arc::new(plans); // plain data, shared by every execution
        let mut b = loom::model::Builder::new();
        b.preemption_bound = (preemptions > 0).then_some(preemptions);
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = runs.clone();
        b.check(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = Arc::new(ReplayWindow::new(window));
            for &s in pre {
                r.commit(s).unwrap();
            }
            let workers: Vec<_> = (1..plans.len())
                .map(|t| {
                    let (r, plans) = (r.clone(), plans.clone());
                    loom::thread::spawn(move || receive(&r, &plans[t]))
                })
                .collect();
            let mut all = receive(&r, &plans[0]);
            for w in workers {
                all.extend(w.join().unwrap());
            }
            let mut counts = BTreeMap::new();
            for s in all {
                *counts.entry(s).or_insert(0usize) += 1;
            }
            for (s, &n) in &counts {
                assert!(n == 1, "{s:#x} accepted {n} times");
                let (_, most) = bounds.get(s).copied().unwrap_or((0, 0));
                assert!(n <= most, "{s:#x} accepted, no sequential order accepts it");
            }
            for (s, &(least, _)) in &bounds {
                let n = counts.get(s).copied().unwrap_or(0);
                assert!(
                    n >= least,
                    "{s:#x} refused, every sequential order accepts it"
                );
            }
        });
        println!(
            "{} executions",
            runs.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    use Pkt::{Esn, Run, Seq};

    /// Two workers commit overlapping runs of one block (a shared SA's batches, and a replay
    /// of part of one), one of them also a number of the next block: every number once.
    #[test]
    fn loom_replay_runs_overlap() {
        model(
            64,
            &[1],
            vec![
                vec![Run(&[2, 3, 5]), Seq(40)],
                vec![Run(&[3, 4, 5]), Run(&[2])],
            ],
            0,
        );
    }

    /// Runs against a far jump onto the same ring word (one ring of a 64 window is 128
    /// numbers): the jump's run makes the older run too old, or the older run lands first.
    #[test]
    fn loom_replay_runs_far_jump() {
        model(
            64,
            &[1],
            vec![
                vec![Run(&[256, 257]), Run(&[2, 3])],
                vec![Run(&[1, 2]), Run(&[257, 258])],
            ],
            0,
        );
    }

    /// The interleaving and its neighbours: 1 accepted; one worker jumps four blocks
    /// ahead onto the word of 1 (256), then takes 2 (same word, too old once 256 is in); the
    /// other replays 1 and 256.
    #[test]
    fn loom_replay_far_jump() {
        model(
            64,
            &[1],
            vec![vec![Seq(256), Seq(2)], vec![Seq(1), Seq(256)]],
            0,
        );
    }

    /// Three workers on one word: a far jump, its replay and a replay of the old number.
    #[test]
    fn loom_replay_three_workers() {
        model(
            64,
            &[1],
            vec![vec![Seq(256)], vec![Seq(1)], vec![Seq(256)]],
            0,
        );
    }

    /// Ring wrap: 100 and 228 share a word one ring (128 numbers) apart, 130 is the next block;
    /// both workers see all three in different orders.
    #[test]
    fn loom_replay_ring_wrap() {
        model(
            64,
            &[60],
            vec![vec![Seq(100), Seq(228)], vec![Seq(228), Seq(130), Seq(100)]],
            0,
        );
    }

    /// ESN across 2^32: the window holds 2^32 - 3; one worker receives 2^32 + 230 (a jump of
    /// more than a ring onto the word of 2^32 - 3, in the next subspace) and 2^32 - 1; the
    /// other a replay of 2^32 - 3, then 2^32 + 2 and 2^32 + 230. Only the low halves are on the wire.
    #[test]
    fn loom_replay_esn_boundary() {
        const B: u64 = 1 << 32;
        model(
            64,
            &[B - 3],
            vec![
                vec![Esn(B + 230), Esn(B - 1)],
                vec![Esn(B - 3), Esn(B + 2), Esn(B + 230)],
            ],
            0,
        );
    }
}
