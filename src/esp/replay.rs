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

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Highest sequence number accepted so far (0: none).
    top: AtomicU64,
    words: Box<[AtomicU64]>,
    window: u64,
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

    /// Highest accepted sequence number.
    #[inline]
    pub fn top(&self) -> u64 {
        self.top.load(Ordering::Acquire)
    }

    /// RFC 4303 Appendix A2.2: infers the high 32 bits of an ESN from the low 32 bits on the
    /// wire, relative to the bottom of the window.
    #[inline]
    pub fn infer_esn(&self, seq_lo: u32) -> u64 {
        let top = self.top();
        let th = (top >> 32) as u32;
        let tl = top as u32;
        let w = self.window as u32;
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

    #[inline]
    fn slot(&self, seq: u64) -> (&AtomicU64, u32, u32) {
        let block = seq >> BLOCK_BITS;
        let idx = (block as usize) & (self.words.len() - 1);
        (&self.words[idx], block as u32, 1u32 << (seq & BLOCK_MASK))
    }

    /// True when the word tagged `cur_tag` may be taken over by `block` (the full 64-bit block
    /// number of the sequence number being committed). The word's own full block is recovered
    /// from the 32-bit tag relative to the current top: a block within a ring's length of the
    /// top is live, and only an older live block may be replaced; a word whose block is not
    /// near the top is left over from long ago and free.
    #[inline]
    fn claimable(&self, block: u64, cur_tag: u32) -> bool {
        let top_blk = self.top() >> BLOCK_BITS;
        let nw = self.words.len() as i64;
        let delta = cur_tag.wrapping_sub(top_blk as u32) as i32 as i64;
        if delta <= -nw || delta > nw {
            return true;
        }
        let cur_blk = top_blk as i64 + delta;
        (block as i64) > cur_blk
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
        if seq == 0 || seq.saturating_add(self.window) <= top {
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
    /// number succeeds; the others get `Duplicate`.
    #[inline]
    pub fn commit(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 || seq.saturating_add(self.window) <= self.top() {
            return Err(ReplayError::TooOld);
        }
        let (word, tag, bit) = self.slot(seq);
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let cur_tag = (cur >> 32) as u32;
            let new = if cur_tag == tag {
                if cur as u32 & bit != 0 {
                    return Err(ReplayError::Duplicate);
                }
                cur | bit as u64
            } else if cur == 0 || self.claimable(seq >> BLOCK_BITS, cur_tag) {
                // The word is unused, or holds an older block (or one from long ago): claim it.
                ((tag as u64) << 32) | bit as u64
            } else {
                // A newer block already owns the word: we fell out of the window.
                return Err(ReplayError::TooOld);
            };
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.top.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

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
