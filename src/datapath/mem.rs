//! In-memory frames and rings: the pipeline without AF_XDP, for tests, benchmarks and
//! `espd pcap`.

use super::pipeline::FrameMut;

/// Headroom left in front of each frame (room for outer headers or an ICMP error).
pub const HEADROOM: usize = 256;
/// Frame buffer size (matches the AF_XDP frame size espd uses).
pub const FRAME_SIZE: usize = 4096;

/// One frame buffer owning its memory.
#[derive(Clone, Debug)]
pub struct Frame {
    pub data: Box<[u8]>,
    pub offset: usize,
    pub len: usize,
}

impl Frame {
    /// A frame holding `pkt` after `HEADROOM` bytes, in a buffer of at least `FRAME_SIZE`.
    pub fn from_packet(pkt: &[u8]) -> Self {
        let size = FRAME_SIZE.max(HEADROOM + pkt.len() + 256);
        let mut data = vec![0u8; size].into_boxed_slice();
        data[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
        Self {
            data,
            offset: HEADROOM,
            len: pkt.len(),
        }
    }

    /// Refills the frame with `pkt` without allocating (when it fits).
    pub fn reset(&mut self, pkt: &[u8]) {
        if HEADROOM + pkt.len() + 256 > self.data.len() {
            *self = Self::from_packet(pkt);
            return;
        }
        self.data[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
        self.offset = HEADROOM;
        self.len = pkt.len();
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.offset..self.offset + self.len]
    }
}

impl FrameMut for Frame {
    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
    #[inline]
    fn offset(&self) -> usize {
        self.offset
    }
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    fn set(&mut self, offset: usize, len: usize) {
        self.offset = offset;
        self.len = len;
    }
}
