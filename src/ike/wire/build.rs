//! [`Builder`]: writes an ISAKMP message (or a bare payload chain) into a caller's `Vec<u8>`,
//! chaining next-payload fields as payloads are added and fixing every length at the end of
//! its payload (the header's in [`Builder::finish`]). It never panics: a length or count that
//! does not fit its field makes `finish` fail.

use std::net::IpAddr;
use std::ops::Range;

use super::consts::{DOI_IPSEC, SIT_IDENTITY_ONLY, flags, id_type, notify, payload, protocol};
use super::header::{Cookie, HEADER_LEN, Header, field};
use super::payloads::{Identity, Payload};
use super::sa::{Attr, AttrValue, SaPayload};

/// Why a message could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A payload, attribute or SPI longer than its length field allows, or more than 255
    /// transforms in a proposal.
    #[error("ISAKMP field too long")]
    TooLong,
    /// An attribute type of 0 or with the AF bit (the form is chosen by the method called).
    #[error("ISAKMP attribute type out of range")]
    AttrType,
    /// [`Builder::fill`] got a range it did not hand out or data of another length.
    #[error("ISAKMP fill range mismatch")]
    Fill,
}

/// Writes one message. Payload methods return the range of the payload's content (after
/// its generic header) inside the buffer, e.g. SAi_b for the RFC 2409 hashes.
pub struct Builder<'b> {
    buf: &'b mut Vec<u8>,
    /// Where the header (or the bare chain) starts.
    start: usize,
    header: bool,
    /// The byte holding the next-payload type of the last payload (or of the header).
    next_at: Option<usize>,
    first: u8,
    error: Option<BuildError>,
}

impl<'b> Builder<'b> {
    /// Starts a message after what `buf` already holds (e.g. a non-ESP marker). The header's
    /// next-payload and length fields are filled in by the builder; the commit flag is never
    /// set (espd does not use it).
    pub fn new(buf: &'b mut Vec<u8>, header: &Header) -> Self {
        let start = buf.len();
        let mut h = *header;
        h.flags.commit = false;
        h.next_payload = payload::NONE;
        h.length = 0;
        buf.extend_from_slice(&h.to_bytes());
        Builder {
            buf,
            start,
            header: true,
            next_at: Some(start + field::NEXT_PAYLOAD),
            first: payload::NONE,
            error: None,
        }
    }

    /// Starts a bare payload chain (the plaintext of an encrypted body, or a test).
    pub fn chain(buf: &'b mut Vec<u8>) -> Self {
        Builder {
            start: buf.len(),
            buf,
            header: false,
            next_at: None,
            first: payload::NONE,
            error: None,
        }
    }

    /// The type of the first payload added (`0` while none is).
    pub fn first_type(&self) -> u8 {
        self.first
    }

    /// Everything in the buffer so far (the caller's prefix included).
    pub fn bytes(&self) -> &[u8] {
        self.buf
    }

    /// Overwrites `range` (handed out by [`hash_placeholder`](Self::hash_placeholder) or a
    /// payload method) with `data` of the same length.
    pub fn fill(&mut self, range: Range<usize>, data: &[u8]) {
        match self.buf.get_mut(range) {
            Some(dst) if dst.len() == data.len() => dst.copy_from_slice(data),
            _ => self.fail(BuildError::Fill),
        }
    }

    fn fail(&mut self, e: BuildError) {
        self.error.get_or_insert(e);
    }

    /// Starts a payload of type `ty`: chains it and writes a generic header with length 0.
    fn begin(&mut self, ty: u8) -> usize {
        match self.next_at {
            Some(at) => {
                if let Some(b) = self.buf.get_mut(at) {
                    *b = ty;
                }
            }
            None => self.first = ty,
        }
        if self.first == payload::NONE {
            self.first = ty;
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(&[payload::NONE, 0, 0, 0]);
        self.next_at = Some(at);
        at
    }

    /// Fixes the length of the payload begun at `at`; returns its content range.
    fn end(&mut self, at: usize) -> Range<usize> {
        let len = self.buf.len() - at;
        let l = u16::try_from(len).unwrap_or_else(|_| {
            self.fail(BuildError::TooLong);
            u16::MAX
        });
        put16(self.buf, at + 2, l);
        at + 4..self.buf.len()
    }

    fn simple(&mut self, ty: u8, parts: &[&[u8]]) -> Range<usize> {
        let at = self.begin(ty);
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.end(at)
    }

    /// KE: the public Diffie-Hellman value.
    pub fn ke(&mut self, public: &[u8]) -> Range<usize> {
        self.simple(payload::KE, &[public])
    }

    /// NONCE (8 to 256 bytes; RFC 2409 §5).
    pub fn nonce(&mut self, nonce: &[u8]) -> Range<usize> {
        self.simple(payload::NONCE, &[nonce])
    }

    /// HASH with a known value.
    pub fn hash(&mut self, hash: &[u8]) -> Range<usize> {
        self.simple(payload::HASH, &[hash])
    }

    /// HASH of `len` zero bytes, filled in later with [`fill`](Self::fill) once the payloads
    /// it covers are written (RFC 2409 §5.5: HASH(1) covers everything after it).
    pub fn hash_placeholder(&mut self, len: usize) -> Range<usize> {
        let at = self.begin(payload::HASH);
        self.buf.resize(self.buf.len() + len, 0);
        self.end(at)
    }

    /// SIG.
    pub fn signature(&mut self, sig: &[u8]) -> Range<usize> {
        self.simple(payload::SIG, &[sig])
    }

    /// CERT.
    pub fn cert(&mut self, encoding: u8, data: &[u8]) -> Range<usize> {
        self.simple(payload::CERT, &[&[encoding], data])
    }

    /// CR.
    pub fn cert_request(&mut self, cert_type: u8, authority: &[u8]) -> Range<usize> {
        self.simple(payload::CERT_REQ, &[&[cert_type], authority])
    }

    /// VID.
    pub fn vendor_id(&mut self, vid: &[u8]) -> Range<usize> {
        self.simple(payload::VENDOR_ID, &[vid])
    }

    /// NAT-D (type 20, or 130 with `draft`).
    pub fn nat_d(&mut self, hash: &[u8], draft: bool) -> Range<usize> {
        let ty = if draft {
            payload::NAT_D_DRAFT
        } else {
            payload::NAT_D
        };
        self.simple(ty, &[hash])
    }

    /// NAT-OA (type 21, or 131 with `draft`).
    pub fn nat_oa(&mut self, addr: IpAddr, draft: bool) -> Range<usize> {
        let ty = if draft {
            payload::NAT_OA_DRAFT
        } else {
            payload::NAT_OA
        };
        let at = self.begin(ty);
        match addr {
            IpAddr::V4(a) => {
                self.buf.extend_from_slice(&[id_type::IPV4_ADDR, 0, 0, 0]);
                self.buf.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.buf.extend_from_slice(&[id_type::IPV6_ADDR, 0, 0, 0]);
                self.buf.extend_from_slice(&a.octets());
            }
        }
        self.end(at)
    }

    /// ID (RFC 2407 §4.6.2): protocol and port 0 for "any".
    pub fn id(&mut self, proto: u8, port: u16, identity: &Identity<'_>) -> Range<usize> {
        let at = self.begin(payload::ID);
        self.buf.push(identity.id_type());
        self.buf.push(proto);
        self.buf.extend_from_slice(&port.to_be_bytes());
        identity.write_data(self.buf);
        self.end(at)
    }

    /// N (RFC 2408 §3.14): the SPI size is `spi.len()`.
    pub fn notify(
        &mut self,
        doi: u32,
        proto: u8,
        spi: &[u8],
        notify_type: u16,
        data: &[u8],
    ) -> Range<usize> {
        let spi_size = self.spi_size(spi.len());
        let at = self.begin(payload::NOTIFY);
        self.buf.extend_from_slice(&doi.to_be_bytes());
        self.buf.extend_from_slice(&[proto, spi_size]);
        self.buf.extend_from_slice(&notify_type.to_be_bytes());
        self.buf.extend_from_slice(spi);
        self.buf.extend_from_slice(data);
        self.end(at)
    }

    fn spi_size(&mut self, len: usize) -> u8 {
        u8::try_from(len).unwrap_or_else(|_| {
            self.fail(BuildError::TooLong);
            0
        })
    }

    /// INITIAL-CONTACT (RFC 2407 §4.6.3.3), SPI = the cookies.
    pub fn initial_contact(&mut self, icookie: &Cookie, rcookie: &Cookie) -> Range<usize> {
        let spi = cookies(icookie, rcookie);
        self.notify(
            DOI_IPSEC,
            protocol::ISAKMP,
            &spi,
            notify::INITIAL_CONTACT,
            &[],
        )
    }

    /// RFC 3706 §5: R-U-THERE (`ack` false) or R-U-THERE-ACK, SPI = the cookies, data = the
    /// sequence number.
    pub fn dpd(&mut self, ack: bool, icookie: &Cookie, rcookie: &Cookie, seq: u32) -> Range<usize> {
        let ty = if ack {
            notify::R_U_THERE_ACK
        } else {
            notify::R_U_THERE
        };
        let spi = cookies(icookie, rcookie);
        self.notify(DOI_IPSEC, protocol::ISAKMP, &spi, ty, &seq.to_be_bytes())
    }

    /// D (RFC 2408 §3.15): `spis` holds the SPIs of `spi_size` bytes each, concatenated.
    pub fn delete(&mut self, doi: u32, proto: u8, spi_size: u8, spis: &[u8]) -> Range<usize> {
        let count = spis.len() / usize::from(spi_size.max(1));
        let count = u16::try_from(count).unwrap_or_else(|_| {
            self.fail(BuildError::TooLong);
            0
        });
        let at = self.begin(payload::DELETE);
        self.buf.extend_from_slice(&doi.to_be_bytes());
        self.buf.extend_from_slice(&[proto, spi_size]);
        self.buf.extend_from_slice(&count.to_be_bytes());
        self.buf.extend_from_slice(spis);
        self.end(at)
    }

    /// An ISAKMP SA delete: SPI size 16, SPI = icookie‖rcookie.
    pub fn delete_isakmp(&mut self, icookie: &Cookie, rcookie: &Cookie) -> Range<usize> {
        self.delete(DOI_IPSEC, protocol::ISAKMP, 16, &cookies(icookie, rcookie))
    }

    /// An ESP delete of `spis` (the SPIs the sender receives on).
    pub fn delete_esp(&mut self, spis: &[u32]) -> Range<usize> {
        let at = self.begin(payload::DELETE);
        let count = u16::try_from(spis.len()).unwrap_or_else(|_| {
            self.fail(BuildError::TooLong);
            0
        });
        self.buf.extend_from_slice(&DOI_IPSEC.to_be_bytes());
        self.buf.extend_from_slice(&[protocol::ESP, 4]);
        self.buf.extend_from_slice(&count.to_be_bytes());
        for s in spis {
            self.buf.extend_from_slice(&s.to_be_bytes());
        }
        self.end(at)
    }

    /// SA (DOI IPsec, SIT_IDENTITY_ONLY) with the proposals `f` adds.
    pub fn sa(&mut self, f: impl FnOnce(&mut SaBuilder<'_, 'b>)) -> Range<usize> {
        let at = self.begin(payload::SA);
        self.buf.extend_from_slice(&DOI_IPSEC.to_be_bytes());
        self.buf.extend_from_slice(&SIT_IDENTITY_ONLY.to_be_bytes());
        let mut sb = SaBuilder {
            b: self,
            prev: None,
        };
        f(&mut sb);
        self.end(at)
    }

    /// Writes a parsed payload again, field for field (attributes keep their TV/TLV form).
    pub fn push(&mut self, p: &Payload<'_>) -> Range<usize> {
        match *p {
            Payload::Sa(sa) => self.sa(|s| s.copy(&sa)),
            Payload::KeyExchange(d) => self.ke(d),
            Payload::Id(id) => self.id(id.protocol, id.port, &id.identity),
            Payload::Cert { encoding, data } => self.cert(encoding, data),
            Payload::CertRequest {
                cert_type,
                authority,
            } => self.cert_request(cert_type, authority),
            Payload::Hash(d) => self.hash(d),
            Payload::Signature(d) => self.signature(d),
            Payload::Nonce(d) => self.nonce(d),
            Payload::Notify(n) => self.notify(n.doi, n.protocol, n.spi, n.notify_type, n.data),
            Payload::Delete(d) => self.delete(d.doi(), d.protocol(), d.spi_size(), d.spi_bytes()),
            Payload::VendorId(d) => self.vendor_id(d),
            Payload::NatD { hash, draft } => self.nat_d(hash, draft),
            Payload::NatOa { addr, draft } => self.nat_oa(addr, draft),
        }
    }

    fn check_header_room(&mut self) -> Option<u32> {
        u32::try_from(self.buf.len() - self.start)
            .map_err(|_| self.fail(BuildError::TooLong))
            .ok()
    }

    /// Fixes the header's length; returns the message (or chain) length.
    pub fn finish(mut self) -> Result<usize, BuildError> {
        let len = self.check_header_room().unwrap_or(0);
        if self.header {
            put32(self.buf, self.start + field::LENGTH.start, len);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.buf.len() - self.start),
        }
    }

    /// For an encrypted message: pads the body with zeros to a multiple of `block` bytes
    /// (RFC 2409 §5.3), sets the encryption flag and the length; returns the body's range,
    /// to be encrypted in place (CBC keeps the length).
    pub fn finish_padded(self, block: usize) -> Result<Range<usize>, BuildError> {
        let body = if self.header {
            self.start + HEADER_LEN
        } else {
            self.start
        };
        let block = block.max(1);
        let n = self.buf.len() - body;
        self.buf.resize(body + n.div_ceil(block) * block, 0);
        if self.header
            && let Some(f) = self.buf.get_mut(self.start + field::FLAGS)
        {
            *f |= flags::ENCRYPTION;
        }
        let end = self.buf.len();
        self.finish().map(|_| body..end)
    }
}

fn cookies(i: &Cookie, r: &Cookie) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(i);
    s[8..].copy_from_slice(r);
    s
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(d) = b.get_mut(at..at + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(d) = b.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// Adds proposals to an SA payload (RFC 2408 §3.5: chained by next payload 2, the last 0).
pub struct SaBuilder<'x, 'b> {
    b: &'x mut Builder<'b>,
    prev: Option<usize>,
}

impl<'b> SaBuilder<'_, 'b> {
    /// A proposal: `spi` is empty for ISAKMP, the 4-byte inbound SPI for ESP; `f` adds its
    /// transforms (their count is filled in).
    pub fn proposal(
        &mut self,
        number: u8,
        proto: u8,
        spi: &[u8],
        f: impl FnOnce(&mut ProposalBuilder<'_, 'b>),
    ) {
        let b = &mut *self.b;
        if let Some(prev) = self.prev
            && let Some(n) = b.buf.get_mut(prev)
        {
            *n = payload::PROPOSAL;
        }
        let spi_size = b.spi_size(spi.len());
        let at = b.buf.len();
        self.prev = Some(at);
        b.buf
            .extend_from_slice(&[payload::NONE, 0, 0, 0, number, proto, spi_size, 0]);
        b.buf.extend_from_slice(spi);
        let mut pb = ProposalBuilder {
            b,
            count: 0,
            prev: None,
        };
        f(&mut pb);
        let count = u8::try_from(pb.count).unwrap_or_else(|_| {
            pb.b.fail(BuildError::TooLong);
            0
        });
        if let Some(c) = b.buf.get_mut(at + 7) {
            *c = count;
        }
        b.end(at);
    }

    /// Copies the proposals of a parsed SA payload.
    pub fn copy(&mut self, sa: &SaPayload<'_>) {
        for p in sa.proposals() {
            self.proposal(p.number, p.protocol, p.spi, |pb| {
                for t in p.transforms() {
                    pb.transform(t.number, t.id, |a| {
                        for at in t.attrs() {
                            a.attr(&at);
                        }
                    });
                }
            });
        }
    }
}

/// Adds transforms to a proposal (chained by next payload 3, the last 0).
pub struct ProposalBuilder<'x, 'b> {
    b: &'x mut Builder<'b>,
    count: usize,
    prev: Option<usize>,
}

impl<'b> ProposalBuilder<'_, 'b> {
    /// A transform: `id` is `KEY_IKE` for ISAKMP or an ESP transform id; `f` writes its
    /// attributes.
    pub fn transform(&mut self, number: u8, id: u8, f: impl FnOnce(&mut AttrWriter<'_, 'b>)) {
        let b = &mut *self.b;
        if let Some(prev) = self.prev
            && let Some(n) = b.buf.get_mut(prev)
        {
            *n = payload::TRANSFORM;
        }
        let at = b.buf.len();
        self.prev = Some(at);
        self.count += 1;
        b.buf
            .extend_from_slice(&[payload::NONE, 0, 0, 0, number, id, 0, 0]);
        f(&mut AttrWriter { b });
        b.end(at);
    }
}

/// Writes SA attributes (RFC 2408 §3.3).
pub struct AttrWriter<'x, 'b> {
    b: &'x mut Builder<'b>,
}

impl AttrWriter<'_, '_> {
    fn ty(&mut self, ty: u16) -> u16 {
        if ty == 0 || ty & 0x8000 != 0 {
            self.b.fail(BuildError::AttrType);
        }
        ty & 0x7fff
    }

    /// TV form (AF = 1).
    pub fn basic(&mut self, ty: u16, value: u16) {
        let t = self.ty(ty) | 0x8000;
        self.b.buf.extend_from_slice(&t.to_be_bytes());
        self.b.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// TLV form (AF = 0).
    pub fn variable(&mut self, ty: u16, value: &[u8]) {
        let t = self.ty(ty);
        let len = u16::try_from(value.len()).unwrap_or_else(|_| {
            self.b.fail(BuildError::TooLong);
            0
        });
        self.b.buf.extend_from_slice(&t.to_be_bytes());
        self.b.buf.extend_from_slice(&len.to_be_bytes());
        self.b.buf.extend_from_slice(value);
    }

    /// A number in the shortest form: TV up to 0xffff, else TLV of 4 or 8 bytes (e.g. a
    /// life duration).
    pub fn number(&mut self, ty: u16, value: u64) {
        if let Ok(v) = u16::try_from(value) {
            self.basic(ty, v);
        } else if let Ok(v) = u32::try_from(value) {
            self.variable(ty, &v.to_be_bytes());
        } else {
            self.variable(ty, &value.to_be_bytes());
        }
    }

    /// A parsed attribute, in its original form.
    pub fn attr(&mut self, a: &Attr<'_>) {
        match a.value {
            AttrValue::Basic(v) => self.basic(a.ty, v),
            AttrValue::Variable(v) => self.variable(a.ty, v),
        }
    }
}
